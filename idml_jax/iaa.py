"""Intra-class Adaptive Augmentation with neighbor correction (IAA).

Fu et al., "Intra-Class Adaptive Augmentation With Neighbor Correction for Deep
Metric Learning", TMM 2022; ALGORITHMS.md §2.1–2.3.

The per-class Gaussian estimates are a pytree (:class:`ClassStats`) carried in the
train state. Every ``update_every`` epochs the whole training set is embedded and
:func:`update` merges its per-class moments into the state (segment sums, no loop
over classes) and, where enabled, applies the neighbor correction for few-sample
classes. :func:`synthesize` then draws ``z + sqrt(lambda_e) sqrt(Sigma) * eps``.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

from idml_jax.similarity import squared_distances
from idml_jax.top_k import top_k


@flax.struct.dataclass
class ClassStats:
  """Per-class diagonal Gaussian estimate of intra-class variation.

  Attributes:
    mean: [C, D] class means ``m_k`` of the raw embeddings.
    covariance: [C, D] diagonal covariances ``Sigma_k``.
    count: [C] running counts ``n_k``.
    synthesis_covariance: [C, D] covariance used to synthesise samples: the
      neighbor-corrected ``Sigma_k^cr`` where correction is on, else ``Sigma_k``.
  """

  mean: jax.Array
  covariance: jax.Array
  count: jax.Array
  synthesis_covariance: jax.Array

  @classmethod
  def create(cls, num_classes: int, dim: int) -> ClassStats:
    zeros = lambda: jnp.zeros((num_classes, dim), jnp.float32)  # Distinct buffers (donation).
    return cls(zeros(), zeros(), jnp.zeros((num_classes,), jnp.float32), zeros())


def class_moments(z: jax.Array, labels: jax.Array, num_classes: int,
                  mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-class count, mean and population variance of a pass over the data.

  Args:
    z: [N, D] raw embeddings; labels: [N] int; mask: [N] bool (False = padding).
  Returns:
    ``(b, a, v)``: counts [C], means [C, D], variances [C, D] (zero for absent classes).
  """
  w = jnp.ones(labels.shape, z.dtype) if mask is None else mask.astype(z.dtype)
  seg = functools.partial(jax.ops.segment_sum, segment_ids=labels, num_segments=num_classes)
  b = seg(w)
  safe_b = jnp.maximum(b, 1.0)[:, None]
  a = seg(z * w[:, None]) / safe_b
  v = seg(jnp.square(z - a[labels]) * w[:, None]) / safe_b
  return b, a, v


def init(num_classes: int, dim: int) -> ClassStats:
  """Empty per-class estimates: zero means, covariances and counts."""
  return ClassStats.create(num_classes, dim)


def merge(stats: ClassStats, embeddings: jax.Array, labels: jax.Array, *,
          momentum: float = 0.2, mask: jax.Array | None = None) -> ClassStats:
  """Merges a pass over the data (embeddings [N, D], labels [N]) into the estimate (§2.1)."""
  b, a, v = class_moments(embeddings, labels, stats.mean.shape[0], mask)
  return merge_moments(stats, b, a, v, momentum)


def merge_moments(stats: ClassStats, b: jax.Array, a: jax.Array, v: jax.Array,
                  momentum: float = 0.2) -> ClassStats:
  """Merges a pass's moments into the running estimate (§2.1).

  ``w = b / (b + n)``, floored at ``1 - momentum`` for present classes and 0 for
  absent ones; ``Sigma <- (1-w) Sigma + w v + w (1-w) (m - a)²``,
  ``m <- (1-w) m + w a``, ``n <- n + b``. ``synthesis_covariance`` is set to the
  merged covariance (see :func:`neighbor_correction`).
  """
  present = b > 0
  w = jnp.where(present, jnp.maximum(b / jnp.maximum(b + stats.count, 1e-12), 1.0 - momentum), 0.0)
  w = w[:, None]
  covariance = (1 - w) * stats.covariance + w * v + w * (1 - w) * jnp.square(stats.mean - a)
  mean = (1 - w) * stats.mean + w * a
  return ClassStats(mean, covariance, stats.count + b, jnp.copy(covariance))


