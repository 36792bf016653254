"""The papers' image transforms: host-side crops (NumPy/Pillow) and on-device colour work.

Host transforms return uint8 [size, size, 3] (4× less host→device traffic than float32);
they follow torchvision's definitions on PIL images exactly:

* train: random-resized crop (scale 0.08–1, log-uniform ratio 3/4–4/3, 10 tries, then a
  centre-crop fallback) + horizontal flip; :func:`pad_crop_flip` for CIFAR. The official
  IAA code squashes non-CUB images to 256×256 first and crops with scale 0.16–1, Lanczos.
* test: ``Resize(256)`` — the shorter side to 256, the longer to ``int(256 · long / short)``
  — then ``CenterCrop(224)`` at ``int(round((h - 224) / 2))``; or (``resize_mode="square"``,
  official IAA) a 256×256 squash first.

On device, inside the jitted step: :func:`color_augment` (the IDML ImageNet recipe's colour
jitter and PCA lighting, on [0, 1] RGB) and :func:`normalize` as the weights expect.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from idml_jax.models import InputSpec

INTERPOLATIONS = {"bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS,
                  "bicubic": Image.BICUBIC}
RESIZE_MODES = ("shorter_side", "square")


def _resize(img: np.ndarray, w: int, h: int, interpolation: str = "bilinear") -> np.ndarray:
  return np.asarray(Image.fromarray(img).resize((w, h), INTERPOLATIONS[interpolation]))


def random_resized_crop(img: np.ndarray, size: int, rng: np.random.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        interpolation: str = "bilinear") -> np.ndarray:
  """torchvision's RandomResizedCrop: 10 tries, then a center crop fallback."""
  h, w = img.shape[:2]
  area = h * w
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      return _resize(img[top:top + ch, left:left + cw], size, size, interpolation)
  in_ratio = w / h
  if in_ratio < min(ratio):
    cw, ch = w, int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    cw, ch = int(round(h * max(ratio))), h
  else:
    cw, ch = w, h
  top, left = (h - ch) // 2, (w - cw) // 2
  return _resize(img[top:top + ch, left:left + cw], size, size, interpolation)


def train_transform(img: np.ndarray, size: int, rng: np.random.Generator, *,
                    scale=(0.08, 1.0), interpolation: str = "bilinear",
                    resize_mode: str = "shorter_side", resize: int = 256,
                    flip: bool = True) -> np.ndarray:
  """Random-resized crop + flip (``resize_mode="square"``: a ``resize``² squash first;
  ``flip=False``: no flip, for data whose mirror image is another class)."""
  if resize_mode == "square":
    img = _resize(img, resize, resize, interpolation)
  out = random_resized_crop(img, size, rng, scale=scale, interpolation=interpolation)
  return out[:, ::-1] if flip and rng.random() < 0.5 else out


def pad_crop_flip(img: np.ndarray, size: int, rng: np.random.Generator, *,
                  pad: int = 4, flip: bool = True, **_) -> np.ndarray:
  """CIFAR's augmentation: resize to ``size`` if needed, zero-pad ``pad`` pixels, take a
  random ``size`` × ``size`` crop, flip horizontally with probability 1/2 (``flip``)."""
  if img.shape[:2] != (size, size):
    img = _resize(img, size, size)
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  # The window's corner in the image's coordinates; what falls outside the image is zero.
  y, x = int(top) - pad, int(left) - pad
  (y0, y1), (x0, x1) = ((max(v, 0), min(v + size, size)) for v in (y, x))
  out = np.zeros_like(img)
  if y0 < y1 and x0 < x1:
    out[y0 - y:y1 - y, x0 - x:x1 - x] = img[y0:y1, x0:x1]
  return out[:, ::-1] if flip and rng.random() < 0.5 else out


# ``data.augment`` -> ``(image, size, rng, **crop settings) -> uint8 image``.
TRAIN_TRANSFORMS = {"random_resized_crop": train_transform, "pad_crop": pad_crop_flip}


def resize_shorter_side(h: int, w: int, resize: int) -> tuple[int, int]:
  """torchvision's ``Resize(resize)`` output size: the shorter side to ``resize``, the longer
  to ``int(resize · long / short)`` (truncated)."""
  if h <= w:
    return resize, int(resize * w / h)
  return int(resize * h / w), resize


