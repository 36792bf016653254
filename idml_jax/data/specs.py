"""What each dataset of the papers is: class-disjoint split rule, TFDS names, expected counts.

docs/algorithms.md §3. A loaded split whose counts differ from these warns loudly, naming
both numbers: silently wrong splits make results incomparable with the papers.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from idml_jax import names


@dataclasses.dataclass(frozen=True)
class SplitCounts:
  images: int
  classes: int


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One dataset.

  Attributes:
    name: config name.
    counts: split -> expected (images, classes) of the class-disjoint protocol.
    tfds_name: TFDS builder, or None (In-Shop has none).
    tfds_splits: TFDS splits read and re-split by label (``train+test`` where TFDS
      splits images within classes).
    tfds_label_key: the feature holding the class.
    num_train_classes: labels ``< num_train_classes`` train, the rest test, when the
      class-disjoint split is re-made by label (CUB, Cars); None if TFDS splits
      already are class-disjoint (SOP).
    folder: the official PyTorch repos' folder name.
    how_to_get: where the data comes from (printed with a missing-dataset error).
  """

  name: str
  counts: dict[str, SplitCounts]
  tfds_name: str | None
  tfds_splits: dict[str, str]
  tfds_label_key: str
  num_train_classes: int | None
  folder: str
  how_to_get: str


SPECS: dict[str, DatasetSpec] = {
    "cub": DatasetSpec(
        "cub", {"train": SplitCounts(5864, 100), "test": SplitCounts(5924, 100)},
        "caltech_birds2011", {"train": "train+test", "test": "train+test"}, "label", 100,
        "CUB_200_2011",
        "https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz)"),
    "cars": DatasetSpec(
        "cars", {"train": SplitCounts(8054, 98), "test": SplitCounts(8131, 98)},
        "cars196", {"train": "train+test", "test": "train+test"}, "label", 98, "cars196",
        "the Stanford Cars archive car_ims.tgz + cars_annos.mat (the TFDS URL is dead: "
        "tensorflow/datasets#4932, #5656)"),
    "sop": DatasetSpec(
        "sop", {"train": SplitCounts(59551, 11318), "test": SplitCounts(60502, 11316)},
        "stanford_online_products", {"train": "train", "test": "test"}, "class_id", None,
        "Stanford_Online_Products",
        "https://cvgl.stanford.edu/projects/lifted_struct/ (Stanford_Online_Products.zip; "
        "the TFDS URL is dead: tensorflow/datasets#5053)"),
    "inshop": DatasetSpec(
        "inshop", {"train": SplitCounts(25882, 3997), "query": SplitCounts(14218, 3985),
                   "gallery": SplitCounts(12612, 3985)},
        None, {}, "", None, "InShop",
        "DeepFashion In-shop Clothes Retrieval (Img/img.zip + Eval/list_eval_partition.txt) "
        "from https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion.html; TFDS has no builder"),
}


@dataclasses.dataclass(frozen=True)
class ClassificationSpec:
  """An image-classification dataset (IDML §1.4): the same classes train and test.

  Attributes:
    tfds_splits: ``{"train": ..., "test": ...}`` TFDS split names.
  """

  name: str
  tfds_name: str
  tfds_splits: dict[str, str]
  counts: dict[str, SplitCounts]
  how_to_get: str


_IMAGENET_MANUAL = (
    "TFDS cannot download ImageNet: get ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
    "from https://image-net.org/download-images, put them in <data_dir>/downloads/manual/ "
    "(or pass --manual_dir), then run `python -m idml_jax.data.prepare imagenet "
    "--data_dir=<data_dir>`")

CLASSIFICATION: dict[str, ClassificationSpec] = {
    "cifar10": ClassificationSpec(
        "cifar10", "cifar10", {"train": "train", "test": "test"},
        {"train": SplitCounts(50000, 10), "test": SplitCounts(10000, 10)},
        "TFDS downloads it: `python -m idml_jax.data.prepare cifar10 --data_dir=<data_dir>`"),
    "cifar100": ClassificationSpec(
        "cifar100", "cifar100", {"train": "train", "test": "test"},
        {"train": SplitCounts(50000, 100), "test": SplitCounts(10000, 100)},
        "TFDS downloads it: `python -m idml_jax.data.prepare cifar100 --data_dir=<data_dir>`"),
    "imagenet": ClassificationSpec(
        "imagenet", "imagenet2012", {"train": "train", "test": "validation"},
        {"train": SplitCounts(1281167, 1000), "test": SplitCounts(50000, 1000)},
        _IMAGENET_MANUAL),
}


def get_spec(name: str) -> DatasetSpec:
  return names.lookup(SPECS, name, "dataset")


def check_counts(name: str, split: str, labels: np.ndarray) -> None:
  """Warns (naming both numbers) if a split's image or class count differs from the spec."""
  spec = SPECS.get(name) or CLASSIFICATION.get(name)
  if spec is None or split not in spec.counts:
    return
  want = spec.counts[split]
  got = SplitCounts(len(labels), len(np.unique(labels)))
  if got != want:
    logging.warning(
        "%s/%s has %d images in %d classes, but the papers' protocol has %d images in %d "
        "classes: results will not be comparable with the papers.", name, split, got.images,
        got.classes, want.images, want.classes)
