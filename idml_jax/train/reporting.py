"""Metric writers (TensorBoard via tensorboardX, a JSON-lines file, log lines) and progress.

TensorBoard files are written without TensorFlow; ``metrics.jsonl`` in the workdir holds
every scalar for the figures and for scripts.
"""

from __future__ import annotations

import json
import logging
import os
import time


class MetricWriter:
  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # pragma: no cover - tensorboardX is a declared dependency.
        logging.warning("tensorboardX missing: no TensorBoard files.")

  def write(self, step: int, scalars: dict[str, float], prefix: str = "") -> None:
    if not self.enabled:
      return
    scalars = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k.replace("@", "_at_"), v, step)  # TensorBoard tags: no '@'.
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


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
