"""The training workdir: its layout, atomic JSON files, and verified orbax checkpoints.

Layout (every path goes through ``etils.epath``, so a ``gs://`` workdir works as orbax
and the Flax examples do)::

    run.json              config + class count (what embed/search rebuild the model from)
    untrained.json        metrics before training (eval.at_start), kept across resumes
    metrics.jsonl         every logged scalar, truncated to the restored step on resume
    results.json          final, best and untrained metrics of the finished run
    checkpoints/<step>/   the latest checkpoints (state packed by dtype: ``packing``)
    best/<step>/          the best checkpoint by the primary metric (+ its metrics)
    best/metrics.json     a copy of those metrics
    damaged/              checkpoints that failed verification, moved aside (never deleted)
    tensorboard/, *.png   TensorBoard files and figures

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a
kill mid-save leaves the previous one restorable. Saves run in the background: the train
loop hands over an on-device copy of the state and goes on; the copy's checksums and the
write happen on a saving thread, and :meth:`Checkpoints.wait` waits for them (the run does
before it ends). Each checkpoint also stores a CRC-32 of
every array; a restore recomputes them and checks that the state is finite, and falls back
to the newest checkpoint that verifies. JSON files are written to a temporary name and
renamed, so a kill or a full disk leaves the previous version.

A workdir holds one run: :func:`run_changes` compares a resumed run's config with the one
``run.json`` recorded and refuses every change outside ``RESUMABLE_KEYS``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import logging
import os
import socket
import sys
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from idml_jax import config as config_lib
from idml_jax.train import packing


class CheckpointError(RuntimeError):
  """No checkpoint of a workdir could be restored (each damaged one is named)."""


# Keys a resumed run (or ``--mode=eval``) may change: how long to train, how to evaluate and
# log, where the data, weights and compiled programs live, and the input pipeline's
# parallelism and prefetch (older runs' run.json lack the last two keys). Any other
# change makes a different run, which must start in a new workdir. A key ending in "." is
# a prefix (every key of that sub-config).
RESUMABLE_KEYS = ("num_epochs", "eval.", "log_every_steps", "checkpoint_every_epochs",
                  "data.data_dir", "data.num_threads", "data.worker_count",
                  "data.device_prefetch", "model.pretrained", "compile_cache_dir")


class ConfigMismatchError(ValueError):
  """A workdir holds a run of another config."""


def _comparable(c) -> dict:
  """Flat config with JSON's value types (tuples -> lists), as run.json stores it."""
  as_dict = c.to_dict() if isinstance(c, ml_collections.ConfigDict) else c
  return config_lib.flatten(
      ml_collections.ConfigDict(json.loads(json.dumps(as_dict, default=str))))


def run_changes(recorded: dict, config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """``{key: (recorded value, new value)}`` of every key ``config`` changes from the
  ``recorded`` config (a ``to_dict()``); raises :class:`ConfigMismatchError` listing the
  changes outside ``RESUMABLE_KEYS``."""
  old, new = _comparable(recorded), _comparable(config)
  changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k)}
  allowed = lambda k: any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_KEYS)
  refused = {k: v for k, v in changed.items() if not allowed(k)}
  if refused:
    listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in refused.items())
    may = ", ".join(k + "*" if k.endswith(".") else k for k in RESUMABLE_KEYS)
    raise ConfigMismatchError(
        f"This workdir's run was trained with another config ({listed}), so it cannot be "
        f"resumed or evaluated with this one: use a new --workdir, or drop those overrides. "
        f"A resume may change only {may}.")
  return changed



class Workdir:
  """Paths of a training workdir (see the module doc)."""

  def __init__(self, path):
    path = str(path)  # Local paths made absolute (orbax refuses relative ones); gs://... kept.
    self.path = epath.Path(path if "://" in path else os.path.abspath(path))

  def __truediv__(self, name: str) -> epath.Path:
    return self.path / name

  run_file = property(lambda self: self.path / "run.json")
  untrained_file = property(lambda self: self.path / "untrained.json")
  metrics_log = property(lambda self: self.path / "metrics.jsonl")
  results_file = property(lambda self: self.path / "results.json")
  checkpoints = property(lambda self: self.path / "checkpoints")
  best = property(lambda self: self.path / "best")
  best_metrics_file = property(lambda self: self.path / "best" / "metrics.json")
  damaged = property(lambda self: self.path / "damaged")
  tensorboard = property(lambda self: self.path / "tensorboard")

  def exists(self) -> bool:
    return self.run_file.exists()


