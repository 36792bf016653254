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

import collections
import concurrent.futures
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

  :meth:`save` and :meth:`save_best` return at once: a saving thread computes the checksums
  and writes, in order, while training goes on (at most ``max_pending`` saves in flight,
  each holding a device copy of the state). A failed save raises at the next save or at
  :meth:`wait`.
  """

  def __init__(self, workdir: Workdir, max_to_keep: int = 2, max_pending: int = 2,
               renamed: dict[str, str | None] | None = None):
    self.workdir = workdir
    self.renamed = renamed or {}
    self.latest = ocp.CheckpointManager(
        workdir.checkpoints, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                                  create=True))
    self.best = ocp.CheckpointManager(
        workdir.best, options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
    self._saver = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
    self._pending: collections.deque[concurrent.futures.Future] = collections.deque()
    self._max_pending = max_pending

  def latest_step(self) -> int | None:
    """The newest complete latest checkpoint (saves in flight are waited for first)."""
    self._settle()
    return self.latest.latest_step()

  def _settle(self) -> None:
    """Waits for the saves in flight, without raising their errors (:meth:`wait` does)."""
    concurrent.futures.wait(self._pending)

  def _submit(self, job, *args) -> None:
    while self._pending and (self._pending[0].done()
                             or len(self._pending) >= self._max_pending):
      self._pending.popleft().result()  # Raises a failed save's error.
    self._pending.append(self._saver.submit(job, *args))

  @staticmethod
  def _write(mngr: ocp.CheckpointManager, arrays: dict, step: int, meta: dict) -> None:
    """(On the saving thread.) Checksums, then orbax's save of ``arrays`` (a flat state dict)
    packed, at ``step``."""
    leaves = packing.to_host(arrays)
    packed, manifest = packing.pack(leaves)
    meta = {"step": step, "layout": packing.LAYOUT, "arrays": manifest,
            "checksums": packing.checksums(leaves), **meta}
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(packed),
                                            meta=ocp.args.JsonSave(meta)), force=True)

  def save(self, state, step: int) -> None:
    """Saves ``state`` at ``step`` in the background (:meth:`wait` for it)."""
    self._submit(self._write, self.latest, _snapshot(state), step, {})

  def save_best(self, state, step: int, metrics: dict) -> None:
    """Saves the best checkpoint with its ``metrics`` (``{"step": step, ...}``, also written
    to ``best/metrics.json`` once the checkpoint is complete), in the background. A best
    checkpoint at or after ``step`` belongs to a run being replayed from an earlier
    checkpoint: it is replaced."""
    metrics = {"step": step, **metrics}

    def job(arrays):
      for old in self.best.all_steps():
        if old >= step:
          self.best.delete(old)
      self._write(self.best, arrays, step, {"metrics": metrics})
      self.best.wait_until_finished()
      if is_main_process():
        write_json(self.workdir.best_metrics_file, metrics)

    self._submit(job, _snapshot(state))

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
    metrics = self.best.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]["metrics"]
    if is_main_process():
      write_json(self.workdir.best_metrics_file, metrics)
    logging.warning("Recovered best/metrics.json from the best checkpoint (step %d).", step)
    return metrics

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
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if meta.get("layout") == packing.LAYOUT:
      everywhere = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()), ("all",)),
                                              jax.sharding.PartitionSpec())
      abstract = {k: jax.ShapeDtypeStruct((n,), jnp.dtype(k), sharding=everywhere)
                  for k, n in packing.sizes(meta["arrays"]).items()}
      packed = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))["state"]
      leaves = packing.unpack(packing.to_host(packed), meta["arrays"])
    else:  # One orbax array per leaf: written before the packed layout.
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
    while self._pending:
      self._pending.popleft().result()
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self._settle()
    self._saver.shutdown()
    self.latest.close()
    self.best.close()
