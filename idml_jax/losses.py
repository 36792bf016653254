"""Metric-learning losses as pure functions of a similarity matrix and masks.

Each loss takes a similarity matrix (cosine, or IDML's introspective similarity)
and fixed-shape boolean masks, so it jits, shards over the batch and never
needs boolean indexing. Masked reductions use ``jnp.where``; an empty set gives
a zero term with a zero (finite) gradient.

Proxy losses take ``similarity: [B, C]`` (samples × class proxies) and labels.
Pair losses take ``similarity: [B, N]`` (anchors × candidates) and the masks
from :func:`pair_masks`, which exclude an anchor's own synthetic copies (IAA).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from idml_jax import names

# Stands in for -inf inside a masked log-sum-exp: exp(_NEG_INF - m) is exactly 0 and, unlike
# -inf, it never makes 0 * inf = NaN in the gradient.
_NEG_INF = -1e30
# Multi-Similarity drops "positives" this close to 1 (identical embeddings), as MS's code.
MS_IDENTICAL = 1.0 - 1e-5


def _log1p_sum_exp(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
  """``log(1 + sum_{mask} exp(x))`` along ``axis``, stable; 0 where the mask is empty."""
  x = jnp.where(mask, x, _NEG_INF)
  m = jnp.maximum(jnp.max(x, axis=axis, keepdims=True), 0.0)
  total = jnp.exp(-m) + jnp.sum(jnp.where(mask, jnp.exp(x - m), 0.0), axis=axis, keepdims=True)
  return jnp.squeeze(m + jnp.log(total), axis)


def _valid(mask: jax.Array | None, n: int) -> jax.Array:
  return jnp.ones((n,), bool) if mask is None else mask.astype(bool)


# ----------------------------------------------------------------------------- proxy losses


def proxy_anchor(similarity: jax.Array, labels: jax.Array, *, margin: float = 0.1,
                 alpha: float = 32.0, sample_mask: jax.Array | None = None) -> jax.Array:
  """Proxy-Anchor loss (Kim et al., CVPR 2020; docs/algorithms.md §1.5).

  Args:
    similarity: [B, C] similarity of each sample to each class proxy.
    labels: [B] int class labels in ``[0, C)``.
    margin: ``delta``.
    alpha: scale.
    sample_mask: [B] bool, False for padding samples (they are ignored).
  Returns:
    Scalar ``sum_{c in P+} pos_c / |P+| + sum_c neg_c / C``.
  """
  num_classes = similarity.shape[1]
  valid = _valid(sample_mask, similarity.shape[0])[:, None]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=bool)
  pos = onehot & valid
  neg = ~onehot & valid
  pos_term = _log1p_sum_exp(-alpha * (similarity - margin), pos, axis=0)  # [C]
  neg_term = _log1p_sum_exp(alpha * (similarity + margin), neg, axis=0)  # [C]
  with_pos = jnp.any(pos, axis=0)
  num_with_pos = jnp.maximum(jnp.sum(with_pos), 1)
  pos_loss = jnp.sum(jnp.where(with_pos, pos_term, 0.0)) / num_with_pos
  return pos_loss + jnp.sum(neg_term) / num_classes


def proxy_nca(similarity: jax.Array, labels: jax.Array, *, scale: float = 9.0,
              sample_mask: jax.Array | None = None) -> jax.Array:
  """Proxy-NCA (Movshovitz-Attias et al., ICCV 2017), as in the Proxy-Anchor code.

  Softmax over negative squared distances of normalised vectors, ``-scale (2 - 2 s)``,
  the positive proxy included in the denominator.

  Args:
    similarity: [B, C]; labels: [B]; sample_mask: [B] bool.
  Returns:
    Scalar mean cross-entropy over valid samples.
  """
  valid = _valid(sample_mask, similarity.shape[0])
  logits = -scale * (2.0 - 2.0 * similarity)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_p, labels[:, None], axis=1)[:, 0]
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


# ----------------------------------------------------------------------------- pair masks


def synthetic_source(batch_size: int, num_synthetic: int) -> jax.Array:
  """[B (1 + M)] index of the original each candidate comes from.

  Candidates are laid out as the B originals followed by M blocks of B synthetic
  copies (copy ``m`` of sample ``i`` at ``B + m B + i``).
  """
  return jnp.arange(batch_size * (1 + num_synthetic)) % batch_size


def pair_masks(anchor_labels: jax.Array, candidate_labels: jax.Array,
               anchor_ids: jax.Array | None = None, candidate_ids: jax.Array | None = None, *,
               anchor_mask: jax.Array | None = None,
               candidate_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Positive and negative masks for pair losses.

  A candidate is a positive of anchor ``i`` if it has the same label and is not made from
  the same image (the anchor itself or one of its own synthetic copies: equal ids); a
  negative if its label differs.

  Args:
    anchor_labels: [B] labels of the anchors.
    candidate_labels: [N] labels of the candidates.
    anchor_ids: [B] image id of each anchor (default ``arange(B)``: the anchors are the
      first B candidates).
    candidate_ids: [N] id of the image each candidate was made from (default
      ``arange(N)``; :func:`synthetic_source` for originals followed by synthetic copies).
    anchor_mask, candidate_mask: [B], [N] bool validity (False = padding).
  Returns:
    ``(positive, negative)``, each [B, N] bool.
  """
  b, n = anchor_labels.shape[0], candidate_labels.shape[0]
  if anchor_ids is None:
    anchor_ids = jnp.arange(b)
  if candidate_ids is None:
    candidate_ids = jnp.arange(n)
  valid = _valid(anchor_mask, b)[:, None] & _valid(candidate_mask, n)[None, :]
  same = anchor_labels[:, None] == candidate_labels[None, :]
  own = candidate_ids[None, :] == anchor_ids[:, None]
  return same & ~own & valid, ~same & valid


