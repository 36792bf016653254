"""Verified orbax checkpoints of the train state: saved in the background, restored into
the model's structure, damage moved aside.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a
kill mid-save leaves the previous one restorable. Saves run in the background: the train
loop hands over an on-device copy of the state and goes on; the copy's checksums and the
write happen on a saving thread, and :meth:`Checkpoints.wait` waits for them (the run does
before it ends). Each checkpoint stores the state packed by dtype with a manifest and a
CRC-32 of every array (:mod:`idml_jax.train.packing`); a restore reads the checkpoint,
checks the arrays against their checksums and that they are finite, and falls back to the
newest checkpoint that verifies. Only a checkpoint that verifies and still disagrees with
the model is another model's (refused, not moved). Paths of an earlier layout of the state
are translated (``renamed``: the method's :attr:`Method.renamed_paths`).
"""

from __future__ import annotations

import json
import logging
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from idml_jax.train import packing
from idml_jax.train.workdir import Workdir, is_main_process, read_json, write_json


class CheckpointError(RuntimeError):
  """No checkpoint of a workdir could be restored (each damaged one is named)."""


@jax.jit
def _device_copy(arrays: list[jax.Array]) -> list[jax.Array]:
  """New device buffers holding ``arrays`` (the train step donates the state's own)."""
  return [jnp.array(a, copy=True) for a in arrays]


def _snapshot(state) -> dict:
  """The flat state dict of ``state`` with its device arrays copied on the device
  (dispatched, not awaited): what a background save reads while the next steps run."""
  flat = packing.arrays(flax.serialization.to_state_dict(state))
  on_device = [k for k, v in flat.items() if isinstance(v, jax.Array)]
  return {**flat, **dict(zip(on_device, _device_copy([flat[k] for k in on_device]),
                             strict=True))}


