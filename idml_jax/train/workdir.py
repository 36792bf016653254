"""The training workdir: its layout, its lock, and its JSON files (written atomically).

Layout (every path goes through ``etils.epath``, so a ``gs://`` workdir works as orbax
and the Flax examples do)::

    run.json              config + class count (what embed/search rebuild the model from)
    lock.json             the run training in it (host, PID, start time)
    untrained.json        metrics before training (eval.at_start), kept across resumes
    metrics.jsonl         every logged scalar, truncated to the restored step on resume
    results.json          final, best and untrained metrics of the finished run
    checkpoints/<step>/   the latest checkpoints (idml_jax.train.checkpoint)
    best/<step>/          the best checkpoint by the primary metric (+ its metrics)
    best/metrics.json     a copy of those metrics
    damaged/              checkpoints that failed verification, moved aside (never deleted)
    tensorboard/, *.png   TensorBoard files and figures

JSON files are written to a temporary name and renamed, so a kill or a full disk leaves the
previous version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time

import jax
from etils import epath


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
  if os.path.isdir(path):
    raise ValueError(f"{path} is a folder, not a run's lock: remove it, or use another "
                     "--workdir.")
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
