"""Batch samplers, each a pure function of (seed, step): resumable by step alone.

* :class:`ClassBalancedSampler` — P classes × K images (IAA's m-per-class batches).
  Rows are class-major, so a host taking a contiguous slice of the global batch
  takes whole classes when P is a multiple of the number of hosts.
* :class:`RandomSampler` — a fresh permutation each epoch, the remainder dropped.
"""

from __future__ import annotations

import functools

import numpy as np


class ClassBalancedSampler:
  """P classes (without replacement) × K images (without replacement where the class has
  K, else with) per global batch."""

  def __init__(self, labels: np.ndarray, batch_size: int, images_per_class: int, seed: int = 0):
    if batch_size % images_per_class:
      raise ValueError(f"batch_size {batch_size} must be a multiple of images_per_class "
                       f"{images_per_class}.")
    self.labels = np.asarray(labels)
    self.k = images_per_class
    self.p = batch_size // images_per_class
    self.seed = seed
    order = np.argsort(self.labels, kind="stable")
    classes, starts, counts = np.unique(self.labels[order], return_index=True, return_counts=True)
    if len(classes) < self.p:
      raise ValueError(f"{self.p} classes per batch requested but the data has {len(classes)}; "
                       "lower batch_size or raise images_per_class.")
    self.members = [order[s:s + c] for s, c in zip(starts, counts, strict=True)]
    self.batch_size = batch_size

  def steps_per_epoch(self, max_steps: int | None = None) -> int:
    n = len(self.labels) // self.batch_size
    return max(1, min(n, max_steps) if max_steps else n)

  @functools.lru_cache(maxsize=64)  # noqa: B019  Steps are re-read by each row's worker.
  def __call__(self, step: int) -> np.ndarray:
    """[B] dataset indices of global batch ``step``."""
    rng = np.random.default_rng([self.seed, step])
    classes = rng.choice(len(self.members), self.p, replace=False)
    rows = []
    for c in classes:
      m = self.members[c]
      rows.append(rng.choice(m, self.k, replace=len(m) < self.k))
    return np.concatenate(rows)


class RandomSampler:
  """Random batches: epoch ``e`` uses permutation ``rng(seed, e)``; the remainder is dropped."""

  def __init__(self, num_examples: int, batch_size: int, seed: int = 0):
    if num_examples < batch_size:
      raise ValueError(f"batch_size {batch_size} exceeds the {num_examples} training images.")
    self.n, self.batch_size, self.seed = num_examples, batch_size, seed

  def steps_per_epoch(self, max_steps: int | None = None) -> int:
    n = self.n // self.batch_size
    return min(n, max_steps) if max_steps else n

  @functools.lru_cache(maxsize=4)  # noqa: B019
  def _permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.n)

  def __call__(self, step: int) -> np.ndarray:
    per_epoch = self.n // self.batch_size
    epoch, i = divmod(step, per_epoch)
    return self._permutation(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
