"""Data mixing for classification: Mixup and CutMix, per global batch, inside the jitted step.

Both return ``(mixed images [B, H, W, C], lam, perm [B])``; the loss is the label-mixed
cross-entropy of the IDML classification code, ``lam CE(out, y) + (1 - lam) CE(out, y[perm])``.
Everything is a function of the step's key, so a resumed run mixes identically.

CutMix (Yun et al. 2019) pastes the box ``[y1, y2) × [x1, x2)`` of ``images[perm]``: side
ratio ``sqrt(1 - lam)`` around a uniform centre, clipped to the image, and ``lam`` is then
corrected to the kept area, ``1 - box area / (H W)`` (the official ``rand_bbox``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mixup(key: jax.Array, images: jax.Array, alpha: float = 1.0):
  """``lam x + (1 - lam) x[perm]``, ``lam ~ Beta(alpha, alpha)``."""
  k_lam, k_perm = jax.random.split(key)
  lam = jax.random.beta(k_lam, alpha, alpha)
  perm = jax.random.permutation(k_perm, images.shape[0])
  return lam * images + (1 - lam) * images[perm], lam, perm


def cutmix_box(key: jax.Array, lam: jax.Array, height: int, width: int) -> jax.Array:
  """The official ``rand_bbox``: ``[y1, y2, x1, x2]`` int32 for a box of side ratio
  ``sqrt(1 - lam)`` centred uniformly, clipped to the image."""
  k_y, k_x = jax.random.split(key)
  cut = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = (cut * height).astype(jnp.int32), (cut * width).astype(jnp.int32)
  cy = jax.random.randint(k_y, (), 0, height)
  cx = jax.random.randint(k_x, (), 0, width)
  return jnp.stack([jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height),
                    jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)])


def cutmix(key: jax.Array, images: jax.Array, alpha: float = 1.0, prob: float = 1.0):
  """Pastes a box of ``images[perm]`` into every image with probability ``prob`` (per batch);
  otherwise returns the batch unchanged with ``lam = 1``."""
  k_apply, k_lam, k_perm, k_box = jax.random.split(key, 4)
  _, h, w, _ = images.shape
  lam = jax.random.beta(k_lam, alpha, alpha)
  perm = jax.random.permutation(k_perm, images.shape[0])
  y1, y2, x1, x2 = cutmix_box(k_box, lam, h, w)
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)  # [H, W]
  apply = jax.random.uniform(k_apply) < prob
  inside = inside & apply
  mixed = jnp.where(inside[None, :, :, None], images[perm], images)
  lam = 1.0 - jnp.sum(inside) / (h * w)
  return mixed, lam, perm


def mixed_cross_entropy(logits: jax.Array, labels: jax.Array, lam: jax.Array,
                        perm: jax.Array) -> jax.Array:
  """``mean(lam CE(logits, y) + (1 - lam) CE(logits, y[perm]))``; logits [B, C], labels [B]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  ce = lambda y: -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]
  return jnp.mean(lam * ce(labels) + (1 - lam) * ce(labels[perm]))
