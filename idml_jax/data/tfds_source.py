"""Prepared TFDS datasets, read without TensorFlow, re-split class-disjointly.

``tfds.data_source`` reads the array_record files; images come back as encoded bytes
(``SkipDecoding``) and Pillow decodes them. The label array of each TFDS split is
cached next to the data (``labels-<split>.npy``), so re-making the class-disjoint
split does not rescan 120k records on every run.
"""

from __future__ import annotations

import os

import numpy as np

from idml_jax.data import specs
from idml_jax.data.sources import TfdsSource


def _labels(ds, label_key: str, cache: str | None) -> np.ndarray:
  if cache and os.path.exists(cache):
    labels = np.load(cache)
    if len(labels) == len(ds):
      return labels
  labels = np.asarray([int(ds[i][label_key]) for i in range(len(ds))], np.int64)
  if cache:
    try:
      np.save(cache, labels)
    except OSError:  # Read-only data dir: no cache, still correct.
      pass
  return labels


def _open(builder: str, split: str, data_dir: str | None, image_key: str, name: str,
          how_to_get: str):
  import tensorflow_datasets as tfds
  try:
    return tfds.data_source(builder, split=split, data_dir=data_dir, download=False,
                            decoders={image_key: tfds.decode.SkipDecoding()})
  except Exception as e:  # Not prepared (AssertionError / DatasetNotFoundError / ...).
    raise FileNotFoundError(
        f"TFDS dataset {builder!r} ({split}) is not prepared in "
        f"{data_dir or '~/tensorflow_datasets'}: run `python -m idml_jax.data.prepare "
        f"{name} --data_dir=DIR [--manual_dir=ARCHIVES]` (needs `pip install -e .[tf]`), "
        f"or use the folder layout. Where the data comes from: {how_to_get}. "
        f"Original error: {e}") from e


def _label_cache(ds, split: str) -> str | None:
  path = getattr(getattr(ds, "dataset_info", None), "data_dir", None)
  return os.path.join(path, f"labels-{split.replace('+', '_')}.npy") if path else None


def load_tfds_classification(name: str, data_dir: str | None = None, *,
                             tfds_name: str | None = None,
                             image_key: str = "image") -> dict[str, TfdsSource]:
  """``{"train", "test"}`` of a classification dataset (``cifar10``, ``cifar100``,
  ``imagenet``), labels as TFDS numbers them."""
  spec = specs.CLASSIFICATION[name]
  out = {}
  for split, tfds_split in spec.tfds_splits.items():
    ds = _open(tfds_name or spec.tfds_name, tfds_split, data_dir, image_key, name,
               spec.how_to_get)
    labels = _labels(ds, "label", _label_cache(ds, tfds_split))
    out[split] = TfdsSource(ds, np.arange(len(labels)), labels, image_key, renumber=False)
    specs.check_counts(name, split, labels)
  return out


def load_tfds(name: str, data_dir: str | None = None, *, tfds_name: str | None = None,
              image_key: str = "image") -> dict[str, TfdsSource]:
  """``{split: TfdsSource}`` for dataset ``name`` (``cub``, ``cars``, ``sop``).

  Args:
    data_dir: TFDS data dir (default: TFDS's, ``~/tensorflow_datasets``).
    tfds_name: override the builder name (tests, or a renamed copy).
  """
  spec = specs.get_spec(name)
  builder = tfds_name or spec.tfds_name
  if builder is None:
    raise ValueError(f"{name} has no TFDS builder; use its folder layout "
                     f"(config.data.source='folder'): {spec.how_to_get}.")
  out, cache = {}, {}
  for split, tfds_split in spec.tfds_splits.items():
    if tfds_split not in cache:
      ds = _open(builder, tfds_split, data_dir, image_key, name, spec.how_to_get)
      cache[tfds_split] = (ds, _labels(ds, spec.tfds_label_key, _label_cache(ds, tfds_split)))
    ds, labels = cache[tfds_split]
    if spec.num_train_classes is None:
      idx = np.arange(len(labels))
    else:  # TFDS splits within classes: re-make the class-disjoint split by label.
      train = labels < spec.num_train_classes
      idx = np.flatnonzero(train if split == "train" else ~train)
    out[split] = TfdsSource(ds, idx, labels[idx], image_key)
    specs.check_counts(name, split, out[split].labels)
  return out