def eval_transform(img: np.ndarray, size: int, resize: int, *, resize_mode: str = "shorter_side",
                   interpolation: str = "bilinear") -> np.ndarray:
  """``Resize(resize)`` (or a ``resize``² squash) then ``CenterCrop(size)``, as torchvision."""
  h, w = img.shape[:2]
  nh, nw = (resize, resize) if resize_mode == "square" else resize_shorter_side(h, w, resize)
  img = _resize(img, nw, nh, interpolation)
  if nh < size or nw < size:  # torchvision pads a too-small image before cropping.
    img = np.pad(img, ((max(size - nh, 0) // 2, (max(size - nh, 0) + 1) // 2),
                       (max(size - nw, 0) // 2, (max(size - nw, 0) + 1) // 2), (0, 0)))
    nh, nw = img.shape[:2]
  top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
  return img[top:top + size, left:left + size]


def from_config(config) -> tuple:
  """``(train transform, eval transform)`` of ``config.data`` for the input pipeline."""
  d = config.data
  train = functools.partial(TRAIN_TRANSFORMS[d.augment], scale=tuple(d.crop_scale),
                            interpolation=d.interpolation, resize_mode=d.resize_mode,
                            resize=d.resize_size, flip=d.flip)
  test = functools.partial(eval_transform, resize=d.resize_size, resize_mode=d.resize_mode,
                           interpolation=d.interpolation)
  return train, lambda img, size: test(img, size)


# ----------------------------------------------------------------------------- on device

# PCA lighting of the ImageNet recipe (AlexNet's; the IDML classification code's).
LIGHTING_EIGVAL = (0.2175, 0.0188, 0.0045)
LIGHTING_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140),
                   (-0.5836, -0.6948, 0.4203))
# The 3! orders of (brightness, contrast, saturation): the official ColorJitter shuffles them.
_ORDERS = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])


def color_draws(key: jax.Array, batch_size: int, jitter: float,
                lighting: float) -> dict[str, jax.Array]:
  """Per-image draws of :func:`color_augment`: ``jitter_alpha`` [B, 3] ~ U(-j, j) (brightness,
  contrast, saturation), ``jitter_order`` [B] in 0..5, ``lighting_alpha`` [B, 3] ~ N(0, l²)."""
  k_a, k_o, k_l = jax.random.split(key, 3)
  return {"jitter_alpha": jax.random.uniform(k_a, (batch_size, 3), minval=-jitter, maxval=jitter),
          "jitter_order": jax.random.randint(k_o, (batch_size,), 0, len(_ORDERS)),
          "lighting_alpha": lighting * jax.random.normal(k_l, (batch_size, 3))}


def _grayscale(x: jax.Array) -> jax.Array:
  """[B, H, W, 3] -> [B, H, W, 1] with the official Grayscale's weights."""
  return (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]


def color_augment(images: jax.Array, draws: dict[str, jax.Array]) -> jax.Array:
  """The IDML ImageNet recipe's ColorJitter then Lighting, on RGB in [0, 1] (no clipping,
  as the official tensor transforms). [B, H, W, 3] -> [B, H, W, 3]."""
  order = jnp.asarray(_ORDERS)[draws["jitter_order"]]  # [B, 3] transform ids
  x = images
  for position in range(3):
    which = order[:, position, None, None, None]  # [B, 1, 1, 1]
    a = jnp.take_along_axis(draws["jitter_alpha"], order[:, position:position + 1],
                            axis=1)[:, :, None, None]  # That transform's alpha, [B, 1, 1, 1].
    gray = _grayscale(x)
    targets = (jnp.zeros_like(x),  # Brightness: lerp towards black.
               jnp.broadcast_to(jnp.mean(gray, axis=(1, 2, 3), keepdims=True), x.shape),  # Contrast
               jnp.broadcast_to(gray, x.shape))  # Saturation: lerp towards grey.
    target = jnp.where(which == 0, targets[0], jnp.where(which == 1, targets[1], targets[2]))
    x = x + a * (target - x)
  rgb = jnp.einsum("cj,bj->bc", jnp.asarray(LIGHTING_EIGVEC),
                   draws["lighting_alpha"] * jnp.asarray(LIGHTING_EIGVAL))
  return x + rgb[:, None, None, :]


def normalize(images: jnp.ndarray, spec: InputSpec) -> jnp.ndarray:
  """uint8 RGB [B, H, W, 3] (or float RGB in [0, 1]) -> float32 as the backbone's weights
  expect (BGR in 0–255 for BN-Inception)."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    images = images.astype(jnp.float32) / 255.0
  x = images * (spec.scale * 255.0)
  if spec.bgr:
    x = x[..., ::-1]
  return (x - jnp.asarray(spec.mean)) / jnp.asarray(spec.std)
