"""Retrieval metrics: Recall@K, R-Precision and MAP@R (docs/algorithms.md §3).

Everything comes from one quantity: for each query, the **rank** (0-based position among
all gallery items, the query itself excluded) of each of its relevant items, best first.
With ``R`` the number of relevant items,

* Recall@K = [rank of the best relevant item < K],
* R-Precision = #{relevant items with rank < R} / R,
* MAP@R = (1/R) sum_{i: rank_i < R} (i + 1) / (rank_i + 1).

**Ties.** Gallery items are ordered by decreasing cosine similarity, equal scores by
increasing gallery index (the order brute-force search returns). Bitwise-identical
embeddings are tied for every query whatever rounding the kernels that score them
introduce. Every back-end follows this rule, so a collapsed model (all embeddings equal,
zero, or too large to normalise naively) gets chance-level recall, never a perfect score.
Different embeddings whose scores are equal in exact arithmetic are ordered by their
float32 scores as computed, like any near-tie.

Back-ends (``backend``), one interface:

* ``exact`` (default): no top-k at all. Each relevant item's rank is the number of gallery
  items that beat it, counted block by block over the similarity matrix in JAX (symmetric
  blocks computed once in all-vs-all mode); Recall@1000 costs no more than Recall@1.
* ``jax``, ``scann``, ``scann_ah``: a kNN search (:mod:`idml_jax.evaluation.knn`) for
  ``max(max K, largest R)`` neighbors, ranks read off the neighbor list. Where embeddings
  repeat (ties a neighbor list cannot resolve at its cut), the exact path is used.

Queries with no relevant item count as misses in Recall@K and are excluded from
R-Precision and MAP@R.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np

from idml_jax import platform
from idml_jax.evaluation import knn
from idml_jax.evaluation.inputs import check_embeddings, duplicate_groups
from idml_jax.ops import l2_normalize_np, top_k_candidates

RETRIEVAL_BACKENDS = ("exact",) + tuple(knn.SEARCH_BACKENDS)
NO_RANK = np.iinfo(np.int32).max  # Rank of a relevant item that does not exist.


@dataclasses.dataclass(frozen=True)
class QueryRanks:
  """Per-query retrieval outcome (ties as in the module doc).

  Attributes:
    ranks: [Q, P] int64 ranks of each query's relevant items, ascending (padding
      ``NO_RANK``); ranks >= P are exact only for the first relevant item.
    n_relevant: [Q] number of relevant items.
    nearest_score: [Q] cosine similarity of the nearest gallery item (any class).
    second_score: [Q] that of the second nearest (-inf for a one-item gallery).
    max_k: the largest K whose Recall@K these ranks determine (inf: any).
  """

  ranks: np.ndarray
  n_relevant: np.ndarray
  nearest_score: np.ndarray
  second_score: np.ndarray
  max_k: float = math.inf

  @property
  def first_hit_rank(self) -> np.ndarray:
    """[Q] rank of the best relevant item (``NO_RANK`` without one)."""
    return self.ranks[:, 0]

  def per_query(self) -> dict[str, np.ndarray]:
    """[Q] arrays: ``r_precision`` and ``map@r`` (NaN for queries with no relevant item)."""
    r = np.maximum(self.n_relevant, 1)[:, None]
    i = np.arange(self.ranks.shape[1])[None, :]
    in_r = (self.ranks < r) & (i < self.n_relevant[:, None])
    ap = np.sum(np.where(in_r, (i + 1) / (self.ranks.astype(np.float64) + 1), 0.0), axis=1)
    none = self.n_relevant == 0
    return {"r_precision": np.where(none, np.nan, np.sum(in_r, axis=1) / r[:, 0]),
            "map@r": np.where(none, np.nan, ap / r[:, 0])}

  def metrics(self, recall_ks=(1, 2, 4, 8)) -> dict[str, float]:
    """``recall@K`` for each K, ``r_precision`` and ``map@r`` (fractions in [0, 1])."""
    if max(recall_ks) > self.max_k:
      raise ValueError(f"Recall@{max(recall_ks)} needs ranks up to {max(recall_ks)}; these were "
                       f"searched to {self.max_k} neighbors.")
    has_rel = self.n_relevant > 0
    out = {f"recall@{k}": float(np.mean(has_rel & (self.first_hit_rank < k))) for k in recall_ks}
    for name, values in self.per_query().items():
      out[name] = float(np.mean(values[has_rel])) if has_rel.any() else 0.0
    return out


def relevant_indices(query_labels: np.ndarray, gallery_labels: np.ndarray,
                     all_vs_all: bool) -> np.ndarray:
  """[Q, P] gallery indices of each query's relevant items in increasing order, padded
  with -1. In all-vs-all mode (gallery = queries) the query itself is not relevant."""
  order = np.argsort(gallery_labels, kind="stable")
  classes, starts, counts = np.unique(gallery_labels[order], return_index=True,
                                      return_counts=True)
  pos = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
  present = classes[pos] == query_labels
  start = np.where(present, starts[pos], 0)
  count = np.where(present, counts[pos], 0)
  width = max(int(counts.max()) - (1 if all_vs_all else 0), 1)
  t = np.arange(width)[None, :]
  n_rel = count
  if all_vs_all:  # Skip the query's own position inside its class block.
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    t = t + (t >= (inv - start)[:, None])
    n_rel = count - 1
  idx = order[np.minimum(start[:, None] + t, len(order) - 1)]
  return np.where(np.arange(width)[None, :] < n_rel[:, None], idx, -1)


# ----------------------------------------------------------------------------- exact ranks


@jax.jit
def _relevant_scores(q: jax.Array, gallery: jax.Array, rel: jax.Array) -> jax.Array:
  """[bq, D], [N, D], [bq, P] -> [bq, P] scores of the relevant items (-inf padding)."""
  s = jnp.einsum("qd,qpd->qp", q, gallery[jnp.maximum(rel, 0)])
  return jnp.where(rel >= 0, s, -jnp.inf)


def _accumulate(s, best, best_id, best_gid, ids, gids, top_s, top_ids, axis: int):
  """Adds one similarity block to a query block's accumulators along ``axis``.

  ``s`` holds -inf at same-class pairs (the query itself included), so only other-class
  items remain; ``ids`` are their gallery indices along ``axis``. Returns the number of
  them that beat the best relevant item (rank of the first hit, for Recall@K with any K),
  and the merged top-W other-class items (scores and indices, in rank order), enough to
  rank every relevant item that can lie within the top R <= W. ``gids`` (duplicate
  groups, or None): items bitwise equal to the best relevant item beat it by index alone.
  """
  expand = (lambda v: v[:, None]) if axis == 1 else (lambda v: v[None, :])
  other = (lambda v: v[None, :]) if axis == 1 else (lambda v: v[:, None])
  beats = s > expand(best)
  if gids is not None:  # -inf: a same-class (masked) or padded item, which never beats.
    beats = jnp.where(other(gids) == expand(best_gid), other(ids) < expand(best_id),
                      beats) & (s > -jnp.inf)
  count = jnp.sum(beats, axis=axis, dtype=jnp.int32)
  width = top_s.shape[1]
  cand_s, cand_pos = top_k_candidates(s, width, axis)
  merged_s = jnp.concatenate([top_s, cand_s], axis=1)  # Earlier blocks hold lower indices.
  merged_ids = jnp.concatenate([top_ids, ids[cand_pos]], axis=1)
  top_s, pos = jax.lax.top_k(merged_s, width)  # Ties: the lower position, the lower index.
  return count, top_s, jnp.take_along_axis(merged_ids, pos, axis=1)


@functools.partial(jax.jit, static_argnames=("symmetric",), donate_argnums=(2, 7))
def _block_update(qa, la, acc_a, best_a, ids_a, qb, lb, acc_b, best_b, ids_b, col_bias,
                  symmetric: bool):
  """One block of the similarity matrix: queries ``qa`` (labels ``la``) against gallery
  items ``qb`` (``lb``) and, if ``symmetric``, the transpose. ``acc_*`` = (count, top
  scores, top indices); ``best_*`` = (score, index, group) of the best relevant item;
  ``ids_*`` = (indices, groups or None) of the block's items; ``col_bias`` is -inf on
  padded columns."""
  s = jnp.where(la[:, None] == lb[None, :], -jnp.inf, qa @ qb.T + col_bias[None, :])
  c, top_s, top_i = _accumulate(s, *best_a, *ids_b, *acc_a[1:], axis=1)
  acc_a = (acc_a[0] + c, top_s, top_i)
  if symmetric:
    c, top_s, top_i = _accumulate(s, *best_b, *ids_a, *acc_b[1:], axis=0)
    acc_b = (acc_b[0] + c, top_s, top_i)
  return acc_a, acc_b


def _pad_rows(x: np.ndarray, n: int, value) -> np.ndarray:
  pad = [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
  return np.pad(x, pad, constant_values=value)


def _sort_relevant(scores: np.ndarray, rel: np.ndarray, groups: np.ndarray | None):
  """Relevant items best first: score descending, index ascending (rows of ``rel`` are in
  index order). Bitwise-equal items share the best score of their group in the row."""
  if groups is not None:
    g = np.where(rel >= 0, groups[np.maximum(rel, 0)], -1)
    for j in range(rel.shape[1]):  # P is small: one pass per column.
      same = (g == g[:, j:j + 1]) & (rel >= 0)
      scores[:, j] = np.where(rel[:, j] >= 0, np.max(np.where(same, scores, -np.inf), 1), -np.inf)
  order = np.argsort(-scores, axis=1, kind="stable")
  return np.take_along_axis(scores, order, 1), np.take_along_axis(rel, order, 1)


def _exact_ranks(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray | None,
                 gallery_labels: np.ndarray | None, block_size: int) -> QueryRanks:
  """Ranks of each query's relevant items, exactly, without a top-K over the gallery.

  One pass over the similarity matrix in ``block_size`` squares (all-vs-all: the upper
  triangle only, each block serving its rows and, transposed, its columns).
  """
  all_vs_all = gallery is None
  if all_vs_all:
    gallery, gallery_labels = query, query_labels
  rel = relevant_indices(query_labels, gallery_labels, all_vs_all)
  groups = duplicate_groups(gallery)
  nq, ng = query.shape[0], gallery.shape[0]
  width = max(rel.shape[1], 2)  # >= 2: the second-nearest score comes from the same pass.
  block = min(block_size, -(-max(nq, ng) // 32) * 32)
  nqp, ngp = -(-nq // block) * block, -(-ng // block) * block
  q = jnp.asarray(_pad_rows(query, nqp, 0.0))
  g = q if all_vs_all else jnp.asarray(_pad_rows(gallery, ngp, 0.0))
  col_bias = jnp.where(jnp.arange(ngp) < ng, 0.0, -jnp.inf)
  # Same-class pairs (the relevant items and the query itself) are masked by label;
  # padding rows get label -1, which no real item has.
  lq = jnp.asarray(_pad_rows(query_labels, nqp, -1))
  lg = lq if all_vs_all else jnp.asarray(_pad_rows(gallery_labels, ngp, -1))
  sl = lambda i: slice(i * block, (i + 1) * block)
  rel_p = jnp.asarray(_pad_rows(rel, nqp, -1))
  rel_scores = np.concatenate([np.asarray(_relevant_scores(q[sl(i)], g, rel_p[sl(i)]))
                               for i in range(nqp // block)])[:nq]
  rel_scores, rel = _sort_relevant(rel_scores, rel, groups)
  # Per gallery block: (indices, groups); per query block: the best relevant item.
  g_ids = jnp.arange(ngp, dtype=jnp.int32)
  g_groups = None if groups is None else jnp.asarray(_pad_rows(groups, ngp, -1))
  ids = lambda i: (g_ids[sl(i)], None if g_groups is None else g_groups[sl(i)])
  best_gid = np.where(rel[:, 0] >= 0, (groups if groups is not None else np.zeros(ng, int))[
      np.maximum(rel[:, 0], 0)], -2)
  best_all = (jnp.asarray(_pad_rows(rel_scores[:, 0], nqp, -np.inf)),
              jnp.asarray(_pad_rows(np.where(rel[:, 0] >= 0, rel[:, 0], ngp), nqp, ngp)
                          .astype(np.int32)),
              jnp.asarray(_pad_rows(best_gid, nqp, -2).astype(np.int32)))
  best = lambda i: tuple(x[sl(i)] for x in best_all)
  acc = [(jnp.zeros((block,), jnp.int32), jnp.full((block, width), -jnp.inf, jnp.float32),
          jnp.full((block, width), ngp, jnp.int32)) for _ in range(nqp // block)]
  for i in range(nqp // block):
    for j in range(i if all_vs_all else 0, ngp // block):
      sym = all_vs_all and j != i
      acc[i], acc_j = _block_update(q[sl(i)], lq[sl(i)], acc[i], best(i), ids(i), g[sl(j)],
                                    lg[sl(j)], acc[j] if sym else None,
                                    best(j) if sym else None, ids(j), col_bias[sl(j)], sym)
      if sym:
        acc[j] = acc_j
  count, top_s, top_i = (np.concatenate([np.asarray(a[k]) for a in acc])[:nq] for k in range(3))
  n_rel = np.sum(rel >= 0, axis=1)
  # Other-class items beating each relevant item, capped at W (enough for ranks < R <= W).
  beats = top_s[:, None, :] > rel_scores[:, :, None]
  if groups is not None:
    top_g = np.where(top_i < ng, np.concatenate([groups, [-1]])[np.minimum(top_i, ng)], -3)
    rel_g = np.where(rel >= 0, groups[np.maximum(rel, 0)], -4)
    beats = np.where(top_g[:, None, :] == rel_g[:, :, None], top_i[:, None, :] < rel[:, :, None],
                     beats) & (top_s[:, None, :] > -np.inf)
  above = np.sum(beats, axis=2)
  above[:, 0] = count
  above = np.maximum.accumulate(above, axis=1)  # A relevant item ranks below those before it.
  p = np.arange(rel.shape[1])[None, :]
  ranks = np.where(p < n_rel[:, None], above + p, NO_RANK).astype(np.int64)
  # Nearest and second-nearest gallery items: the best of relevant and other-class ones.
  near = -np.sort(-np.concatenate([rel_scores[:, :2], top_s[:, :2]], axis=1), axis=1)
  return QueryRanks(ranks, n_rel, near[:, 0], near[:, 1])


# ----------------------------------------------------------------------------- kNN ranks


def _knn_ranks(query, query_labels, gallery, gallery_labels, max_k: int,
               backend: str) -> QueryRanks:
  all_vs_all = gallery is None
  g_labels = query_labels if all_vs_all else gallery_labels
  rel = relevant_indices(query_labels, g_labels, all_vs_all)
  n_rel = np.sum(rel >= 0, axis=1)
  n_gallery = max(query.shape[0] - 1, 0) if all_vs_all else gallery.shape[0]
  k = min(max(max_k, rel.shape[1], 2), n_gallery)
  scores, idx = knn.get_search(backend)(query, query if all_vs_all else gallery, k,
                                        exclude_self=all_vs_all)
  hit = g_labels[idx] == query_labels[:, None]
  width = rel.shape[1]
  ranks = np.sort(np.where(hit, np.arange(k)[None, :], NO_RANK), axis=1)[:, :width]
  ranks = np.pad(ranks, ((0, 0), (0, width - ranks.shape[1])), constant_values=NO_RANK)
  ranks = np.where(np.arange(width)[None, :] < n_rel[:, None], ranks, NO_RANK)
  second = scores[:, 1] if k > 1 else np.full(len(scores), -np.inf, np.float32)
  return QueryRanks(ranks.astype(np.int64), n_rel, scores[:, 0], second,
                    max_k=k if k < n_gallery else math.inf)


# ----------------------------------------------------------------------------- public API


def query_ranks(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray | None = None,
                gallery_labels: np.ndarray | None = None, *, max_k: int = 1,
                backend: str = "exact", block_size: int | None = None) -> QueryRanks:
  """Per-query ranks of the relevant items of cosine retrieval (embeddings normalised here).

  Args:
    query: [Q, D] embeddings; query_labels: [Q] int.
    gallery, gallery_labels: [N, D], [N] for query→gallery (In-Shop); None for all-vs-all
      with each query excluded from its own neighbors.
    max_k: the largest K of Recall@K needed (kNN back-ends search that far).
    backend: one of ``RETRIEVAL_BACKENDS``.
    block_size: the exact back-end's square block (default: ``idml_jax.platform``'s;
      any size gives the same ranks).
  """
  if backend not in RETRIEVAL_BACKENDS:
    raise ValueError(f"Unknown retrieval backend {backend!r}; valid: {RETRIEVAL_BACKENDS}.")
  query, query_labels = check_embeddings(query, query_labels, "query")
  all_vs_all = gallery is None
  if not all_vs_all:
    if gallery_labels is None:
      raise ValueError("gallery_labels are required with a gallery.")
    gallery, gallery_labels = check_embeddings(gallery, gallery_labels, "gallery")
    if gallery.shape[1] != query.shape[1]:
      raise ValueError(f"query dim {query.shape[1]} != gallery dim {gallery.shape[1]}.")
  n_gallery = max(query.shape[0] - 1, 0) if all_vs_all else gallery.shape[0]
  if max_k > n_gallery:
    raise ValueError(f"Recall@{max_k} needs at least {max_k} gallery items; there are "
                     f"{n_gallery}. Use smaller ks.")
  query = l2_normalize_np(query)
  gallery = None if all_vs_all else l2_normalize_np(gallery)
  if backend != "exact" and duplicate_groups(query if all_vs_all else gallery) is not None:
    logging.info("Repeated embeddings: ranks computed exactly (ties by gallery index).")
    backend = "exact"
  if backend == "exact":
    return _exact_ranks(query, query_labels, gallery, gallery_labels,
                        block_size or platform.defaults().retrieval_block)
  return _knn_ranks(query, query_labels, gallery, gallery_labels, max_k, backend)


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, *, recall_ks=(1, 2, 4, 8),
                      backend: str = "exact",
                      block_size: int | None = None) -> dict[str, float]:
  """All-vs-all ``recall@K`` (K in ``recall_ks``), ``r_precision`` and ``map@r`` of
  embeddings [N, D] with labels [N], each query excluded from its own neighbors."""
  return query_ranks(embeddings, labels, max_k=max(recall_ks), backend=backend,
                     block_size=block_size).metrics(recall_ks)


def query_gallery_metrics(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                          gallery_labels: np.ndarray, *, recall_ks=(1, 10, 20, 30),
                          backend: str = "exact",
                          block_size: int | None = None) -> dict[str, float]:
  """In-Shop style: queries [Q, D] against a separate gallery [N, D]; ``recall@K``,
  ``r_precision``, ``map@r``."""
  return query_ranks(query, query_labels, gallery, gallery_labels, max_k=max(recall_ks),
                     backend=backend, block_size=block_size).metrics(recall_ks)
