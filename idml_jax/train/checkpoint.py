"""Checkpoints with orbax: the latest (for resume) and the best by Recall@1.

Orbax writes each checkpoint to a temporary directory and renames it when complete,
so a crash or Ctrl-C mid-save leaves the previous checkpoint restorable. The state is
saved as a plain state dict (``flax.serialization``); the data iterator's state is the
step, which the state holds.
"""

from __future__ import annotations

import json
import os

import flax
import jax
import orbax.checkpoint as ocp


class Checkpoints:
  def __init__(self, workdir: str, max_to_keep: int = 2):
    self.dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.best_dir = os.path.abspath(os.path.join(workdir, "best"))
    opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    self.latest = ocp.CheckpointManager(self.dir, options=opts)
    self.best = ocp.CheckpointManager(
        self.best_dir, options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, state, step: int) -> None:
    self.latest.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)))

  def save_best(self, state, step: int, metrics: dict) -> None:
    self.best.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                   force=True)
    self.best.wait_until_finished()
    if jax.process_index() != 0:  # One writer on a filesystem all hosts share.
      return
    with open(os.path.join(self.best_dir, "metrics.json"), "w") as f:
      json.dump({"step": step, **metrics}, f, indent=1)

  def restore(self, state, step: int | None = None, best: bool = False):
    """Restores into the structure (and shardings) of ``state``."""
    mngr = self.best if best else self.latest
    step = mngr.latest_step() if step is None else step
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, flax.serialization.to_state_dict(state))
    restored = mngr.restore(step, args=ocp.args.StandardRestore(target))
    return flax.serialization.from_state_dict(state, restored)

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()