class Checkpoints:
  """The latest checkpoints (for resume) and the best one, verified on restore.

  :meth:`save` and :meth:`save_best` return once a device copy of the state is dispatched
  and handed to orbax, whose asynchronous save packs, checksums and writes it on its own
  thread (:class:`packing.PackedHandler`) and renames it into place when complete; a new save
  of the same kind waits for the one before it. A failed save raises at the next save or at
  :meth:`wait`.
  """

  def __init__(self, workdir: Workdir, max_to_keep: int = 2,
               renamed: dict[str, str | None] | None = None):
    self.workdir = workdir
    self.renamed = renamed or {}
    options = lambda keep: ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                        enable_async_checkpointing=True)
    self.latest = ocp.CheckpointManager(workdir.checkpoints, options=options(max_to_keep))
    self.best = ocp.CheckpointManager(workdir.best, options=options(1))
    self._best_metrics = None  # Written to best/metrics.json once its checkpoint is complete.
    self._error: BaseException | None = None  # A failed save, seen while settling.

  def latest_step(self) -> int | None:
    """The newest complete latest checkpoint (saves in flight are waited for first)."""
    self._settle()
    return self.latest.latest_step()

  def _settle(self) -> None:
    """Waits for the saves in flight; a failure is kept for :meth:`wait` and the next save."""
    for mngr in (self.latest, self.best):
      try:
        mngr.wait_until_finished()
      except Exception as e:  # noqa: BLE001  Raised again by the next save or wait().
        self._error = self._error or e
    self._write_best_metrics()

  def _raise_failed(self) -> None:
    error, self._error = self._error, None
    if error is not None:
      raise error

  def _write_best_metrics(self) -> None:
    """``best/metrics.json`` of the best checkpoint, once that is complete."""
    if self._best_metrics is not None and not self.best.is_saving_in_progress():
      metrics, self._best_metrics = self._best_metrics, None
      if self.best.latest_step() == metrics["step"] and is_main_process():
        write_json(self.workdir.best_metrics_file, metrics)

  def save(self, state, step: int) -> None:
    """Saves ``state`` at ``step`` in the background (:meth:`wait` for it)."""
    self._raise_failed()
    self._write_best_metrics()
    self.latest.save(step, args=packing.save_args(_snapshot(state), {"step": step}), force=True)

  def save_best(self, state, step: int, metrics: dict) -> None:
    """Saves the best checkpoint with its ``metrics`` (``{"step": step, ...}``, also written
    to ``best/metrics.json`` once the checkpoint is complete), in the background. A best
    checkpoint at or after ``step`` belongs to a run being replayed from an earlier
    checkpoint: it is replaced."""
    self._raise_failed()
    metrics = {"step": step, **metrics}
    self.best.wait_until_finished()
    self._write_best_metrics()
    for old in self.best.all_steps():
      if old >= step:
        self.best.delete(old)
    self.best.save(step, args=packing.save_args(_snapshot(state), {"step": step,
                                                                    "metrics": metrics}),
                   force=True)
    self._best_metrics = metrics

  def best_metrics(self) -> dict | None:
    """The best checkpoint's metrics: ``best/metrics.json``, or (when that file is missing or
    damaged) the copy stored in the checkpoint itself; None without a best checkpoint."""
    self._settle()
    step = self.best.latest_step()
    if step is None:
      return None
    saved = read_json(self.workdir.best_metrics_file, "best/metrics.json")
    if saved is not None and saved.get("step") == step:
      return saved
    metrics = self._meta(self.best, step)["metrics"]
    if is_main_process():
      write_json(self.workdir.best_metrics_file, metrics)
    logging.warning("Recovered best/metrics.json from the best checkpoint (step %d).", step)
    return metrics

  @staticmethod
  def _meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    """The JSON metadata of checkpoint ``step`` (its manifest, checksums, metrics)."""
    folder = epath.Path(mngr.directory) / str(step)
    if (folder / "packed").exists():
      return json.loads((folder / "packed" / "meta.json").read_text())
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, abstract_state, *, best: bool = False, subset: bool = False):
    """``(state, step)``: the newest checkpoint (best or latest) that restores and verifies,
    into the structure and shardings of ``abstract_state`` (``ShapeDtypeStruct`` leaves).

    A checkpoint that fails is moved to ``damaged/`` with one warning naming it, and the
    next older one is tried. Raises :class:`CheckpointError` if none restores, or at once
    (moving nothing) if one that verifies holds another model's arrays. ``subset``: restore
    only the arrays ``abstract_state`` has (embedding reads the parameters alone).
    """
    self._settle()
    mngr = self.best if best else self.latest
    target = packing.flat(flax.serialization.to_state_dict(abstract_state))
    kind = "best" if best else "latest"
    damaged = []
    for step in sorted(mngr.all_steps(), reverse=True):
      try:
        leaves, problem = self._read(mngr, step)
      except Exception as e:  # noqa: BLE001  Any failure to read a checkpoint is damage.
        first = str(e).splitlines()[0][:200] if str(e) else ""
        leaves, problem = None, f"{type(e).__name__}: {first}"
      if problem is None:
        leaves = packing.renamed(leaves, self.renamed)
        other = packing.first_difference(leaves, target, subset=subset)
        if other:
          raise CheckpointError(
              f"Checkpoint step {step} ({mngr.directory}/{step}) holds another model's state "
              f"({other}): evaluate or resume it with the code and config that saved it, or "
              "train in a new --workdir.")
        state_dict = flax.traverse_util.unflatten_dict(
            {k: v if v is flax.traverse_util.empty_node else packing.placed(leaves[k], v)
             for k, v in target.items()}, sep="/")
        return flax.serialization.from_state_dict(abstract_state, state_dict), step
      damaged.append(f"step {step} ({problem})")
      self._move_aside(mngr, step, kind, problem)
    raise CheckpointError(f"No {kind} checkpoint in {self.workdir.path} could be restored: "
                          + ("; ".join(damaged) or "there is none") + ".")

  @staticmethod
  def _read(mngr: ocp.CheckpointManager, step: int) -> tuple[dict[str, np.ndarray], str | None]:
    """``({path: host array}, None)`` of checkpoint ``step`` as it was saved, or ``(…, what
    is wrong)`` when its arrays do not match their checksums or are not finite."""
    if (epath.Path(mngr.directory) / str(step) / "packed").exists():
      saved = mngr.restore(step, args=ocp.args.Composite(packed=packing.PackedRestore()))
      leaves, meta = saved["packed"]["leaves"], saved["packed"]["meta"]
      return leaves, packing.verify(leaves, meta["checksums"])
    # Layouts of earlier versions: orbax arrays packed by dtype, or one per leaf.
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if meta.get("layout") == packing.LAYOUT:
      everywhere = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()), ("all",)),
                                              jax.sharding.PartitionSpec())
      abstract = {k: jax.ShapeDtypeStruct((n,), jnp.dtype(k), sharding=everywhere)
                  for k, n in packing.sizes(meta["arrays"]).items()}
      packed = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))["state"]
      leaves = packing.unpack(packing.to_host(packed), meta["arrays"])
    else:
      state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
      leaves = packing.to_host(packing.arrays(state["state"]))
    return leaves, packing.verify(leaves, meta["checksums"])

  def _move_aside(self, mngr: ocp.CheckpointManager, step: int, kind: str, problem: str) -> None:
    src = epath.Path(mngr.directory) / str(step)
    dst = self.workdir.damaged / f"{kind}-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    if is_main_process():
      self.workdir.damaged.mkdir(parents=True, exist_ok=True)
      src.rename(dst)
    multihost_utils.sync_global_devices(f"checkpoint {kind} {step} moved aside")
    logging.warning("The %s checkpoint step %d is damaged (%s): moved to %s; trying the "
                    "previous one.", kind, step, problem, dst)
    mngr.reload()

  def wait(self) -> None:
    """Waits for every save to be complete on disk; raises the first failed one's error."""
    self._settle()
    self._raise_failed()

  def close(self) -> None:
    self._settle()
    self.latest.close()
    self.best.close()
