"""The papers' image transforms (host side, NumPy/Pillow) and on-device normalisation.

Train: random-resized-crop (scale 0.08–1, ratio 3/4–4/3, as torchvision) to ``size``
+ horizontal flip; for CIFAR, :func:`pad_crop_flip` (zero-pad 4, random ``size`` crop, flip).
Test: resize the shorter side to ``resize`` (256) + center crop
``size`` (224). Host transforms return uint8 [size, size, 3]; :func:`normalize` runs on
device inside the jitted step (4× less host→device traffic than float32).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from PIL import Image

from idml_jax.models import InputSpec


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
  return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


def random_resized_crop(img: np.ndarray, size: int, rng: np.random.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """torchvision's RandomResizedCrop: 10 tries, then a center crop fallback."""
  h, w = img.shape[:2]
  area = h * w
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      return _resize(img[top:top + ch, left:left + cw], size, size)
  in_ratio = w / h
  if in_ratio < ratio[0]:
    cw, ch = w, int(round(w / ratio[0]))
  elif in_ratio > ratio[1]:
    cw, ch = int(round(h * ratio[1])), h
  else:
    cw, ch = w, h
  top, left = (h - ch) // 2, (w - cw) // 2
  return _resize(img[top:top + ch, left:left + cw], size, size)


def train_transform(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  out = random_resized_crop(img, size, rng)
  return out[:, ::-1] if rng.random() < 0.5 else out


def pad_crop_flip(img: np.ndarray, size: int, rng: np.random.Generator,
                  pad: int = 4) -> np.ndarray:
  """CIFAR's augmentation: resize to ``size`` if needed, zero-pad ``pad`` pixels, take a
  random ``size`` × ``size`` crop, flip horizontally with probability 1/2."""
  if img.shape[:2] != (size, size):
    img = _resize(img, size, size)
  padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  out = padded[top:top + size, left:left + size]
  return out[:, ::-1] if rng.random() < 0.5 else out


TRAIN_TRANSFORMS = {"random_resized_crop": train_transform, "pad_crop": pad_crop_flip}


def eval_transform(img: np.ndarray, size: int, resize: int) -> np.ndarray:
  """Shorter side to ``resize``, then the central ``size`` × ``size`` crop."""
  h, w = img.shape[:2]
  s = resize / min(h, w)
  nh, nw = max(size, int(round(h * s))), max(size, int(round(w * s)))
  img = _resize(img, nw, nh)
  top, left = (nh - size) // 2, (nw - size) // 2
  return img[top:top + size, left:left + size]


def normalize(images: jnp.ndarray, spec: InputSpec) -> jnp.ndarray:
  """uint8 RGB [B, H, W, 3] -> float32 as the backbone's weights expect (BGR for BN-Inception)."""
  x = images.astype(jnp.float32) * spec.scale
  if spec.bgr:
    x = x[..., ::-1]
  return (x - jnp.asarray(spec.mean)) / jnp.asarray(spec.std)
