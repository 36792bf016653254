"""Shipped demo data: real images that come inside Python packages, class-disjoint.

* ``patches``: patch-identity retrieval from the photographs bundled with
  scikit-image (``skimage.data``): each photograph is a class, its images are random
  crops (position and scale) resized to ``size``. The first ``num_train_classes``
  photographs train, the rest test.
* ``digits``: scikit-learn's ``load_digits`` (8×8, upsampled); classes 0–4 train,
  5–9 test. The fastest smoke set.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

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
            seed: int = 0) -> dict[str, ArraySource]:
  """Patch-identity retrieval from scikit-image's bundled photographs."""
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
  train = labels < num_train_classes
  pick = lambda m: ArraySource(images[m], labels[m],
                               [n for n, k in zip(names, m, strict=True) if k])
  return {"train": pick(train), "test": pick(~train)}


def digits(size: int = 32) -> dict[str, ArraySource]:
  """scikit-learn's handwritten digits; classes 0–4 train, 5–9 test."""
  from sklearn.datasets import load_digits
  d = load_digits()
  small = (d.images * (255.0 / 16.0)).astype(np.uint8)
  images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
                     for im in small])
  images = np.repeat(images[..., None], 3, axis=-1)
  train = d.target < 5
  return {"train": ArraySource(images[train], d.target[train]),
          "test": ArraySource(images[~train], d.target[~train])}


DEMOS = {"patches": patches, "digits": digits}