def class_weight(b: jax.Array, beta: float = 0.1, tau: float = 40.0) -> jax.Array:
  """``alpha_k = 1 / (1 + log(1 + beta (b_k - 1)))`` if ``b_k < tau`` else 0 (§2.2).

  Classes absent from the pass (``b_k = 0``) are treated as singletons (alpha = 1).
  """
  b1 = jnp.maximum(b, 1.0)
  return jnp.where(b < tau, 1.0 / (1.0 + jnp.log1p(beta * (b1 - 1.0))), 0.0)


def _normalised_at(sq: jax.Array, valid: jax.Array, nbr: jax.Array) -> jax.Array:
  """Min-max normalised distances (over the valid entries of each row) at columns ``nbr``.

  Works on squared distances: sqrt is monotonic, so only the row's extremes and the
  gathered entries are square-rooted. [b, C], [b, C], [b, k] -> [b, k].
  """
  lo = jnp.sqrt(jnp.min(jnp.where(valid, sq, jnp.inf), axis=1, keepdims=True))
  hi = jnp.sqrt(jnp.max(jnp.where(valid, sq, -jnp.inf), axis=1, keepdims=True))
  d = jnp.sqrt(jnp.take_along_axis(sq, nbr, axis=1))
  span = hi - lo
  return jnp.where(span > 0, (d - lo) / jnp.where(span > 0, span, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=("num_neighbors", "block_size"))
def neighbor_covariance(mean: jax.Array, covariance: jax.Array, b: jax.Array, *,
                        num_neighbors: int = 25, sigma_mean: float = 1.0,
                        sigma_cov: float = 1.0, block_size: int = 1024) -> jax.Array:
  """``Sigma_k^nb``: covariance borrowed from each class's K nearest classes (§2.2).

  Neighbours are the classes ``j != k`` with ``b_j > 1`` nearest in
  ``Dm_kj = ||m_k² - m_j²||``; weights ``w_j = b_j exp(-Dm~²/(2 sm²) - Dcv~²/(2 scv²))``
  with ``Dcv_kj = ||Sigma_k - Sigma_j||`` and ``~`` a min-max normalisation over the
  valid entries of row k. Rows are processed in blocks, so memory is O(block × C).

  Args:
    mean: [C, D]; covariance: [C, D]; b: [C] counts of the pass.
  Returns:
    [C, D] neighbour covariance (the global covariance-free part of Eq. 15).
  """
  num_classes = mean.shape[0]
  k = min(num_neighbors, num_classes)
  mean_sq = jnp.square(mean)
  eligible = b > 1
  pad = (-num_classes) % block_size if num_classes > block_size else 0
  block = min(block_size, num_classes)
  rows = jnp.arange(num_classes + pad)

  def one_block(start):
    idx = jax.lax.dynamic_slice_in_dim(rows, start, block)
    safe = jnp.minimum(idx, num_classes - 1)
    sq_mean = squared_distances(mean_sq[safe], mean_sq)  # [block, C]
    sq_cov = squared_distances(covariance[safe], covariance)
    valid = eligible[None, :] & (safe[:, None] != jnp.arange(num_classes)[None, :])
    _, nbr = top_k(jnp.where(valid, -sq_mean, -jnp.inf), k)  # [block, k]
    nbr_valid = jnp.take_along_axis(valid, nbr, axis=1)
    dm = _normalised_at(sq_mean, valid, nbr)
    dc = _normalised_at(sq_cov, valid, nbr)
    w = b[nbr] * jnp.exp(-jnp.square(dm) / (2 * sigma_mean**2)
                         - jnp.square(dc) / (2 * sigma_cov**2))
    w = jnp.where(nbr_valid, w, 0.0)
    total = jnp.sum(w, axis=1, keepdims=True)
    cov_nb = jnp.einsum("bk,bkd->bd", w, covariance[nbr]) / jnp.maximum(total, 1e-30)
    return cov_nb, total[:, 0] > 0

  starts = jnp.arange(0, num_classes + pad, block)
  cov_nb, has_nbr = jax.lax.map(one_block, starts)
  cov_nb = cov_nb.reshape(-1, mean.shape[1])[:num_classes]
  has_nbr = has_nbr.reshape(-1)[:num_classes]
  # A class with no eligible neighbour keeps its own covariance here.
  return jnp.where(has_nbr[:, None], cov_nb, covariance)


def global_covariance(covariance: jax.Array, b: jax.Array) -> jax.Array:
  """``Sigma_g = sum_k b_k Sigma_k / sum_k b_k`` over classes with ``b_k > 1``. [C, D] -> [D]."""
  w = jnp.where(b > 1, b, 0.0)
  return jnp.sum(w[:, None] * covariance, axis=0) / jnp.maximum(jnp.sum(w), 1e-30)


def neighbor_correction(stats: ClassStats, counts: jax.Array, *, num_neighbors: int = 25,
                        beta: float = 0.1, gamma: float = 0.1, tau: float = 40.0,
                        sigma_m: float = 1.0, sigma_cv: float = 1.0) -> jax.Array:
  """The corrected covariance ``Sigma^cr`` [C, D] (paper Eq. 15; §2.2).

  ``Sigma_k^cr = (1 - alpha_k) Sigma_k + alpha_k [(1 - gamma) Sigma_k^nb + gamma Sigma_g]``.

  Args:
    stats: the merged estimate.
    counts: [C] per-class counts ``b_k`` of the pass just merged.
  """
  alpha = class_weight(counts, beta, tau)[:, None]
  cov_nb = neighbor_covariance(stats.mean, stats.covariance, counts,
                               num_neighbors=num_neighbors, sigma_mean=sigma_m,
                               sigma_cov=sigma_cv)
  cov_g = global_covariance(stats.covariance, counts)[None, :]
  return (1 - alpha) * stats.covariance + alpha * ((1 - gamma) * cov_nb + gamma * cov_g)


def update(stats: ClassStats, z: jax.Array, labels: jax.Array, *, mask: jax.Array | None = None,
           momentum: float = 0.2, correct: bool = False, **correction_kwargs) -> ClassStats:
  """One estimate update from a whole-training-set pass: merge, then correction.

  Args:
    z: [N, D] raw embeddings of the training set; labels: [N]; mask: [N] bool.
    correct: apply the neighbor correction (the paper; default on for > 1000
      classes in the configs). Off reproduces the official code's sampling.
  """
  b, a, v = class_moments(z, labels, stats.mean.shape[0], mask)
  stats = merge_moments(stats, b, a, v, momentum)
  if correct:
    stats = stats.replace(synthesis_covariance=neighbor_correction(stats, b,
                                                                   **correction_kwargs))
  return stats


def synthesize(key: jax.Array, embeddings: jax.Array, labels: jax.Array, covariance: jax.Array,
               *, lam: float | jax.Array, num: int = 3) -> tuple[jax.Array, jax.Array]:
  """Draws ``num`` synthetic samples per original: ``z + sqrt(lam) sqrt(Sigma_y) * eps`` (§2.3).

  Args:
    key: PRNG key.
    embeddings: [B, D] raw embeddings ``z``; labels: [B].
    covariance: [C, D] diagonal covariances to sample from (``stats.synthesis_covariance``).
    lam: ``lambda_e`` from :func:`strength_schedule`.
  Returns:
    ``(synthetic, synthetic_labels)``: [num B, D] and [num B], copy ``m`` of sample ``i`` at
    ``m B + i``.
  """
  std = jnp.sqrt(jnp.maximum(covariance[labels], 0.0))
  eps = jax.random.normal(key, (num,) + embeddings.shape, embeddings.dtype)
  z_syn = embeddings[None] + jnp.sqrt(lam) * std[None] * eps
  return z_syn.reshape(-1, embeddings.shape[1]), jnp.tile(labels, num)


def strength_schedule(strength: float, epoch: float | jax.Array,
                      total_epochs: float) -> jax.Array:
  """``lambda_e``: ``lambda`` × 1.0 / 0.9 / 0.75 / 0.6 at progress <= 0.4 / 0.6 / 0.8 / after."""
  r = jnp.asarray(epoch, jnp.float32) / total_epochs
  factor = jnp.where(r <= 0.4, 1.0, jnp.where(r <= 0.6, 0.9, jnp.where(r <= 0.8, 0.75, 0.6)))
  return strength * factor
