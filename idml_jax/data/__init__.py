"""Datasets (TFDS, the official folder layouts, shipped demo data) and the input pipeline."""

from __future__ import annotations

from idml_jax.data import demo, folders, specs, transforms
from idml_jax.data.pipeline import SkipCounter, eval_batches, train_batches
from idml_jax.data.samplers import ClassBalancedSampler, RandomSampler

SOURCES = ("demo", "folder", "tfds")


def load_splits(name: str, source: str = "demo", data_dir: str | None = None) -> dict:
  """``{split: image source}``.

  Args:
    name: for ``demo``: ``patches`` or ``digits``; for ``folder``: ``cub``, ``cars``,
      ``sop``, ``inshop`` or ``image_folder``; for ``tfds``: ``cub``, ``cars``, ``sop``, and
      for classification ``cifar10``, ``cifar100``, ``imagenet`` (demo:
      ``patches_classification``, ``digits_classification``).
    source: ``demo``, ``folder`` or ``tfds``.
    data_dir: the folder holding the dataset (folder), or the TFDS data dir.
  """
  if source == "demo":
    if name not in demo.DEMOS:
      raise ValueError(f"Unknown demo dataset {name!r}; valid: {sorted(demo.DEMOS)}.")
    return demo.DEMOS[name]()
  if source == "folder":
    if not data_dir:
      raise ValueError(f"config.data.data_dir must name the folder holding {name!r}.")
    return folders.load_folder(name, data_dir)
  if source == "tfds":
    from idml_jax.data.tfds_source import load_tfds, load_tfds_classification
    if name in specs.CLASSIFICATION:
      return load_tfds_classification(name, data_dir)
    return load_tfds(name, data_dir)
  raise ValueError(f"Unknown data source {source!r}; valid: {SOURCES}.")


__all__ = ["SOURCES", "ClassBalancedSampler", "RandomSampler", "SkipCounter", "eval_batches",
           "load_splits", "specs", "train_batches", "transforms"]
