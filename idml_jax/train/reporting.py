"""Metric writers (TensorBoard via tensorboardX, a JSON-lines file, log lines) and progress.

TensorBoard files are written without TensorFlow; ``metrics.jsonl`` in the workdir holds
every scalar for the figures and for scripts. On resume the log is cut back to the
restored step, so a replayed step is never logged twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import traceback

from idml_jax.train.checkpoint import Workdir


def _quiet_tensorboard_threads(previous):
  """A ``threading.excepthook`` that drops tensorboardX's writer-thread I/O errors (a full
  disk): MetricWriter says it once; everything else goes to ``previous``."""

  def hook(args):
    if issubclass(args.exc_type, OSError) and "tensorboardX" in "".join(
        traceback.format_tb(args.exc_traceback)):
      return
    previous(args)

  hook.quiet_tensorboard = True
  return hook


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
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(workdir.tensorboard))
      if not getattr(threading.excepthook, "quiet_tensorboard", False):
        threading.excepthook = _quiet_tensorboard_threads(threading.excepthook)
    except ImportError:  # pragma: no cover - tensorboardX is a declared dependency.
      logging.warning("tensorboardX missing: no TensorBoard files.")

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
      try:
        for k, v in row.items():
          if k != "step":
            self._tb.add_scalar(k.replace("@", "_at_"), v, step)  # TensorBoard tags: no '@'.
        self._tb.flush()
      except OSError as e:
        self._give_up_tensorboard(e)

  def _give_up_tensorboard(self, error: OSError) -> None:
    logging.warning("TensorBoard files are no longer written (%s); metrics.jsonl is.", error)
    for w in getattr(self._tb, "all_writers", {}).values():  # Its atexit close: a no-op.
      with contextlib.suppress(AttributeError):
        w.event_writer._closed = True  # noqa: SLF001
    self._tb = None

  def close(self) -> None:
    if self._tb is not None:
      try:
        self._tb.close()
      except OSError as e:
        self._give_up_tensorboard(e)


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

  PASSES = ("eval", "estimate")  # Evaluations; IAA's re-estimates over the training set.

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
    """Logs the window ending at ``step``; ``passes_left``: ``{"eval": n, "estimate": m}``
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
