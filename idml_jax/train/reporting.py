"""Metric writers (TensorBoard via tensorboardX, a JSON-lines file, log lines) and progress.

TensorBoard files are written without TensorFlow; ``metrics.jsonl`` in the workdir holds
every scalar for the figures and for scripts. On resume the log is cut back to the
restored step, so a replayed step is never logged twice.
"""

from __future__ import annotations

import json
import logging
import time

from idml_jax.train.checkpoint import Workdir


class MetricWriter:
  """Writes scalars to ``metrics.jsonl`` and TensorBoard (main process only)."""

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
      for k, v in row.items():
        if k != "step":
          self._tb.add_scalar(k.replace("@", "_at_"), v, step)  # TensorBoard tags: no '@'.
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


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
  """Logs steps/s, images/s and ETA every ``every`` steps."""

  def __init__(self, total_steps: int, batch_size: int, every: int):
    self.total, self.batch, self.every = total_steps, batch_size, every
    self._t, self._s = time.perf_counter(), None

  def __call__(self, step: int, scalars: dict[str, float]) -> dict[str, float]:
    now = time.perf_counter()
    if self._s is None:
      self._t, self._s = now, step
      return {}
    rate = (step - self._s) / max(now - self._t, 1e-9)
    self._t, self._s = now, step
    eta = (self.total - step) / max(rate, 1e-9)
    logging.info("step %d/%d (%.0f%%) | %.2f steps/s, %.0f images/s | ETA %dm%02ds | %s", step,
                 self.total, 100 * step / self.total, rate, rate * self.batch, eta // 60, eta % 60,
                 " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
    return {"steps_per_sec": rate, "images_per_sec": rate * self.batch}
