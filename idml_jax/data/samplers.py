"""Batch samplers, each a pure function of (seed, step): resumable by step alone.

* :class:`ClassBalancedSampler` — P classes × K images (IAA's m-per-class batches).
  Rows are class-major, so a host taking a contiguous slice of the global batch
  takes whole classes when P is a multiple of the number of hosts.
* :class:`ClassFillSampler` — the official IAA sampler: classes in random order, up to K
  images of each, until the batch is full.
* :class:`RandomSampler` — a fresh permutation each epoch, the remainder dropped.
"""

from __future__ import annotations

import functools

import numpy as np


def _class_members(labels: np.ndarray) -> list[np.ndarray]:
  """Dataset indices of each class, in class order."""
  order = np.argsort(labels, kind="stable")
  _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
  return [order[s:s + c] for s, c in zip(starts, counts, strict=True)]


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
    self.members = _class_members(self.labels)
    if len(self.members) < self.p:
      raise ValueError(f"{self.p} classes per batch requested but the data has "
                       f"{len(self.members)}; lower batch_size or raise images_per_class.")
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


class ClassFillSampler(ClassBalancedSampler):
  """darkpromise98/IAA's ``MImagesPerClassSampler``: all classes in a random order, from each
  ``min(K, class size)`` images without replacement, until ``batch_size`` rows (the last
  class cut short). A class with fewer than K images contributes fewer rows."""

  def __init__(self, labels: np.ndarray, batch_size: int, images_per_class: int, seed: int = 0):
    self.labels = np.asarray(labels)
    self.k, self.batch_size, self.seed = images_per_class, batch_size, seed
    self.members = _class_members(self.labels)
    available = sum(min(self.k, len(m)) for m in self.members)
    if available < batch_size:
      raise ValueError(f"batch_size {batch_size} exceeds the {available} images a batch can take "
                       f"({images_per_class} per class at most); lower batch_size.")

  @functools.lru_cache(maxsize=64)  # noqa: B019  Steps are re-read by each row's worker.
  def __call__(self, step: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, step])
    rows, n = [], 0
    for c in rng.permutation(len(self.members)):
      m = self.members[c]
      rows.append(rng.choice(m, min(self.k, len(m)), replace=False))
      n += len(rows[-1])
      if n >= self.batch_size:
        break
    return np.concatenate(rows)[:self.batch_size]


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


# A sampler: ``sampler(step)`` -> the global batch's dataset indices; ``steps_per_epoch``.
Sampler = ClassBalancedSampler | ClassFillSampler | RandomSampler

# ``data.sampler`` -> ``(labels [N], batch_size, images_per_class, seed) -> Sampler``.
SAMPLERS = {
    "balanced": ClassBalancedSampler,
    "balanced_fill": ClassFillSampler,
    "random": lambda labels, batch_size, images_per_class, seed: RandomSampler(
        len(labels), batch_size, seed),
}