# ----------------------------------------------------------------------------- pair losses


def _num_anchors(positive: jax.Array, anchor_mask: jax.Array | None) -> jax.Array:
  return jnp.maximum(jnp.sum(_valid(anchor_mask, positive.shape[0])), 1)


def multi_similarity(similarity: jax.Array, positive: jax.Array, negative: jax.Array, *,
                     thresh: float = 0.5, margin: float = 0.1, alpha: float = 2.0,
                     beta: float = 40.0, anchor_mask: jax.Array | None = None) -> jax.Array:
  """Multi-Similarity loss with its pair mining (Wang et al., CVPR 2019; §2.4).

  Positives with ``s >= MS_IDENTICAL`` are dropped; negatives are kept if
  ``s + margin > min(pos)``, positives if ``s - margin < max(neg)``. An anchor
  with no kept positive or no kept negative contributes 0.

  Args:
    similarity: [B, N]; positive, negative: [B, N] bool from :func:`pair_masks`.
    anchor_mask: [B] bool, False for padding anchors (not counted in B).
  Returns:
    Scalar ``sum_i l_i / B``.
  """
  pos = positive & (similarity < MS_IDENTICAL)
  min_pos = jnp.min(jnp.where(pos, similarity, jnp.inf), axis=1, keepdims=True)
  max_neg = jnp.max(jnp.where(negative, similarity, -jnp.inf), axis=1, keepdims=True)
  kept_neg = negative & (similarity + margin > min_pos)
  kept_pos = pos & (similarity - margin < max_neg)
  pos_loss = _log1p_sum_exp(-alpha * (similarity - thresh), kept_pos, axis=1) / alpha
  neg_loss = _log1p_sum_exp(beta * (similarity - thresh), kept_neg, axis=1) / beta
  active = jnp.any(kept_pos, axis=1) & jnp.any(kept_neg, axis=1)
  return jnp.sum(jnp.where(active, pos_loss + neg_loss, 0.0)) / _num_anchors(positive, anchor_mask)


def contrastive(similarity: jax.Array, positive: jax.Array, negative: jax.Array, *,
                pos_margin: float = 0.8, neg_margin: float = 0.5,
                anchor_mask: jax.Array | None = None) -> jax.Array:
  """Contrastive loss on similarities (Hadsell et al. 2006, IAA's form; §2.4).

  Args:
    similarity: [B, N]; positive, negative: [B, N] bool.
  Returns:
    ``[sum_{pos, s<pm} (pm - s) + sum_{neg, s>nm} (s - nm)] / B``.
  """
  pos = jnp.where(positive & (similarity < pos_margin), pos_margin - similarity, 0.0)
  neg = jnp.where(negative & (similarity > neg_margin), similarity - neg_margin, 0.0)
  return (jnp.sum(pos) + jnp.sum(neg)) / _num_anchors(positive, anchor_mask)


def triplet(similarity: jax.Array, positive: jax.Array, negative: jax.Array, *,
            margin: float = 0.1, anchor_mask: jax.Array | None = None) -> jax.Array:
  """Triplet loss, every positive with the hardest negative (IAA Eq. 19; §2.4).

  Distances of normalised embeddings, ``d = sqrt(2 - 2 s)``.

  Args:
    similarity: [B, N]; positive, negative: [B, N] bool.
  Returns:
    Mean of ``[d_ij - min_k d_ik + margin]_+`` over valid (anchor, positive) pairs
    whose anchor has a negative.
  """
  del anchor_mask  # Padding anchors have empty masks already.
  distance = jnp.sqrt(jnp.maximum(2.0 - 2.0 * similarity, 1e-12))
  hardest_neg = jnp.min(jnp.where(negative, distance, jnp.inf), axis=1, keepdims=True)
  valid = positive & jnp.isfinite(hardest_neg)
  hinge = jnp.maximum(distance - jnp.where(valid, hardest_neg, 0.0) + margin, 0.0)
  return jnp.sum(jnp.where(valid, hinge, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


# ----------------------------------------------------------------------------- registry

PROXY_LOSSES: dict[str, Callable[..., jax.Array]] = {
    "proxy_anchor": proxy_anchor,
    "proxy_nca": proxy_nca,
}
PAIR_LOSSES: dict[str, Callable[..., jax.Array]] = {
    "multi_similarity": multi_similarity,
    "contrastive": contrastive,
    "triplet": triplet,
}
ALL_LOSSES = {**PROXY_LOSSES, **PAIR_LOSSES}


def get_loss(name: str) -> Callable[..., jax.Array]:
  """Looks a loss up by name; unknown names list the valid ones."""
  return names.lookup(ALL_LOSSES, name, "loss")

