"""Shipped demo data: real images that come inside Python packages, class-disjoint.

* ``patches``: patch-identity retrieval from the photographs bundled with
  scikit-image (``skimage.data``): each photograph is a class, its images are random
  crops (position and scale) resized to ``size``. The first ``num_train_classes``
  photographs train, the rest test.
* ``digits``: scikit-learn's ``load_digits`` (8×8, upsampled); classes 0–4 train,
  5–9 test. The fastest smoke set.
* ``glyphs``: characters as drawn by the fonts bundled with matplotlib (a class is a
  character, its images the fonts; :mod:`idml_jax.data.glyphs`), split by character.

For image classification (``task="classification"``) the same images are split *within*
classes instead (every 4th image tests): ``patches_classification`` (20 classes, colour, a
CIFAR-sized task) and ``digits_classification`` (10 classes).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from idml_jax.data import glyphs
from idml_jax.data.sources import ArraySource

# skimage.data photographs shipped inside the wheel (no download), in a fixed order.
PHOTOGRAPHS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "horse",
               "hubble_deep_field", "immunohistochemistry", "moon", "page", "text", "clock",
               "logo", "brick", "grass", "gravel", "retina", "colorwheel", "microaneurysms")


def _rgb(img: np.ndarray) -> np.ndarray:
  if img.dtype != np.uint8:
    img = img.astype(np.float64)
    img = (255 * (img - img.min()) / max(np.ptp(img), 1e-12)).astype(np.uint8)
  if img.ndim == 2:
    img = np.stack([img] * 3, -1)
  return img[..., :3]


def patches(size: int = 64, crops_per_class: int = 40, num_train_classes: int = 10,
            seed: int = 0, within_classes: bool = False) -> dict[str, ArraySource]:
  """Patch-identity retrieval (or, ``within_classes``, classification) from scikit-image's
  bundled photographs."""
  import skimage.data
  rng = np.random.default_rng(seed)
  images, labels, names = [], [], []
  for c, name in enumerate(PHOTOGRAPHS):
    photo = _rgb(getattr(skimage.data, name)())
    h, w = photo.shape[:2]
    for i in range(crops_per_class):
      side = int(min(h, w) * rng.uniform(0.1, 0.5))
      top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
      crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size),
                                                                             Image.BILINEAR)
      images.append(np.asarray(crop))
      labels.append(c)
      names.append(f"{name}#{i}")
  images, labels = np.stack(images), np.asarray(labels)
  train = _split_within(labels) if within_classes else labels < num_train_classes
  pick = lambda m: ArraySource(images[m], labels[m],
                               [n for n, k in zip(names, m, strict=True) if k])
  return {"train": pick(train), "test": pick(~train)}


def _split_within(labels: np.ndarray, test_every: int = 4) -> np.ndarray:
  """Train mask: every ``test_every``-th image of each class tests, the others train."""
  train = np.ones(len(labels), bool)
  for c in np.unique(labels):
    train[np.flatnonzero(labels == c)[::test_every]] = False
  return train


def digits(size: int = 32, within_classes: bool = False) -> dict[str, ArraySource]:
  """scikit-learn's handwritten digits; classes 0–4 train, 5–9 test (or, ``within_classes``,
  all 10 classes in both)."""
  from sklearn.datasets import load_digits
  d = load_digits()
  small = (d.images * (255.0 / 16.0)).astype(np.uint8)
  images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
                     for im in small])
  images = np.repeat(images[..., None], 3, axis=-1)
  train = _split_within(d.target) if within_classes else d.target < 5
  return {"train": ArraySource(images[train], d.target[train]),
          "test": ArraySource(images[~train], d.target[~train])}


DEMOS = {"patches": patches, "digits": digits, "glyphs": glyphs.glyphs,
         "patches_classification": lambda: patches(32, 60, within_classes=True),
         "digits_classification": lambda: digits(within_classes=True)}
