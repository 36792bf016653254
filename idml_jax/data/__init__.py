"""Datasets (TFDS, the official folder layouts, shipped demo data) and the input pipeline."""

from __future__ import annotations

from idml_jax import names
from idml_jax.data import demo, folders, specs, transforms
from idml_jax.data.pipeline import SkipCounter, eval_batches, train_batches
from idml_jax.data.samplers import SAMPLERS, ClassBalancedSampler, RandomSampler, Sampler
from idml_jax.data.sources import ImageSource

# Dataset names (``data.name``) each source (``data.source``) can load.
DATASETS: dict[str, tuple[str, ...]] = {
    "demo": tuple(demo.DEMOS),
    "folder": tuple(folders.LOADERS),
    "tfds": tuple(n for n, s in specs.SPECS.items() if s.tfds_name) + tuple(specs.CLASSIFICATION),
}
SOURCES = tuple(DATASETS)


def load_splits(name: str, source: str = "demo", data_dir: str | None = None
                ) -> dict[str, ImageSource]:
  """``{split: image source}``.

  Args:
    name: one of ``DATASETS[source]``: for ``demo``: ``patches``, ``digits`` (and their
      ``_classification`` variants); for ``folder``: ``cub``, ``cars``, ``sop``, ``inshop``
      or ``image_folder``; for ``tfds``: ``cub``, ``cars``, ``sop``, ``cifar10``,
      ``cifar100``, ``imagenet``.
    source: ``demo``, ``folder`` or ``tfds``.
    data_dir: the folder holding the dataset (folder), or the TFDS data dir.
  """
  if name not in names.lookup(DATASETS, source, "data source"):
    raise ValueError(names.unknown(f"{source} dataset", name, DATASETS[source]))
  if source == "demo":
    return demo.DEMOS[name]()
  if source == "folder":
    if not data_dir:
      raise ValueError(f"config.data.data_dir must name the folder holding {name!r}.")
    return folders.load_folder(name, data_dir)
  from idml_jax.data.tfds_source import load_tfds, load_tfds_classification
  if name in specs.CLASSIFICATION:
    return load_tfds_classification(name, data_dir)
  return load_tfds(name, data_dir)


__all__ = ["DATASETS", "SAMPLERS", "SOURCES", "ClassBalancedSampler", "ImageSource",
           "RandomSampler", "Sampler", "SkipCounter", "eval_batches", "load_splits", "specs",
           "train_batches", "transforms"]
