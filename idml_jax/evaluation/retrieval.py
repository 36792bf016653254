"""Retrieval metrics: Recall@K, R-Precision and MAP@R (ALGORITHMS.md §3).

Everything is computed from one quantity: for each query, the **rank** (0-based
position among all gallery items, the query itself excluded) of each of its
relevant items, sorted best first. Then, with ``R`` the number of relevant items,

* Recall@K = [rank of the best relevant item < K],
* R-Precision = #{relevant items with rank < R} / R,
* MAP@R = (1/R) sum_{i: rank_i < R} (i + 1) / (rank_i + 1).

Two ways to get the ranks, one interface (``backend``):

* ``exact`` (default): no top-k at all. Each relevant item's rank is the number of
  gallery items that score above it, counted block by block over the similarity
  matrix in JAX (symmetric blocks computed once in all-vs-all mode). Its cost is the
  matmul plus a cheap comparison, and Recall@1000 costs no more than Recall@1.
* ``jax``, ``scann``, ``scann_ah``: a kNN search (:mod:`idml_jax.evaluation.knn`)
  for ``max(max K, largest R)`` neighbours, ranks read off the neighbour list.

Queries with no relevant item count as misses in Recall@K and are excluded from
R-Precision and MAP@R. Ties are counted optimistically by ``exact`` and broken by
index by the kNN back-ends (they agree whenever scores are distinct).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from idml_jax.evaluation import knn
from idml_jax.top_k import candidates

RETRIEVAL_BACKENDS = ("exact",) + tuple(knn.SEARCH_BACKENDS)
_NO_RANK = np.iinfo(np.int32).max


def _check_inputs(emb: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
  emb = np.asarray(emb)
  labels = np.asarray(labels)
  if emb.ndim != 2:
    raise ValueError(f"{name} embeddings must be [N, D]; got shape {emb.shape}.")
  if labels.shape != (emb.shape[0],):
    raise ValueError(f"{name} labels must be [N] = [{emb.shape[0]}]; got shape {labels.shape}.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name} labels must be integers; got {labels.dtype}.")
  if labels.size and labels.min() < 0:
    raise ValueError(f"{name} labels must be >= 0; got {labels.min()}.")
  if not np.all(np.isfinite(emb)):
    bad = int(np.sum(~np.all(np.isfinite(emb), axis=1)))
    raise ValueError(f"{name} embeddings contain NaN/inf in {bad} rows; check the model "
                     "(did training diverge?) before evaluating.")
  return emb.astype(np.float32), labels.astype(np.int64)


def l2_normalize_np(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def relevant_indices(query_labels: np.ndarray, gallery_labels: np.ndarray,
                     all_vs_all: bool) -> np.ndarray:
  """[Q, P] gallery indices of each query's relevant items, padded with -1.

  In all-vs-all mode (gallery = queries) the query itself is not relevant.
  """
  order = np.argsort(gallery_labels, kind="stable")
  classes, starts, counts = np.unique(gallery_labels[order], return_index=True,
                                      return_counts=True)
  pos = np.searchsorted(classes, query_labels)
  pos = np.minimum(pos, len(classes) - 1)
  present = classes[pos] == query_labels
  start = np.where(present, starts[pos], 0)
  count = np.where(present, counts[pos], 0)
  width = int(counts.max()) - (1 if all_vs_all else 0)
  t = np.arange(max(width, 1))[None, :]
  if all_vs_all:
    # Position of the query inside its class block; skip it.
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    own = inv - start
    t = t + (t >= own[:, None])
    n_rel = count - 1
  else:
    n_rel = count
  valid = (np.arange(max(width, 1))[None, :] < n_rel[:, None])
  idx = order[np.minimum(start[:, None] + t, len(order) - 1)]
  return np.where(valid, idx, -1)


@jax.jit
def _relevant_scores(q: jax.Array, gallery: jax.Array, rel: jax.Array) -> jax.Array:
  """[bq, D], [N, D], [bq, P] -> [bq, P] scores of the relevant items (-inf padding)."""
  s = jnp.einsum("qd,qpd->qp", q, gallery[jnp.maximum(rel, 0)])
  return jnp.where(rel >= 0, s, -jnp.inf)


def _accumulate(s, best, top_neg, axis):
  """Adds one similarity block to a query block's accumulators along ``axis``.

  ``s`` holds -inf at same-class pairs (and the query itself), so only other-class
  items remain. ``count``: other-class items scoring above the best relevant item
  (the exact rank of the first hit, for Recall@K with any K). ``top_neg``: the P best
  other-class scores so far, enough to rank every relevant item that can lie within
  the top R <= P.
  """
  b = best[:, None] if axis == 1 else best[None, :]
  count = jnp.sum(s > b, axis=axis, dtype=jnp.int32)
  k = top_neg.shape[1]
  merged = jnp.concatenate([top_neg, candidates(s, k, axis)], axis=1)
  return count, jax.lax.top_k(merged, k)[0]


@functools.partial(jax.jit, static_argnames=("symmetric",), donate_argnums=(2, 3, 7, 8))
def _block_update(qa, la, count_a, top_a, best_a, qb, lb, count_b, top_b, best_b, col_bias,
                  symmetric: bool):
  """One block of the similarity matrix: queries ``qa`` (labels ``la``) against gallery
  items ``qb`` (``lb``) and, if ``symmetric``, the transpose. ``col_bias`` is -inf on
  padded columns."""
  s = jnp.where(la[:, None] == lb[None, :], -jnp.inf, qa @ qb.T + col_bias[None, :])
  c, top_a = _accumulate(s, best_a, top_a, axis=1)
  count_a = count_a + c
  if symmetric:
    c, top_b = _accumulate(s, best_b, top_b, axis=0)
    count_b = count_b + c
  return count_a, top_a, count_b, top_b


def _pad_rows(x: np.ndarray, n: int, value) -> np.ndarray:
  pad = [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
  return np.pad(x, pad, constant_values=value)


def exact_relevant_ranks(query: np.ndarray, query_labels: np.ndarray,
                         gallery: np.ndarray | None = None,
                         gallery_labels: np.ndarray | None = None,
                         block_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Ranks of each query's relevant items, exactly, without a top-K over the gallery.

  One pass over the similarity matrix in ``block_size`` squares (in all-vs-all mode
  only the upper triangle: each block serves its rows and, transposed, its columns).

  Args:
    query: [Q, D] L2-normalised; query_labels: [Q].
    gallery, gallery_labels: [N, D], [N]; None for all-vs-all (query excluded).
  Returns:
    ``(ranks, n_relevant)``: [Q, P] int ranks sorted ascending (padding = int32 max;
    ranks >= P are only exact for the first relevant item) and [Q] counts.
  """
  all_vs_all = gallery is None
  if all_vs_all:
    gallery, gallery_labels = query, query_labels
  rel = relevant_indices(query_labels, gallery_labels, all_vs_all)
  nq, ng = query.shape[0], gallery.shape[0]
  width = rel.shape[1]
  block = min(block_size, -(-max(nq, ng) // 32) * 32)
  nqp, ngp = -(-nq // block) * block, -(-ng // block) * block
  q = jnp.asarray(_pad_rows(query, nqp, 0.0))
  g = q if all_vs_all else jnp.asarray(_pad_rows(gallery, ngp, 0.0))
  col_bias = jnp.where(jnp.arange(ngp) < ng, 0.0, -jnp.inf)
  # Same-class pairs (the relevant items and the query itself) are masked by label;
  # padding rows get label -1, which no real item has.
  lq = jnp.asarray(_pad_rows(query_labels, nqp, -1))
  lg = lq if all_vs_all else jnp.asarray(_pad_rows(gallery_labels, ngp, -1))
  rel_p = jnp.asarray(_pad_rows(rel, nqp, -1))
  nb_q, nb_g = nqp // block, ngp // block
  sl = lambda i: slice(i * block, (i + 1) * block)
  rel_scores = [-jnp.sort(-_relevant_scores(q[sl(i)], g, rel_p[sl(i)]), axis=1)
                for i in range(nb_q)]  # Best first.
  best = [r[:, 0] for r in rel_scores]
  counts = [jnp.zeros((block,), jnp.int32) for _ in range(nb_q)]
  tops = [jnp.full((block, width), -jnp.inf, jnp.float32) for _ in range(nb_q)]
  for i in range(nb_q):
    for j in range(i if all_vs_all else 0, nb_g):
      sym = all_vs_all and j != i
      out = _block_update(q[sl(i)], lq[sl(i)], counts[i], tops[i], best[i],
                          g[sl(j)], lg[sl(j)], counts[j] if sym else None,
                          tops[j] if sym else None, best[j] if sym else None,
                          col_bias[sl(j)], sym)
      counts[i], tops[i] = out[0], out[1]
      if sym:
        counts[j], tops[j] = out[2], out[3]
  rel_scores = np.concatenate(jax.device_get(rel_scores))[:nq]
  counts = np.concatenate(jax.device_get(counts))[:nq]
  tops = np.concatenate(jax.device_get(tops))[:nq]
  n_rel = np.sum(rel >= 0, axis=1)
  # Other-class items above each relevant item, capped at P (enough for ranks < R <= P).
  above = np.sum(tops[:, None, :] > rel_scores[:, :, None], axis=2)
  above[:, 0] = counts
  ranks = above + np.arange(width)[None, :]
  ranks = np.where(np.arange(width)[None, :] < n_rel[:, None], ranks, _NO_RANK)
  return ranks.astype(np.int64), n_rel


def ranks_from_neighbors(neighbor_labels: np.ndarray, query_labels: np.ndarray,
                         n_relevant: np.ndarray, width: int) -> np.ndarray:
  """[Q, k] neighbour labels -> [Q, width] sorted ranks of relevant items found."""
  hit = neighbor_labels == query_labels[:, None]
  pos = np.where(hit, np.arange(hit.shape[1])[None, :], _NO_RANK)
  ranks = np.sort(pos, axis=1)[:, :width]
  if ranks.shape[1] < width:
    ranks = np.pad(ranks, ((0, 0), (0, width - ranks.shape[1])), constant_values=_NO_RANK)
  keep = np.arange(width)[None, :] < n_relevant[:, None]
  return np.where(keep, ranks, _NO_RANK)


def metrics_from_ranks(ranks: np.ndarray, n_relevant: np.ndarray,
                       ks=(1, 2, 4, 8)) -> dict[str, float]:
  """Recall@K, R-Precision and MAP@R from sorted relevant ranks (see module doc)."""
  has_rel = n_relevant > 0
  out = {f"recall@{k}": float(np.mean(has_rel & (ranks[:, 0] < k))) for k in ks}
  r = np.maximum(n_relevant, 1)[:, None]
  i = np.arange(ranks.shape[1])[None, :]
  in_r = (ranks < r) & (i < n_relevant[:, None])
  rp = np.sum(in_r, axis=1) / r[:, 0]
  ap = np.sum(np.where(in_r, (i + 1) / (ranks.astype(np.float64) + 1), 0.0), axis=1) / r[:, 0]
  out["r_precision"] = float(np.mean(rp[has_rel])) if has_rel.any() else 0.0
  out["map@r"] = float(np.mean(ap[has_rel])) if has_rel.any() else 0.0
  return out


def retrieval_metrics(query: np.ndarray, query_labels: np.ndarray,
                      gallery: np.ndarray | None = None,
                      gallery_labels: np.ndarray | None = None, *,
                      ks=(1, 2, 4, 8), backend: str = "exact",
                      normalize: bool = True, block_size: int = 4096,
                      per_query: bool = False):
  """Recall@K, R-Precision and MAP@R of cosine retrieval.

  Args:
    query: [Q, D] embeddings; query_labels: [Q] int.
    gallery, gallery_labels: [N, D], [N] for query→gallery (In-Shop); None for
      all-vs-all with each query excluded from its own neighbours.
    ks: the K of Recall@K.
    backend: one of ``RETRIEVAL_BACKENDS``.
    normalize: L2-normalise the embeddings first.
    per_query: also return each query's first-hit rank ([Q] int; int32 max when the
      query has no relevant item).
  Returns:
    ``{"recall@K": ..., "r_precision": ..., "map@r": ...}`` (and the ranks if per_query).
  """
  if backend not in RETRIEVAL_BACKENDS:
    raise ValueError(f"Unknown retrieval backend {backend!r}; valid: {RETRIEVAL_BACKENDS}.")
  query, query_labels = _check_inputs(query, query_labels, "query")
  all_vs_all = gallery is None
  if not all_vs_all:
    if gallery_labels is None:
      raise ValueError("gallery_labels are required with a gallery.")
    gallery, gallery_labels = _check_inputs(gallery, gallery_labels, "gallery")
    if gallery.shape[1] != query.shape[1]:
      raise ValueError(f"query dim {query.shape[1]} != gallery dim {gallery.shape[1]}.")
  n_gallery = query.shape[0] - 1 if all_vs_all else gallery.shape[0]
  if max(ks) > n_gallery:
    raise ValueError(f"Recall@{max(ks)} needs at least {max(ks)} gallery items; there are "
                     f"{n_gallery}. Use smaller ks.")
  if normalize:
    query = l2_normalize_np(query)
    gallery = None if all_vs_all else l2_normalize_np(gallery)
  if backend == "exact":
    ranks, n_rel = exact_relevant_ranks(query, query_labels, gallery, gallery_labels, block_size)
  else:
    g_labels = query_labels if all_vs_all else gallery_labels
    rel = relevant_indices(query_labels, g_labels, all_vs_all)
    n_rel = np.sum(rel >= 0, axis=1)
    k = min(max(max(ks), rel.shape[1]), n_gallery)
    _, idx = knn.get_search(backend)(query, query if all_vs_all else gallery, k,
                                     exclude_self=all_vs_all)
    ranks = ranks_from_neighbors(g_labels[idx], query_labels, n_rel, rel.shape[1])
  metrics = metrics_from_ranks(ranks, n_rel, ks)
  return (metrics, ranks[:, 0]) if per_query else metrics
