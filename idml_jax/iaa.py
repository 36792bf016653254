"""Intra-class Adaptive Augmentation with neighbor correction (IAA; docs/algorithms.md §2).

Fu et al., "Intra-Class Adaptive Augmentation With Neighbor Correction for Deep Metric
Learning", TMM 2022.

The per-class Gaussian estimates are a pytree (:class:`ClassStats`) carried in the train
state. Every ``update_every`` epochs the whole training set is embedded and :func:`merge`
folds its per-class moments into the state (segment sums, no loop over classes);
:func:`neighbor_correction` then revises the covariance of few-sample classes from their
neighbors (:func:`update` does both). :func:`synthesize` draws
``z + sqrt(lambda_e) sqrt(Sigma) * eps`` from the noise it is given.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from idml_jax import names
from idml_jax.ops import squared_distances, top_k

# Row blocks of the tiled neighbor pass: ~1.5k classes keep each [block, half·block] tile
# under ~32 MB, above which XLA:CPU page-faults its buffers on every call (BENCHMARKS.md).
TILE_ROWS = 1536
# Below this many classes the dense C×C reference path is used (it is also the readable one).
DENSE_MAX_CLASSES = 2048
# Floors of divisions whose numerator is 0 whenever the denominator is (empty sums).
_TINY = 1e-30

# ``synthesize(root=...)``: the paper draws every copy from Sigma^(1/2); the official code
# re-applies the square root in its loop, so copy m (from 0) uses Sigma^(1/2^(m+1)).
# iaa.synthesis_root -> the root of Sigma that copy m (0-based) is drawn with.
SYNTHESIS_ROOTS = {"paper": "Sigma^(1/2) for every copy",
                   "official": "Sigma^(1/2^(m+1)), the official loop's repeated .sqrt()"}


@flax.struct.dataclass
class ClassStats:
  """Per-class diagonal Gaussian estimate of intra-class variation.

  Attributes:
    mean: [C, D] class means ``m_k`` of the raw embeddings.
    covariance: [C, D] diagonal covariances ``Sigma_k``.
    count: [C] running counts ``n_k``.
    pass_count: [C] counts ``b_k`` of the last pass merged (the neighbor correction's).
    synthesis_covariance: [C, D] covariance used to synthesise samples: the
      neighbor-corrected ``Sigma_k^cr`` where correction is on, else ``Sigma_k``.
  """

  mean: jax.Array
  covariance: jax.Array
  count: jax.Array
  pass_count: jax.Array
  synthesis_covariance: jax.Array


def init(num_classes: int, dim: int) -> ClassStats:
  """Empty per-class estimates: zero means, covariances and counts."""
  zeros = lambda *shape: jnp.zeros(shape, jnp.float32)  # Distinct buffers (donation).
  return ClassStats(zeros(num_classes, dim), zeros(num_classes, dim), zeros(num_classes),
                    zeros(num_classes), zeros(num_classes, dim))


def class_moments(embeddings: jax.Array, labels: jax.Array, num_classes: int,
                  mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-class count, mean and population variance of a pass over the data.

  Args:
    embeddings: [N, D] raw embeddings; labels: [N] int; mask: [N] bool (False = padding).
  Returns:
    ``(count [C], mean [C, D], variance [C, D])``, zero for absent classes.
  """
  w = jnp.ones(labels.shape, embeddings.dtype) if mask is None else mask.astype(embeddings.dtype)
  seg = functools.partial(jax.ops.segment_sum, segment_ids=labels, num_segments=num_classes)
  count = seg(w)
  safe = jnp.maximum(count, 1.0)[:, None]
  mean = seg(embeddings * w[:, None]) / safe
  variance = seg(jnp.square(embeddings - mean[labels]) * w[:, None]) / safe
  return count, mean, variance


def merge(stats: ClassStats, embeddings: jax.Array, labels: jax.Array, *,
          momentum: float = 0.2, mask: jax.Array | None = None,
          skip_singletons: bool = False) -> ClassStats:
  """Merges a pass over the data (embeddings [N, D], labels [N]) into the estimate (§2.1).

  With the pass's per-class count ``b``, mean ``a`` and variance ``v``:
  ``w = b / (b + n)``, floored at ``1 - momentum`` for present classes and 0 for absent
  ones; ``Sigma <- (1-w) Sigma + w v + w (1-w) (m - a)²``, ``m <- (1-w) m + w a``,
  ``n <- n + b``. ``pass_count`` becomes ``b``; ``synthesis_covariance`` the merged
  covariance (see :func:`neighbor_correction`).

  ``skip_singletons``: classes with one image in the pass keep their mean and covariance
  (they still count) — the official code's large-dataset path.
  """
  b, a, v = class_moments(embeddings, labels, stats.mean.shape[0], mask)
  merged = b > (1 if skip_singletons else 0)
  w = jnp.where(merged, jnp.maximum(b / jnp.maximum(b + stats.count, _TINY), 1.0 - momentum), 0.0)
  w = w[:, None]
  covariance = (1 - w) * stats.covariance + w * v + w * (1 - w) * jnp.square(stats.mean - a)
  mean = (1 - w) * stats.mean + w * a
  return ClassStats(mean, covariance, stats.count + b, b, jnp.copy(covariance))


def class_weight(b: jax.Array, beta: float = 0.1, tau: float = 40.0) -> jax.Array:
  """``alpha_k = 1 / (1 + log(1 + beta (b_k - 1)))`` if ``b_k < tau`` else 0 (§2.2).

  Classes absent from the pass (``b_k = 0``) are treated as singletons (alpha = 1).
  """
  b1 = jnp.maximum(b, 1.0)
  return jnp.where(b < tau, 1.0 / (1.0 + jnp.log1p(beta * (b1 - 1.0))), 0.0)


def _masked_extremes(sq: jax.Array, valid: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
  return (jnp.min(jnp.where(valid, sq, jnp.inf), axis=axis),
          jnp.max(jnp.where(valid, sq, -jnp.inf), axis=axis))


def _min_max_scaled(sq_at: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
  """Min-max normalised distances from squared ones (sqrt is monotonic). [b, k], [b], [b]."""
  lo, hi = jnp.sqrt(lo)[:, None], jnp.sqrt(hi)[:, None]
  span = hi - lo
  return jnp.where(span > 0, (jnp.sqrt(sq_at) - lo) / jnp.where(span > 0, span, 1.0), 0.0)


def _neighbor_weights(counts_nbr, sq_m, lo_m, hi_m, sq_c, lo_c, hi_c, valid, sigma_mean,
                       sigma_cov):
  """``w_j = b_j exp(-Dm~²/(2 sm²) - Dcv~²/(2 scv²))`` of each row's K neighbors. [b, K]."""
  dm, dc = _min_max_scaled(sq_m, lo_m, hi_m), _min_max_scaled(sq_c, lo_c, hi_c)
  w = counts_nbr * jnp.exp(-jnp.square(dm) / (2 * sigma_mean**2)
                           - jnp.square(dc) / (2 * sigma_cov**2))
  return jnp.where(valid, w, 0.0)


@functools.partial(jax.jit, static_argnames=("num_neighbors",))
def _dense_neighbor_covariance(mean: jax.Array, covariance: jax.Array, b: jax.Array, *,
                               num_neighbors: int, sigma_mean: float,
                               sigma_cov: float) -> jax.Array:
  """:func:`neighbor_covariance` with both C×C distance matrices in memory."""
  num_classes = mean.shape[0]
  sq_m = squared_distances(jnp.square(mean), jnp.square(mean))  # Dm², [C, C]
  sq_c = squared_distances(covariance, covariance)  # Dcv², [C, C]
  valid = (b > 1)[None, :] & ~jnp.eye(num_classes, dtype=bool)
  neg_sq, nbr = jax.lax.top_k(jnp.where(valid, -sq_m, -jnp.inf), min(num_neighbors, num_classes))
  at = lambda x: jnp.take_along_axis(x, nbr, axis=1)
  w = _neighbor_weights(b[nbr], at(sq_m), *_masked_extremes(sq_m, valid, 1), at(sq_c),
                         *_masked_extremes(sq_c, valid, 1), neg_sq > -jnp.inf, sigma_mean,
                         sigma_cov)
  total = jnp.sum(w, axis=1, keepdims=True)
  cov_nb = jnp.einsum("ck,ckd->cd", w, covariance[nbr]) / jnp.maximum(total, _TINY)
  return jnp.where(total > 0, cov_nb, covariance)  # No eligible neighbor: its own.


def neighbor_covariance(mean: jax.Array, covariance: jax.Array, counts: jax.Array, *,
                        num_neighbors: int = 25, sigma_mean: float = 1.0,
                        sigma_cov: float = 1.0, dense: bool | None = None) -> jax.Array:
  """``Sigma_k^nb``: covariance borrowed from each class's K nearest classes (§2.2).

  Neighbors are the classes ``j != k`` with ``b_j > 1`` nearest in
  ``Dm_kj = ||m_k² - m_j²||``; weights ``w_j = b_j exp(-Dm~²/(2 sm²) - Dcv~²/(2 scv²))``
  with ``Dcv_kj = ||Sigma_k - Sigma_j||`` and ``~`` a min-max normalisation over the
  valid entries of row k. A class with no eligible neighbor keeps its own covariance.

  Args:
    mean: [C, D]; covariance: [C, D]; counts: [C] counts ``b`` of the pass.
    dense: the C×C reference path (default: below ``DENSE_MAX_CLASSES`` classes) or the
      tiled one (same result, memory O(C · TILE_ROWS)).
  Returns:
    [C, D] neighbor covariance.
  """
  if dense is None:
    dense = mean.shape[0] <= DENSE_MAX_CLASSES
  fn = _dense_neighbor_covariance if dense else _tiled_neighbor_covariance
  return fn(mean, covariance, counts, num_neighbors=num_neighbors, sigma_mean=sigma_mean,
            sigma_cov=sigma_cov)


def _circulant_blocks(num_classes: int, block_size: int) -> tuple[int, int, int]:
  """``(num_blocks, block, half)`` for the symmetric pass of :func:`neighbor_covariance`.

  Row block ``i`` is compared with blocks ``i, i+1, …, i+half-1`` (mod ``num_blocks``);
  with an odd number of blocks every unordered pair of blocks meets exactly once.
  """
  nb = -(-num_classes // block_size)
  if nb > 1 and nb % 2 == 0:
    nb += 1
  return nb, -(-num_classes // nb), nb // 2 + 1


@functools.partial(jax.jit, static_argnames=("num_neighbors", "block_size"))
def _tiled_neighbor_covariance(mean: jax.Array, covariance: jax.Array, b: jax.Array, *,
                               num_neighbors: int, sigma_mean: float, sigma_cov: float,
                               block_size: int = TILE_ROWS) -> jax.Array:
  """:func:`neighbor_covariance` for many classes, never holding a C×C matrix.

  Both C×C distance matrices are symmetric, so each pair of classes is computed once:
  row block i meets the next ``half`` blocks (circulant order) and every [block, half·block]
  tile serves its rows (row minima/maxima, top-K) and, read down its columns, the
  classes of the other blocks. Memory is O(block × half·block), never C×C.

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
  eligible = pad(b > 1, False)  # Singletons and padding are nobody's neighbor.
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
    w = _neighbor_weights(b[jnp.minimum(ids, num_classes - 1)],
                           jnp.maximum(-sl(neg_sq_m), 0.0), sl(lo_m), sl(hi_m), sq_c, sl(lo_c),
                           sl(hi_c), sl(nbr_valid), sigma_mean, sigma_cov)
    total = jnp.sum(w, axis=1, keepdims=True)
    return jnp.einsum("bk,bkd->bd", w, cov_nbr) / jnp.maximum(total, _TINY), total[:, 0] > 0

  cov_nb, has_nbr = jax.lax.map(weighted, jnp.arange(nb))
  cov_nb = cov_nb.reshape(padded, dim)[:num_classes]
  has_nbr = has_nbr.reshape(padded)[:num_classes]
  # A class with no eligible neighbor keeps its own covariance here.
  return jnp.where(has_nbr[:, None], cov_nb, covariance)


def global_covariance(covariance: jax.Array, b: jax.Array) -> jax.Array:
  """``Sigma_g = sum_k b_k Sigma_k / sum_k b_k`` over classes with ``b_k > 1``. [C, D] -> [D]."""
  w = jnp.where(b > 1, b, 0.0)
  return jnp.sum(w[:, None] * covariance, axis=0) / jnp.maximum(jnp.sum(w), _TINY)


def neighbor_correction(stats: ClassStats, *, num_neighbors: int = 25, beta: float = 0.1,
                        gamma: float = 0.1, tau: float = 40.0, sigma_mean: float = 1.0,
                        sigma_cov: float = 1.0) -> jax.Array:
  """The corrected covariance ``Sigma^cr`` [C, D] (paper Eq. 15; §2.2), from the merged
  estimate and its ``pass_count``:
  ``Sigma_k^cr = (1 - alpha_k) Sigma_k + alpha_k [(1 - gamma) Sigma_k^nb + gamma Sigma_g]``.
  """
  counts = stats.pass_count
  alpha = class_weight(counts, beta, tau)[:, None]
  cov_nb = neighbor_covariance(stats.mean, stats.covariance, counts, num_neighbors=num_neighbors,
                               sigma_mean=sigma_mean, sigma_cov=sigma_cov)
  cov_g = global_covariance(stats.covariance, counts)[None, :]
  return (1 - alpha) * stats.covariance + alpha * ((1 - gamma) * cov_nb + gamma * cov_g)


def update(stats: ClassStats, embeddings: jax.Array, labels: jax.Array, *,
           mask: jax.Array | None = None, momentum: float = 0.2, correct: bool = False,
           skip_singletons: bool = False, **correction_kwargs) -> ClassStats:
  """One estimate update from a whole-training-set pass: :func:`merge`, then (``correct``)
  :func:`neighbor_correction` stored as the synthesis covariance.

  ``correct`` is the paper's default for > 1000 classes; off, synthesis uses the raw
  estimate, as the official code does.
  """
  stats = merge(stats, embeddings, labels, momentum=momentum, mask=mask,
                skip_singletons=skip_singletons)
  if correct:
    stats = stats.replace(synthesis_covariance=neighbor_correction(stats, **correction_kwargs))
  return stats


def synthesis_noise(key: jax.Array, num: int, batch_size: int, dim: int) -> jax.Array:
  """[num, B, D] standard-normal noise, one block per synthetic copy."""
  return jax.random.normal(key, (num, batch_size, dim), jnp.float32)


def synthesize(noise: jax.Array, embeddings: jax.Array, labels: jax.Array,
               covariance: jax.Array, *, lam: float | jax.Array,
               root: str = "paper") -> tuple[jax.Array, jax.Array]:
  """``num`` synthetic samples per original: ``z + sqrt(lam) Sigma_y^(1/2) * eps`` (§2.3).

  Args:
    noise: [num, B, D] ``eps`` (:func:`synthesis_noise`).
    embeddings: [B, D] raw embeddings ``z``; labels: [B].
    covariance: [C, D] diagonal covariances to sample from (``stats.synthesis_covariance``).
    lam: ``lambda_e`` from :func:`strength_schedule`.
    root: ``paper`` (Sigma^(1/2) for every copy) or ``official`` (copy m: Sigma^(1/2^(m+1))).
  Returns:
    ``(synthetic, synthetic_labels)``: [num B, D] and [num B], copy ``m`` of sample ``i`` at
    ``m B + i``.
  """
  names.lookup(SYNTHESIS_ROOTS, root, "synthesis root")
  num = noise.shape[0]
  var = jnp.maximum(covariance[labels], 0.0)[None]  # [1, B, D]
  if root == "paper":
    std = jnp.sqrt(var)
  else:  # Sigma^(1/2), Sigma^(1/4), ... as the official loop's repeated .sqrt().
    std = var ** (0.5 ** jnp.arange(1, num + 1, dtype=var.dtype))[:, None, None]
  z_syn = embeddings[None] + jnp.sqrt(lam) * std * noise
  return z_syn.reshape(-1, embeddings.shape[1]), jnp.tile(labels, num)


def strength_schedule(strength: float, epoch: int, total_epochs: int) -> float:
  """``lambda_e`` for epoch ``epoch`` (counted from 0): ``lambda`` × 1.0 / 0.9 / 0.75 / 0.6 at
  training progress ``(epoch + 1) / total`` <= 0.4 / 0.6 / 0.8 / after — the paper's epochs
  counted from 1, as the official ``lamda_epoch`` counts them. A host-side schedule (Python
  numbers, compared exactly in integers): the train loop never reads a device value for it."""
  progress_tenths = 10 * (int(epoch) + 1)  # 10 (epoch + 1) <= 4 total  <=>  r <= 0.4
  for bound, factor in ((4, 1.0), (6, 0.9), (8, 0.75)):
    if progress_tenths <= bound * total_epochs:
      return strength * factor
  return strength * 0.6
