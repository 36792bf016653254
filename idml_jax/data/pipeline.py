"""The input pipeline on grain: deterministic, resumable by step, sharded per process.

Each element of a batch is a pure function of ``(seed, step, row)``, so the iterator's
whole state is the step it resumes from (stored in the training checkpoint). Process
``p`` of ``n`` loads rows ``[p B/n, (p+1) B/n)`` of every global batch; with the
class-balanced sampler those are whole classes. Batches are dicts of NumPy arrays:
``image`` uint8 [b, S, S, 3], ``label`` int32 [b], ``mask`` bool [b], ``index`` int32 [b].

Unreadable images never stop a run: they are logged, counted in ``skipped``, and
replaced (training: another image of the same class; evaluation: masked out). The count is
kept in the process that consumes the batches, from the indices each batch carries, so it
is right with worker processes (``worker_count``) too; :meth:`SkipCounter.total` sums it
over the processes of a multi-host run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import grain
import numpy as np

from idml_jax.data import transforms


class SkipCounter:
  """Thread-safe count of one split's unreadable images, with a warning for the first few.

  ``count``: distinct images (by index in the split) of this process; ``reads``: failed
  reads, which grow with every pass over the split (each evaluation, a method's passes).
  """

  def __init__(self, max_warnings: int = 10):
    self.reads, self._seen, self._lock, self._max = 0, set(), threading.Lock(), max_warnings
    self._warned = 0

  @property
  def count(self) -> int:
    return len(self._seen)

  def __getstate__(self):  # Worker processes get their own copy: it only warns there.
    return {"reads": 0, "_seen": set(), "_max": self._max, "_warned": self._warned}

  def __setstate__(self, state):
    self.__dict__.update(state, _lock=threading.Lock())

  def warn(self, source, index: int, error: Exception) -> None:
    """Logs one of the first ``max_warnings`` failed reads (where the read happens)."""
    with self._lock:
      self._warned += 1
      if self._warned > self._max:
        return
    name = source.names[index] if hasattr(source, "names") else index
    logging.warning("Skipping unreadable image %s (%s: %s).", name, type(error).__name__, error)

  def add(self, indices) -> None:
    """Counts the failed reads of ``indices`` (a batch's ``unreadable``; -1 is none)."""
    indices = [int(i) for i in np.ravel(indices) if i >= 0]
    with self._lock:
      self.reads += len(indices)
      self._seen.update(indices)

  def total(self) -> int:
    """Distinct unreadable images over every process (a collective in a multi-host run)."""
    import jax
    if jax.process_count() == 1:
      return self.count
    from jax.experimental import multihost_utils
    seen = np.asarray(sorted(self._seen), np.int64)
    size = int(np.max(multihost_utils.process_allgather(np.int64(len(seen)))))
    padded = np.full(max(size, 1), -1, np.int64)
    padded[:len(seen)] = seen
    everyone = np.asarray(multihost_utils.process_allgather(padded))
    return len(set(everyone[everyone >= 0].tolist()))


def _counted(batches: Iterator[dict], skipped: SkipCounter) -> Iterator[dict]:
  """``batches`` without their ``unreadable`` indices, which ``skipped`` counts."""
  for batch in batches:
    skipped.add(batch.pop("unreadable"))
    yield batch


_ATTEMPTS = 5  # Reads of a training image before its class's other images are tried.


def _local_rows(global_batch: int, process_index: int, process_count: int) -> range:
  if global_batch % process_count:
    raise ValueError(f"Global batch {global_batch} must divide over {process_count} processes.")
  local = global_batch // process_count
  return range(process_index * local, (process_index + 1) * local)


def _iterate(ds: grain.MapDataset, num_threads: int, worker_count: int, prefetch: int) -> Iterator:
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                            prefetch_buffer_size=prefetch))
  if worker_count > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain workers read absl flags (grain 0.2.18).
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(it)


