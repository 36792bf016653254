"""Metric writers (TensorBoard event files, a JSON-lines file, log lines), the window of
training metrics, and progress.

TensorBoard files are written without TensorFlow (tensorboardX's synchronous
``EventsWriter``: a write that fails raises here, in the writer's caller, not on a thread of
its own); ``metrics.jsonl`` in the workdir holds every scalar for the figures and for
scripts. On resume the log is cut back to the restored step, so a replayed step is never
logged twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time

import jax
import jax.numpy as jnp

from idml_jax.train.workdir import Workdir


class MetricWriter:
  """Writes scalars to ``metrics.jsonl`` and TensorBoard (main process only).

  TensorBoard is best-effort: when its files cannot be written (a full disk), one warning
  says so and they stop; ``metrics.jsonl`` and the run's own errors are unaffected.
  """

  def __init__(self, workdir: Workdir, *, resume_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    self._path = workdir.metrics_log
    self._local = "://" not in str(self._path)  # Object stores cannot append.
    self._rows = [r for r in read_metrics(workdir) if resume_step and r["step"] <= resume_step]
    workdir.path.mkdir(parents=True, exist_ok=True)
    self._path.write_text("".join(json.dumps(r) + "\n" for r in self._rows))
    try:
      from tensorboardX.event_file_writer import EventsWriter
      workdir.tensorboard.mkdir(parents=True, exist_ok=True)
      self._tb = EventsWriter(os.path.join(str(workdir.tensorboard), "events"))
    except ImportError:  # pragma: no cover - tensorboardX is a declared dependency.
      logging.warning("tensorboardX missing: no TensorBoard files.")
    except OSError as e:
      self._give_up_tensorboard(e)

  def write(self, step: int, scalars: dict[str, float], prefix: str = "") -> None:
    if not self.enabled:
      return
    row = {"step": step, **{f"{prefix}{k}": float(v) for k, v in scalars.items()}}
    self._rows.append(row)
    if self._local:
      with self._path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    else:
      self._path.write_text("".join(json.dumps(r) + "\n" for r in self._rows))
    if self._tb is not None:
      from tensorboardX.proto.event_pb2 import Event
      from tensorboardX.summary import scalar
      try:
        for k, v in row.items():
          if k != "step":  # TensorBoard tags: no '@'.
            self._tb.write_event(Event(wall_time=time.time(), step=step,
                                       summary=scalar(k.replace("@", "_at_"), v)))
        self._tb.flush()
      except OSError as e:
        self._give_up_tensorboard(e)

  def _give_up_tensorboard(self, error: OSError) -> None:
    logging.warning("TensorBoard files are no longer written (%s); metrics.jsonl is.", error)
    self._tb = None

  def close(self) -> None:
    if self._tb is not None:
      try:
        self._tb.close()
      except OSError as e:
        self._give_up_tensorboard(e)


@jax.jit
def _add(total: dict, new: dict) -> dict:
  return jax.tree.map(jnp.add, total, new)


@jax.jit
def _grand_total(total: dict) -> jax.Array:
  return sum(jnp.sum(v) for v in jax.tree.leaves(total))


class MetricWindow:
  """The training metrics of the steps since the last log, summed on the devices: adding a
  step reads nothing back; :meth:`all_finite` reads one value, :meth:`means` one per metric
  (clu's metric collections average over the same window)."""

  def __init__(self):
    self._sum: dict[str, jax.Array] = {}
    self._count: dict[str, int] = {}

  def add(self, metrics: dict[str, jax.Array]) -> None:
    """Adds one step's device scalars."""
    if self._sum.keys() == metrics.keys():
      self._sum = _add(self._sum, metrics)
    else:  # A metric that only some steps report.
      self._sum = {**metrics, **{k: _add(v, metrics[k]) if k in metrics else v
                                 for k, v in self._sum.items()}}
    for k in metrics:
      self._count[k] = self._count.get(k, 0) + 1

  def all_finite(self) -> bool:
    """Whether every value added since the last reset is finite (their sum is)."""
    return not self._sum or bool(jnp.isfinite(_grand_total(self._sum)))

  def means(self, reset: bool = True) -> dict[str, float]:
    """The mean of each metric over the window, read back together; starts a new window."""
    totals = jax.device_get(self._sum)
    out = {k: float(v) / self._count[k] for k, v in totals.items()}
    if reset:
      self._sum, self._count = {}, {}
    return out


def read_metrics(workdir: Workdir) -> list[dict]:
  """The rows of ``metrics.jsonl`` (a line cut short by a kill is skipped)."""
  if not workdir.metrics_log.exists():
    return []
  rows = []
  for line in workdir.metrics_log.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:
      logging.warning("Skipping a damaged line of %s.", workdir.metrics_log)
  return rows


class Progress:
  """Logs steps/s, images/s and ETA every ``every`` steps. The rate counts training steps
  only: time inside :meth:`excluded` (compiling a new step, a pass over a split) is left out
  of it, and the ETA adds the passes still to come at their mean time so far."""

  PASSES = ("eval", "method")  # Evaluations; the method's passes over the training set.

  def __init__(self, total_steps: int, batch_size: int, every: int):
    self.total, self.batch, self.every = total_steps, batch_size, every
    self._t, self._s = time.perf_counter(), None
    self._excluded = 0.0  # Seconds excluded since the last log.
    self._passes: dict[str, list[float]] = {what: [] for what in self.PASSES}

  @contextlib.contextmanager
  def excluded(self, what: str):
    """Time spent in the block is not training time (``what``: ``compile`` or one of
    :attr:`PASSES`)."""
    if what == "compile":
      logging.info("Compiling a train step...")
    t = time.perf_counter()
    try:
      yield
    finally:
      dt = time.perf_counter() - t
      self._excluded += dt
      if what in self._passes:
        self._passes[what].append(dt)

  def __call__(self, step: int, scalars: dict[str, float],
               passes_left: dict[str, int] | None = None) -> dict[str, float]:
    """Logs the window ending at ``step``; ``passes_left``: ``{"eval": n, "method": m}``
    still to run. Returns ``steps_per_sec`` and ``images_per_sec`` (none at the first)."""
    now = time.perf_counter()
    if self._s is None:
      self._t, self._s, self._excluded = now, step, 0.0
      return {}
    rate = (step - self._s) / max(now - self._t - self._excluded, 1e-9)
    self._t, self._s, self._excluded = now, step, 0.0
    eta = (self.total - step) / max(rate, 1e-9)
    for what, n in (passes_left or {}).items():
      if self._passes[what]:
        eta += n * sum(self._passes[what]) / len(self._passes[what])
    logging.info("step %d/%d (%.0f%%) | %.2f steps/s, %.0f images/s | ETA %dm%02ds | %s", step,
                 self.total, 100 * step / self.total, rate, rate * self.batch, eta // 60, eta % 60,
                 " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
    return {"steps_per_sec": rate, "images_per_sec": rate * self.batch}
