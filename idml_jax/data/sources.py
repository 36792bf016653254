"""Image sources: random access to (image, label) pairs, one split each.

Every source has ``labels`` ([N] int, classes renumbered 0..C-1 within the split),
``__len__`` and ``load(i) -> uint8 [H, W, 3] RGB``. Images are decoded with Pillow.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image


def decode_image(data: bytes | str) -> np.ndarray:
  """Encoded bytes or a file path -> uint8 [H, W, 3] RGB (grey and RGBA converted)."""
  with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
    return np.asarray(im.convert("RGB"))


def relabel(labels: Sequence[int]) -> np.ndarray:
  """Original class ids -> 0..C-1, in increasing order of the original id."""
  _, inverse = np.unique(np.asarray(labels), return_inverse=True)
  return inverse.astype(np.int32)


class ArraySource:
  """Images held in memory: uint8 [N, H, W, 3] (or a list of differently sized arrays)."""

  def __init__(self, images, labels, names: Sequence[str] | None = None):
    self.images = images
    self.labels = relabel(labels)
    self.names = list(names) if names is not None else [str(i) for i in range(len(labels))]

  def __len__(self) -> int:
    return len(self.labels)

  def load(self, i: int) -> np.ndarray:
    return np.asarray(self.images[i])


class FileSource:
  """Image files on disk (the official repos' folder layouts)."""

  def __init__(self, paths: Sequence[str], labels: Sequence[int], renumber: bool = True):
    if len(paths) != len(labels):
      raise ValueError(f"{len(paths)} paths but {len(labels)} labels.")
    self.paths = list(paths)
    self.names = self.paths
    self.labels = relabel(labels) if renumber else np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.paths)

  def load(self, i: int) -> np.ndarray:
    return decode_image(self.paths[i])


class TfdsSource:
  """A prepared TFDS dataset read through ``tfds.data_source`` (array_record, no TensorFlow).

  Images are read as encoded bytes (``SkipDecoding``) and decoded by Pillow.
  """

  def __init__(self, data_source, indices: np.ndarray, labels: np.ndarray, image_key: str,
               renumber: bool = True):
    self.data_source = data_source
    self.indices = np.asarray(indices)
    self.labels = relabel(labels) if renumber else np.asarray(labels, np.int32)
    self.image_key = image_key
    self.names = [f"record {i}" for i in self.indices]

  def __len__(self) -> int:
    return len(self.indices)

  def load(self, i: int) -> np.ndarray:
    return decode_image(self.data_source[int(self.indices[i])][self.image_key])


# What a split is: images by index (``load(i)`` -> uint8 [H, W, 3]), ``labels`` [N], ``names``.
ImageSource = ArraySource | FileSource | TfdsSource