def train_batches(source, sampler: Callable[[int], np.ndarray], *, image_size: int,
                  seed: int, start_step: int, num_steps: int, process_index: int = 0,
                  process_count: int = 1, num_threads: int = 8, worker_count: int = 0,
                  skipped: SkipCounter | None = None,
                  transform: Callable | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Training batches for steps ``[start_step, start_step + num_steps)`` of this process.

  Args:
    source: an image source (``labels``, ``load``).
    sampler: ``step -> [B] global batch indices`` (deterministic).
    transform: ``(image, size, rng) -> uint8 image``; default random-resized-crop + flip.
  """
  transform = transform or transforms.train_transform
  rows = _local_rows(sampler.batch_size, process_index, process_count)
  local = len(rows)
  logging.info("Process %d of %d loads rows [%d, %d) of every global batch of %d.",
               process_index, process_count, rows.start, rows.stop, sampler.batch_size)
  skipped = skipped or SkipCounter()
  labels = source.labels

  def element(e: int) -> dict[str, np.ndarray]:
    step, j = divmod(e, local)
    row = rows.start + j
    index = int(sampler(step)[row])
    rng = np.random.default_rng([seed, step, row])
    unreadable = np.full(_ATTEMPTS, -1, np.int32)
    for attempt in range(_ATTEMPTS):
      try:
        image = transform(source.load(index), image_size, rng)
        break
      except Exception as err:  # noqa: BLE001  Corrupt files must not stop a long run.
        skipped.warn(source, index, err)
        unreadable[attempt] = index
        same = np.flatnonzero(labels == labels[index])
        index = int(rng.choice(same)) if attempt < _ATTEMPTS - 1 else index
    else:
      image = np.zeros((image_size, image_size, 3), np.uint8)
    return {"image": image, "label": np.int32(labels[index]), "mask": np.bool_(True),
            "index": np.int32(index), "unreadable": unreadable}

  ds = grain.MapDataset.range(start_step * local, (start_step + num_steps) * local)
  ds = ds.map(element).batch(local, drop_remainder=True)
  return _counted(_iterate(ds, num_threads, worker_count, prefetch=max(2, num_threads)), skipped)


def eval_batches(source, *, batch_size: int, image_size: int, resize_size: int,
                 process_index: int = 0, process_count: int = 1, num_threads: int = 8,
                 worker_count: int = 0, skipped: SkipCounter | None = None,
                 transform: Callable | None = None,
                 seed=None) -> Iterator[dict[str, np.ndarray]]:
  """One sequential pass, padded to whole global batches; padding has ``mask=False``.

  ``transform``: ``(image, size) -> uint8 image`` (default: resize + center crop); with a
  ``seed`` (int or ints), ``(image, size, rng)`` with ``rng`` a function of ``(seed, index)``:
  a pass over augmented images (the official IAA estimate).
  """
  if transform is None:
    transform = lambda img, size: transforms.eval_transform(img, size, resize_size)  # noqa: E731
  rows = _local_rows(batch_size, process_index, process_count)
  local, n = len(rows), len(source)
  skipped = skipped or SkipCounter()

  def element(e: int) -> dict[str, np.ndarray]:
    step, j = divmod(e, local)
    index = step * batch_size + rows.start + j
    image, ok = np.zeros((image_size, image_size, 3), np.uint8), index < n
    unreadable = np.full(1, -1, np.int32)
    if ok:
      try:
        img = source.load(index)
        image = (transform(img, image_size) if seed is None else
                 transform(img, image_size,
                           np.random.default_rng([*np.atleast_1d(seed), index])))
      except Exception as err:  # noqa: BLE001
        skipped.warn(source, index, err)
        unreadable[0], ok = index, False
    label = source.labels[index] if index < n else -1
    return {"image": image, "label": np.int32(label), "mask": np.bool_(ok),
            "index": np.int32(index), "unreadable": unreadable}

  steps = -(-n // batch_size)
  ds = grain.MapDataset.range(0, steps * local).map(element).batch(local)
  return _counted(_iterate(ds, num_threads, worker_count, prefetch=max(2, num_threads)), skipped)
