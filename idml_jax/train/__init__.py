"""Training and evaluation of IDML, IAA and both together (the main job)."""
