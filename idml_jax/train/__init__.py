"""Training and evaluation (the main job), for any task and method: the loop, the compiled
steps, checkpoints, the workdir, metrics and figures."""