class WorkdirBusyError(RuntimeError):
  """Another run holds the workdir's lock."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process: alive.
    return True
  return True


@contextlib.contextmanager
def workdir_lock(wd: Workdir):
  """Holds ``lock.json`` (host, PID, start time) in a local workdir while a run trains in it.

  A second run on the same workdir is refused (:class:`WorkdirBusyError`, naming the first);
  a lock left by a process that is gone (killed on this host) is taken over with a warning.
  Remote workdirs (``gs://``) and processes other than the main one take no lock.
  """
  path = os.path.join(str(wd.path), "lock.json")
  if "://" in str(wd.path) or not is_main_process():
    yield
    return
  if os.path.exists(str(wd.path)) and not os.path.isdir(str(wd.path)):
    raise ValueError(f"--workdir={wd.path} is a file, not a folder: choose another path.")
  os.makedirs(str(wd.path), exist_ok=True)
  me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%F %T")}
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      try:
        with open(path) as f:
          other = json.load(f)
      except (OSError, ValueError):
        other = {}
      host, pid = other.get("host"), other.get("pid")
      if not other or (host == me["host"] and isinstance(pid, int) and not _alive(pid)):
        logging.warning("%s: %s; taking it over.", path, f"the run that held it (PID {pid}) is "
                        "gone" if other else "unreadable (a run killed while taking it)")
        os.remove(path)
        continue
      raise WorkdirBusyError(
          f"{wd.path} is in use by another run (host {host}, PID {pid}, since "
          f"{other.get('since')}): wait for it or use another --workdir; if that run is "
          f"gone, delete {path}.") from None
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    break
  else:  # Taken over twice and lost both times: another run is starting right now.
    raise WorkdirBusyError(f"{wd.path}: another run keeps taking its lock ({path}); wait for "
                           "it or use another --workdir.")
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      os.remove(path)


def is_main_process() -> bool:
  """One writer for files all hosts share."""
  return jax.process_index() == 0


def write_json(path: epath.Path, obj) -> None:
  """Writes ``obj`` as JSON atomically: a temporary file, then a rename over ``path``."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.tmp"
  tmp.write_text(json.dumps(obj, indent=1, default=str))
  tmp.replace(path)


def read_json(path: epath.Path, what: str):
  """The JSON in ``path``; None if it is missing or damaged (a damaged one is logged)."""
  path = epath.Path(path)
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    logging.warning("%s %s is damaged (%s); ignoring it.", what, path, e)
    return None


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


def _is_orbax_leftover(u) -> bool:
  """An unraisable exception (``sys.unraisablehook``'s argument) that a failed orbax restore
  leaves behind: its unfinished read coroutines, closed by the garbage collector, raise the
  read error again, or find their event loop closed."""
  code = getattr(u.object, "cr_code", None)
  from_orbax = code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
  closed_loop = isinstance(u.exc_value, RuntimeError) and "Event loop is closed" in str(
      u.exc_value)
  return from_orbax or closed_loop


def quiet_orbax_leftovers() -> None:
  """Keeps a failed restore's leftovers (:func:`_is_orbax_leftover`: up to thousands of
  traceback lines, collected at any later moment) from the user's terminal; every other
  unraisable exception still reaches the previous hook. Idempotent."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_orbax_leftovers", False):
    return

  def hook(u):
    if _is_orbax_leftover(u):
      logging.debug("Dropped what a failed checkpoint read left: %s", u.exc_value)
      return
    previous(u)

  hook.drops_orbax_leftovers = True
  sys.unraisablehook = hook


class Checkpoints:
  """The latest checkpoints (for resume) and the best one, verified on restore.

  :meth:`save` and :meth:`save_best` return at once: a saving thread computes the checksums
  and writes, in order, while training goes on (at most ``max_pending`` saves in flight,
  each holding a device copy of the state). A failed save raises at the next save or at
  :meth:`wait`.
  """

  def __init__(self, workdir: Workdir, max_to_keep: int = 2, max_pending: int = 2):
    self.workdir = workdir
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

  def restore(self, abstract_state, *, best: bool = False):
    """``(state, step)``: the newest checkpoint (best or latest) that restores and verifies,
    into the structure and shardings of ``abstract_state`` (``ShapeDtypeStruct`` leaves).

    A checkpoint that fails is moved to ``damaged/`` with one warning naming it, and the
    next older one is tried. Raises :class:`CheckpointError` if none restores, or at once
    (moving nothing) if one holds another model's arrays.
    """
    self._settle()
    mngr = self.best if best else self.latest
    quiet_orbax_leftovers()  # A damaged checkpoint is one warning line, not 5,000.
    target = packing.flat(flax.serialization.to_state_dict(abstract_state))
    kind = "best" if best else "latest"
    damaged = []
    for step in sorted(mngr.all_steps(), reverse=True):
      try:
        leaves, problem = self._read(mngr, step, target)
      except CheckpointError:
        raise
      except Exception as e:  # noqa: BLE001  Any failure to read a checkpoint is damage.
        problem = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
      if problem is None:
        state_dict = flax.traverse_util.unflatten_dict(
            {k: v if v is flax.traverse_util.empty_node else packing.placed(leaves[k], v)
             for k, v in target.items()}, sep="/")
        return flax.serialization.from_state_dict(abstract_state, state_dict), step
      damaged.append(f"step {step} ({problem})")
      self._move_aside(mngr, step, kind, problem)
    raise CheckpointError(f"No {kind} checkpoint in {self.workdir.path} could be restored: "
                          + ("; ".join(damaged) or "there is none") + ".")

  @staticmethod
  def _read(mngr: ocp.CheckpointManager, step: int, target: dict):
    """``({path: host array}, None)`` of checkpoint ``step``, or ``(…, what is wrong)``;
    ``target``: the flat abstract state dict. Raises :class:`CheckpointError` if the
    checkpoint holds another model's arrays (not damage: nothing is moved)."""
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if meta.get("layout") == packing.LAYOUT:
      other = packing.first_difference(meta["arrays"], target)
      if other:
        raise CheckpointError(
            f"Checkpoint step {step} ({mngr.directory}/{step}) holds another model's state "
            f"({other}): evaluate or resume it with the code and config that saved it, or train "
            "in a new --workdir.")
      everywhere = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()), ("all",)),
                                              jax.sharding.PartitionSpec())
      abstract = {k: jax.ShapeDtypeStruct((n,), jnp.dtype(k), sharding=everywhere)
                  for k, n in packing.sizes(meta["arrays"]).items()}
      packed = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))["state"]
      leaves = packing.unpack(packing.to_host(packed), meta["arrays"])
    else:  # One orbax array per leaf: written before the packed layout.
      state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(
          flax.traverse_util.unflatten_dict(target, sep="/"))))["state"]
      leaves = packing.to_host(packing.arrays(state))
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
