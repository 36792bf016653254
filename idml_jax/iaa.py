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
import numpy as np

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


def _circulant_blocks(num_classes: int, block_size: int) -> tuple[int, int, int]:
  """``(num_blocks, block, half)`` for the symmetric pass of :func:`neighbor_covariance`.

  Row block ``i`` is compared with blocks ``i, i+1, …, i+half-1`` (mod ``num_blocks``);
  with an odd number of blocks every unordered pair of blocks meets exactly once.
  """
  nb = -(-num_classes // block_size)
  if nb > 1 and nb % 2 == 0:
    nb += 1
  return nb, -(-num_classes // nb), nb // 2 + 1


def _masked_extremes(sq: jax.Array, valid: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
  return (jnp.min(jnp.where(valid, sq, jnp.inf), axis=axis),
          jnp.max(jnp.where(valid, sq, -jnp.inf), axis=axis))


def _normalise(sq_at: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
  """Min-max normalised distances from squared ones (sqrt is monotonic). [b, k], [b], [b]."""
  lo, hi = jnp.sqrt(lo)[:, None], jnp.sqrt(hi)[:, None]
  span = hi - lo
  return jnp.where(span > 0, (jnp.sqrt(sq_at) - lo) / jnp.where(span > 0, span, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=("num_neighbors", "block_size"))
def neighbor_covariance(mean: jax.Array, covariance: jax.Array, b: jax.Array, *,
                        num_neighbors: int = 25, sigma_mean: float = 1.0,
                        sigma_cov: float = 1.0, block_size: int = 1536) -> jax.Array:
  """``Sigma_k^nb``: covariance borrowed from each class's K nearest classes (§2.2).

  Neighbours are the classes ``j != k`` with ``b_j > 1`` nearest in
  ``Dm_kj = ||m_k² - m_j²||``; weights ``w_j = b_j exp(-Dm~²/(2 sm²) - Dcv~²/(2 scv²))``
  with ``Dcv_kj = ||Sigma_k - Sigma_j||`` and ``~`` a min-max normalisation over the
  valid entries of row k.

  Both C×C distance matrices are symmetric, so each pair of classes is computed once:
  row block i meets the next ``half`` blocks (circulant order) and every [block, half·block]
  tile serves its rows (row minima/maxima, top-K) and, read down its columns, the
  classes of the other blocks. Memory is O(block × half·block), never C×C.

  Args:
    mean: [C, D]; covariance: [C, D]; b: [C] counts of the pass.
  Returns:
    [C, D] neighbour covariance (the global covariance-free part of Eq. 15).
  """
  num_classes, dim = mean.shape
  nb, block, half = _circulant_blocks(num_classes, block_size)
  padded = nb * block
  width = half * block
  k = min(num_neighbors, num_classes)
  k_row, k_col = min(k, width), min(k, block)
  pad = lambda x, v=0.0: jnp.concatenate(
      [x, jnp.full((padded - num_classes,) + x.shape[1:], v, x.dtype)])
  mean_sq, cov = pad(jnp.square(mean)), pad(covariance)
  eligible = pad(b > 1, False)  # Singletons and padding are nobody's neighbour.
  twice = lambda x: jnp.concatenate([x, x])  # Columns wrap around.
  mean_sq2, cov2, eligible2 = twice(mean_sq), twice(cov), twice(eligible)
  ids2 = twice(jnp.arange(padded))

  def tile(i):
    r0 = i * block
    rows = r0 + jnp.arange(block)
    col_ids = jax.lax.dynamic_slice_in_dim(ids2, r0, width)
    sq_m = squared_distances(jax.lax.dynamic_slice_in_dim(mean_sq, r0, block),
                             jax.lax.dynamic_slice_in_dim(mean_sq2, r0, width))
    sq_c = squared_distances(jax.lax.dynamic_slice_in_dim(cov, r0, block),
                             jax.lax.dynamic_slice_in_dim(cov2, r0, width))
    distinct = rows[:, None] != col_ids[None, :]
    # Rows of this block against all its columns.
    valid = distinct & jax.lax.dynamic_slice_in_dim(eligible2, r0, width)[None, :]
    nbr_m, pos = top_k(jnp.where(valid, -sq_m, -jnp.inf), k_row)
    row = (*_masked_extremes(sq_m, valid, 1), *_masked_extremes(sq_c, valid, 1),
           nbr_m, col_ids[pos])
    # Columns of the other blocks against this block's rows.
    valid = (distinct & jax.lax.dynamic_slice_in_dim(eligible, r0, block)[:, None])[:, block:]
    nbr_m, pos = top_k(jnp.where(valid, -sq_m[:, block:], -jnp.inf), k_col, axis=0)
    col = (*_masked_extremes(sq_m[:, block:], valid, 0),
           *_masked_extremes(sq_c[:, block:], valid, 0), nbr_m, r0 + pos)
    return row, col

  row, col = jax.lax.map(tile, jnp.arange(nb))
  lo_m, hi_m, lo_c, hi_c, cand, cand_ids = (r.reshape(padded, *r.shape[2:]) for r in row)
  if half > 1:
    # Class c of block j is a column of block (j - t) mod nb at offset t = 1..half-1.
    c = np.arange(padded)[:, None]
    t = np.arange(1, half)[None, :]
    src = ((c // block - t) % nb, t - 1, c % block)
    col = [x.reshape(nb, half - 1, block, *x.shape[2:])[src] for x in col]  # [C', half-1, …]
    lo_m, lo_c = jnp.minimum(lo_m, col[0].min(1)), jnp.minimum(lo_c, col[2].min(1))
    hi_m, hi_c = jnp.maximum(hi_m, col[1].max(1)), jnp.maximum(hi_c, col[3].max(1))
    cand = jnp.concatenate([cand, col[4].reshape(padded, -1)], axis=1)
    cand_ids = jnp.concatenate([cand_ids, col[5].reshape(padded, -1)], axis=1)
  # At least k candidates: where k_row or k_col were capped, they cover whole tiles.
  neg_sq_m, pos = jax.lax.top_k(cand, k)
  nbr = jnp.take_along_axis(cand_ids, pos, axis=1)  # [C', k]
  nbr_valid = neg_sq_m > -jnp.inf

  def weighted(i):
    sl = lambda x: jax.lax.dynamic_slice_in_dim(x, i * block, block)
    ids = sl(nbr)
    cov_nbr = cov[ids]  # [block, k, D]
    sq_c = jnp.sum(jnp.square(sl(cov)[:, None, :] - cov_nbr), axis=-1)
    dm = _normalise(jnp.maximum(-sl(neg_sq_m), 0.0), sl(lo_m), sl(hi_m))
    dc = _normalise(sq_c, sl(lo_c), sl(hi_c))
    w = b[jnp.minimum(ids, num_classes - 1)] * jnp.exp(
        -jnp.square(dm) / (2 * sigma_mean**2) - jnp.square(dc) / (2 * sigma_cov**2))
    w = jnp.where(sl(nbr_valid), w, 0.0)
    total = jnp.sum(w, axis=1, keepdims=True)
    return jnp.einsum("bk,bkd->bd", w, cov_nbr) / jnp.maximum(total, 1e-30), total[:, 0] > 0

  cov_nb, has_nbr = jax.lax.map(weighted, jnp.arange(nb))
  cov_nb = cov_nb.reshape(padded, dim)[:num_classes]
  has_nbr = has_nbr.reshape(padded)[:num_classes]
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
