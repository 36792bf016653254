"""Image mixing, Mixup and CutMix, per global batch, inside the jitted step (``mixing.kind``;
both tasks: retrieval's IDML Mixup and classification's rows).

The random draws of a step (:func:`draw`: ``lam``, the permutation, CutMix's box and whether
it applies) are separate from their use (:func:`mix`), so a test can feed the same draws
to a reference implementation. Classification's loss is the label-mixed cross-entropy of
the IDML classification code, ``lam CE(out, y) + (1 - lam) CE(out, y[perm])``
(:func:`mixed_cross_entropy`); retrieval mixes its metric loss the same way.

CutMix (Yun et al. 2019) pastes the box ``[y1, y2) × [x1, x2)`` of ``images[perm]``: side
ratio ``sqrt(1 - lam)`` around a uniform centre, clipped to the image, and ``lam`` is then
corrected to the kept area, ``1 - box area / (H W)`` (the official ``rand_bbox``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MIXINGS = ("none", "mixup", "cutmix")


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


def draw(key: jax.Array, mixing: str, batch_size: int, height: int, width: int, *,
         alpha: float = 1.0, prob: float = 1.0) -> dict[str, jax.Array]:
  """One step's draws: ``lam ~ Beta(alpha, alpha)``, ``perm`` [B], CutMix's ``box`` [4] and
  ``apply`` (CutMix applies to the batch with probability ``prob``)."""
  k_apply, k_lam, k_perm, k_box = jax.random.split(key, 4)
  lam = jax.random.beta(k_lam, alpha, alpha) if mixing != "none" else jnp.float32(1.0)
  out = {"lam": lam, "perm": jax.random.permutation(k_perm, batch_size)}
  if mixing == "cutmix":
    out["box"] = cutmix_box(k_box, lam, height, width)
    out["apply"] = jax.random.uniform(k_apply) < prob
  return out


def mix(images: jax.Array, draws: dict[str, jax.Array],
        mixing: str) -> tuple[jax.Array, jax.Array]:
  """``(mixed images [B, H, W, C], lam)``: Mixup ``lam x + (1 - lam) x[perm]``, CutMix the
  pasted box (``lam`` corrected to its area; 1 when it does not apply), none unchanged."""
  if mixing == "none":
    return images, jnp.float32(1.0)
  lam, perm = draws["lam"], draws["perm"]
  if mixing == "mixup":
    return lam * images + (1 - lam) * images[perm], lam
  _, h, w, _ = images.shape
  y1, y2, x1, x2 = draws["box"]
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2) & draws["apply"]  # [H, W]
  mixed = jnp.where(inside[None, :, :, None], images[perm], images)
  return mixed, 1.0 - jnp.sum(inside) / (h * w)


def mixed_cross_entropy(logits: jax.Array, labels: jax.Array, lam: jax.Array,
                        perm: jax.Array | None) -> jax.Array:
  """``mean(lam CE(logits, y) + (1 - lam) CE(logits, y[perm]))``; logits [B, C], labels [B].
  ``perm`` None (no mixing): ``mean(CE(logits, y))``."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  ce = lambda y: -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]
  if perm is None:
    return jnp.mean(ce(labels))
  return jnp.mean(lam * ce(labels) + (1 - lam) * ce(labels[perm]))
