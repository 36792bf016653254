"""Retrieval metrics: Recall@K, R-Precision and MAP@R (docs/algorithms.md §3).

Everything comes from one quantity: for each query, the **rank** (0-based position among
all gallery items, the query itself excluded) of each of its relevant items, best first.
With ``R`` the number of relevant items,

* Recall@K = [rank of the best relevant item < K],
* R-Precision = #{relevant items with rank < R} / R,
* MAP@R = (1/R) sum_{i: rank_i < R} (i + 1) / (rank_i + 1).

**Ties.** Gallery items are ordered by decreasing cosine similarity; scores within
``TIE_TOLERANCE`` (8 float32 ulps at 1, ~1e-6: differences float32 dot products do not
resolve) are ties, ordered by increasing gallery index (the order brute-force search
returns): item j beats item r when s_j > s_r + tol, or |s_j - s_r| <= tol and j < r
(:func:`beats`), and an item's rank is the number of items that beat it. Every score of a
back-end comes from one computation, so the relevant items and their competitors are
rounded alike. Every back-end follows this rule, so a collapsed model (embeddings equal, or
equal to within float32 rounding, zero, or too large to normalise naively) gets
chance-level recall, never a perfect score.

Back-ends (``backend``), one interface:

* ``rank_count`` (default): exact, with no top-k at all. Each relevant item's rank is the
  number of gallery items that beat it, counted block by block over the similarity matrix in
  JAX (symmetric blocks computed once in all-vs-all mode); Recall@1000 costs no more than
  Recall@1.
* ``exact_device``, ``exact_host``, ``approximate``: a kNN search
  (:mod:`idml_jax.evaluation.knn`: exact in JAX, exact brute force in ScaNN, ScaNN's
  partitioning + quantisation) for
  ``max(max K, largest R)`` neighbors (one more, to see the cut), near-tied runs of the
  list put in index order, ranks read off it. Where a near-tie (repeated embeddings
  included) straddles the cut, which a neighbor list cannot resolve, the exact path is used.

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
from idml_jax.evaluation.inputs import check_embeddings
from idml_jax.ops import l2_normalize_np, top_k_candidates

RETRIEVAL_BACKENDS = ("rank_count",) + tuple(knn.SEARCH_BACKENDS)
NO_RANK = np.iinfo(np.int32).max  # Rank of a relevant item that does not exist.
# Scores closer than this are tied (module doc): eight float32 ulps at 1, below what a
# float32 dot product of unit vectors resolves.
TIE_TOLERANCE = float(8 * np.finfo(np.float32).eps)


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
    check_ks(recall_ks)
    if max(recall_ks) > self.max_k:
      raise ValueError(f"Recall@{max(recall_ks)} needs ranks up to {max(recall_ks)}; these were "
                       f"searched to {self.max_k} neighbors.")
    has_rel = self.n_relevant > 0
    out = {f"recall@{k}": float(np.mean(has_rel & (self.first_hit_rank < k))) for k in recall_ks}
    for name, values in self.per_query().items():
      out[name] = float(np.mean(values[has_rel])) if has_rel.any() else 0.0
    return out


def check_ks(ks) -> None:
  """Refuses Ks that are not positive integers (Recall@K needs K >= 1)."""
  ks = tuple(ks)
  if not ks or not all(isinstance(k, int | np.integer) and not isinstance(k, bool) and k > 0
                       for k in ks):
    raise ValueError(f"recall_ks must be positive integers, e.g. (1, 2, 4, 8); got {ks!r}.")


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


def beats(s_other, i_other, s_item, i_item, tol: float = TIE_TOLERANCE):
  """Whether gallery item ``i_other`` (score ``s_other``) ranks before ``i_item`` (``s_item``):
  a higher score by more than ``tol``, or a tie (within ``tol``) and a lower gallery index.
  Broadcasting NumPy or JAX arrays; a -inf ``s_other`` (masked) never beats, nothing beats
  a +inf ``s_item`` (padding)."""
  return (s_other > s_item + tol) | ((s_other >= s_item - tol) & (i_other < i_item))


@jax.jit
def _block_scores(qa: jax.Array, qb: jax.Array) -> jax.Array:
  """[ba, D], [bb, D] -> [ba, bb] cosine similarities: the one computation every score of
  the exact back-end comes from (a relevant item's and its competitors' alike)."""
  return qa @ qb.T


@jax.jit
def _gather_relevant(s: jax.Array, rel: jax.Array, start: jax.Array,
                     rel_s: jax.Array) -> jax.Array:
  """Fills ``rel_s`` [ba, P] with the scores in block ``s`` [ba, bb] (columns ``start`` ...)
  of the relevant items ``rel`` [ba, P] that lie in it."""
  local = rel - start
  inside = (local >= 0) & (local < s.shape[1])
  vals = jnp.take_along_axis(s, jnp.clip(local, 0, s.shape[1] - 1), axis=1)
  return jnp.where(inside, vals, rel_s)


def _accumulate(s, best_s, best_id, ids, top_s, top_ids, axis: int):
  """Adds one similarity block to a query block's accumulators along ``axis``.

  ``s`` holds -inf at same-class pairs (the query itself included), so only other-class
  items remain; ``ids`` are their gallery indices along ``axis``. Returns the number of
  them that beat the best relevant item (``best_s``, ``best_id``: its rank, for Recall@K
  with any K), and the merged top-W other-class items (scores and indices, by score),
  from which the other relevant items' ranks below W are read (:func:`_exact_ranks`).
  """
  expand = (lambda v: v[:, None]) if axis == 1 else (lambda v: v[None, :])
  other = (lambda v: v[None, :]) if axis == 1 else (lambda v: v[:, None])
  count = jnp.sum(beats(s, other(ids), expand(best_s), expand(best_id)), axis=axis,
                  dtype=jnp.int32)
  width = top_s.shape[1]
  cand_s, cand_pos = top_k_candidates(s, width, axis)
  merged_s = jnp.concatenate([top_s, cand_s], axis=1)  # Earlier blocks hold lower indices.
  merged_ids = jnp.concatenate([top_ids, ids[cand_pos]], axis=1)
  top_s, pos = jax.lax.top_k(merged_s, width)  # Ties: the lower position, the lower index.
  return count, top_s, jnp.take_along_axis(merged_ids, pos, axis=1)


@functools.partial(jax.jit, static_argnames=("symmetric",), donate_argnums=(7, 9))
def _block_update(s, la, lb, ids_a, ids_b, col_bias, best_a, acc_a, best_b, acc_b,
                  symmetric: bool):
  """One block ``s`` of the similarity matrix: queries of block a (labels ``la``) against
  gallery items of block b (``lb``) and, if ``symmetric``, the transpose. ``best_*`` =
  (score, index) of each query's best relevant item; ``acc_*`` = (count, top scores, top
  indices); ``col_bias`` is -inf on padded columns."""
  s = jnp.where(la[:, None] == lb[None, :], -jnp.inf, s + col_bias[None, :])
  c, top_s, top_i = _accumulate(s, *best_a, ids_b, *acc_a[1:], axis=1)
  acc_a = (acc_a[0] + c, top_s, top_i)
  if symmetric:
    c, top_s, top_i = _accumulate(s, *best_b, ids_a, *acc_b[1:], axis=0)
    acc_b = (acc_b[0] + c, top_s, top_i)
  return acc_a, acc_b


@functools.partial(jax.jit, donate_argnums=(5,))
def _count_each(s, la, lb, ids_b, rel, counts, chunk: int = 8):
  """``counts`` [b, P] plus, per relevant item (``rel`` = (scores, indices) [b, P]), the
  other-class items of block ``s`` [b, bb] that beat it: the slow exact count, for the
  queries whose near-ties reach the top-W cut."""
  s = jnp.where(la[:, None] == lb[None, :], -jnp.inf, s)
  rel_s, rel_i = rel
  return counts + jnp.concatenate(
      [jnp.sum(beats(s[:, :, None], ids_b[None, :, None], rel_s[:, None, p:p + chunk],
                     rel_i[:, None, p:p + chunk]), axis=1, dtype=jnp.int32)
       for p in range(0, rel_i.shape[1], chunk)], axis=1)


def _pad_rows(x: np.ndarray, n: int, value) -> np.ndarray:
  pad = [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
  return np.pad(x, pad, constant_values=value)


def _relevant_beaten(rel_s: np.ndarray, rel: np.ndarray, chunk_elems: int = 1 << 24
                     ) -> np.ndarray:
  """[Q, P]: for each relevant item, how many of the query's other relevant items beat it
  (``rel`` -1 on padding, which neither beats nor counts)."""
  q, p = rel.shape
  out = np.zeros((q, p), np.int64)
  step = max(1, chunk_elems // max(p * p, 1))
  ids = np.where(rel >= 0, rel, np.iinfo(np.int64).max)
  other_s = np.where(rel >= 0, rel_s, -np.inf)
  for a in range(0, q, step):
    b = slice(a, a + step)
    out[b] = np.sum(beats(other_s[b, None, :], ids[b, None, :], rel_s[b, :, None],
                          ids[b, :, None]), axis=2)
  return out


def ranks_from_counts(beaten: np.ndarray, n_rel: np.ndarray) -> np.ndarray:
  """[Q, P] ranks (ascending, ``NO_RANK`` padding) from the number of gallery items that
  beat each relevant item (any order; padding ignored). Each rank is at least one more than
  the one before: what a sorted list gives, also where near-ties are not transitive."""
  p = np.arange(beaten.shape[1])[None, :]
  valid = p < n_rel[:, None]
  r = np.sort(np.where(valid, beaten, np.iinfo(np.int64).max), axis=1)
  r = np.maximum.accumulate(np.where(valid, r - p, 0), axis=1) + p
  return np.where(valid, r, NO_RANK).astype(np.int64)


def _best_relevant(rel_s: np.ndarray, rel: np.ndarray, ng: int):
  """For queries with relevant-item scores ``rel_s`` [b, P] and ids ``rel`` [b, P] (-1
  padding): how many of their other relevant items beat each one (``among`` [b, P]), which
  one is best (``first`` [b]), and its score and id [b] (+inf / max int without one)."""
  n_rel = np.sum(rel >= 0, axis=1)
  among = _relevant_beaten(rel_s, rel)
  first = np.argmin(np.where(rel >= 0, among * (ng + 1) + rel, np.iinfo(np.int64).max), 1)
  take = lambda a: np.take_along_axis(a, first[:, None], 1)[:, 0]
  best_s = np.where(n_rel > 0, take(rel_s), np.inf).astype(np.float32)
  best_i = np.where(n_rel > 0, take(rel), np.iinfo(np.int32).max).astype(np.int32)
  return among, first, best_s, best_i


def _band(rel_pos: np.ndarray, block: int, n_blocks: int, all_vs_all: bool) -> list[tuple]:
  """The blocks (i, j) that hold a relevant item of a query of block i (all-vs-all: of
  block i or j, i <= j), in the order of the larger index, then the smaller."""
  rows = np.repeat(np.arange(rel_pos.shape[0]) // block, rel_pos.shape[1])
  cols = rel_pos.ravel() // block
  keep = cols < n_blocks  # Padding (no relevant item) has a position past the gallery.
  pairs = np.stack([rows[keep], cols[keep]], axis=1)
  if all_vs_all:
    pairs = np.sort(pairs, axis=1)
  return sorted(((int(i), int(j)) for i, j in np.unique(pairs, axis=0)),
                key=lambda ij: (max(ij), min(ij)))


def _exact_ranks(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray | None,
                 gallery_labels: np.ndarray | None, block_size: int) -> QueryRanks:
  """Ranks of each query's relevant items, exactly, without a top-K over the gallery.

  One pass over the similarity matrix in ``block_size`` squares (all-vs-all: the upper
  triangle only, each block serving its rows and, transposed, its columns), every score
  computed once, by one program (:func:`_block_scores`). Queries and gallery are taken in
  class order (ties still go by the original gallery index), so the relevant items of a
  block of queries lie in the few blocks of its *band*; those are computed first, their
  relevant scores read, and each is kept until the best relevant item of every query it
  serves is known. Then every block counts the other-class items that beat each query's
  best relevant item, and keeps the top W (W = the largest class) by score, which rank the
  other relevant items below W — exactly, unless near-ties reach the W-th score: those
  queries are counted again, item by item (:func:`_count_each`).
  """
  all_vs_all = gallery is None
  if all_vs_all:
    gallery, gallery_labels = query, query_labels
  nq, ng = query.shape[0], gallery.shape[0]
  # Class order: the ranking's tie-break stays the original gallery index (``ids``).
  pq = np.argsort(query_labels, kind="stable")
  pg = pq if all_vs_all else np.argsort(gallery_labels, kind="stable")
  position = np.empty(ng, np.int64)
  position[pg] = np.arange(ng)
  rel = relevant_indices(query_labels, gallery_labels, all_vs_all)[pq]  # Original ids.
  width = max(rel.shape[1], 2)  # >= 2: the second-nearest score comes from the same pass.
  block = min(block_size, -(-max(nq, ng) // 32) * 32)
  nqp, ngp = -(-nq // block) * block, -(-ng // block) * block
  nbq, nbg = nqp // block, ngp // block
  q = jnp.asarray(_pad_rows(query[pq], nqp, 0.0))
  g = q if all_vs_all else jnp.asarray(_pad_rows(gallery[pg], ngp, 0.0))
  col_bias = jnp.where(jnp.arange(ngp) < ng, 0.0, -jnp.inf)
  # Same-class pairs (the relevant items and the query itself) are masked by label;
  # padding rows get label -1, which no real item has.
  lq = jnp.asarray(_pad_rows(query_labels[pq], nqp, -1))
  lg = lq if all_vs_all else jnp.asarray(_pad_rows(gallery_labels[pg], ngp, -1))
  big = np.iinfo(np.int32).max
  ids = jnp.asarray(_pad_rows(pg, ngp, big).astype(np.int32))
  rel_pos = np.where(rel >= 0, position[np.maximum(rel, 0)], ngp)
  rel_pos_p = jnp.asarray(_pad_rows(rel_pos, nqp, ngp).astype(np.int32))
  sl = lambda i: slice(i * block, (i + 1) * block)
  rel_s = [jnp.full((block, rel.shape[1]), jnp.inf, jnp.float32) for _ in range(nbq)]
  best, among, first = [None] * nbq, [None] * nbq, [None] * nbq
  acc = [(jnp.zeros((block,), jnp.int32), jnp.full((block, width), -jnp.inf, jnp.float32),
          jnp.full((block, width), big, jnp.int32)) for _ in range(nbq)]
  rows_of = lambda i: slice(i * block, min((i + 1) * block, nq))

  def settle(i):  # Every relevant score of block i's queries is read: their best item.
    host = np.asarray(rel_s[i])[: rows_of(i).stop - rows_of(i).start]
    among[i], first[i], bs, bi = _best_relevant(host, rel[rows_of(i)], ng)
    best[i] = (jnp.asarray(_pad_rows(bs, block, np.inf)), jnp.asarray(_pad_rows(bi, block, big)))

  def count(i, j, s):
    sym = all_vs_all and j != i
    acc[i], acc_j = _block_update(s, lq[sl(i)], lg[sl(j)], ids[sl(i)], ids[sl(j)],
                                  col_bias[sl(j)], best[i], acc[i],
                                  best[j] if sym else None, acc[j] if sym else None, sym)
    if sym:
      acc[j] = acc_j

  band = _band(rel_pos, block, nbg, all_vs_all)
  # The last band block each block of queries needs, and when a kept block can count.
  last = {}
  for t, (i, j) in enumerate(band):
    last[i] = t
    if all_vs_all:
      last[j] = t
  ready = lambda i, j: max(last.get(i, -1), last.get(j, -1) if all_vs_all else -1)
  kept = {}
  for t, (i, j) in enumerate(band):
    s = _block_scores(q[sl(i)], g[sl(j)])
    rel_s[i] = _gather_relevant(s, rel_pos_p[sl(i)], j * block, rel_s[i])
    if all_vs_all and j != i:
      rel_s[j] = _gather_relevant(s.T, rel_pos_p[sl(j)], i * block, rel_s[j])
    kept[i, j] = s
    for k in {i, j} if all_vs_all else {i}:
      if last[k] == t:
        settle(k)
    for key in [key for key in kept if ready(*key) <= t]:
      count(*key, kept.pop(key))
  for i in range(nbq):
    if best[i] is None:  # No relevant item in any block (a class of one).
      settle(i)
  in_band = set(band)
  for i in range(nbq):
    for j in range(i if all_vs_all else 0, nbg):
      if (i, j) not in in_band:
        count(i, j, _block_scores(q[sl(i)], g[sl(j)]))
  rel_scores = np.concatenate([np.asarray(r) for r in rel_s])[:nq]
  among, first = np.concatenate(among), np.concatenate(first)
  n_rel = np.sum(rel >= 0, axis=1)
  count_best, top_s, top_i = (np.concatenate([np.asarray(a[k]) for a in acc])[:nq]
                              for k in range(3))
  rel_ids = np.where(rel >= 0, rel, big)
  others = np.sum(beats(top_s[:, None, :], top_i[:, None, :], rel_scores[:, :, None],
                        rel_ids[:, :, None]), axis=2)
  np.put_along_axis(others, first[:, None], count_best[:, None], 1)
  # A near-tie band reaching the W-th score may hold lower-index items outside the top W.
  cut = top_s[:, -1:] >= rel_scores - TIE_TOLERANCE
  redo = np.flatnonzero(np.any(cut & (rel >= 0) & (others + among < n_rel[:, None]), axis=1))
  if redo.size:
    logging.info("Near-tied scores at the top-%d cut for %d queries: counted item by item.",
                 width, redo.size)
    others[redo] = _count_slow(q, g, lq, lg, ids, col_bias, rel_scores[redo], rel_ids[redo],
                               redo, block, all_vs_all)
  # Below W the top W rank every relevant item; at W they are capped, and no relevant item
  # is beaten by fewer items than the best one.
  ranks = ranks_from_counts(np.maximum(others, count_best[:, None]) + among, n_rel)
  # Nearest and second-nearest gallery items: the best of relevant and other-class ones.
  rel_best = -np.sort(-np.where(rel >= 0, rel_scores, -np.inf), axis=1)[:, :2]
  near = -np.sort(-np.concatenate([rel_best, top_s[:, :2]], axis=1), axis=1)
  back = np.empty_like(pq)
  back[pq] = np.arange(nq)  # Rows in the caller's order again.
  return QueryRanks(ranks[back], n_rel[back], near[back, 0], near[back, 1])


def _count_slow(q, g, lq, lg, ids, col_bias, rel_s, rel_i, rows, block,
                all_vs_all) -> np.ndarray:
  """[len(rows), P] other-class items beating each relevant item of the queries ``rows``,
  item by item, each score from the blocks :func:`_block_scores` computes in the pass: query
  block i against gallery block j (all-vs-all: the transposed block where j < i)."""
  out = np.zeros(rel_i.shape, np.int64)
  ngp = g.shape[0]
  for i in np.unique(rows // block):
    mine = np.flatnonzero(rows // block == i)
    local = rows[mine] - i * block
    rel = (jnp.asarray(rel_s[mine]), jnp.asarray(rel_i[mine].astype(np.int32)))
    counts = jnp.zeros(rel_i[mine].shape, jnp.int32)
    for j in range(ngp // block):
      if all_vs_all and j < i:
        s = _block_scores(q[j * block:(j + 1) * block], q[i * block:(i + 1) * block]).T
      else:
        s = _block_scores(q[i * block:(i + 1) * block], g[j * block:(j + 1) * block])
      s = s[local] + col_bias[j * block:(j + 1) * block][None, :]
      counts = _count_each(s, lq[i * block + local], lg[j * block:(j + 1) * block],
                           ids[j * block:(j + 1) * block], rel, counts)
    out[mine] = np.asarray(counts)
  return out


# ----------------------------------------------------------------------------- kNN ranks


def _knn_ranks(query, query_labels, gallery, gallery_labels, max_k: int,
               backend: str) -> QueryRanks | None:
  """Ranks read off a neighbor list, or None where a near-tie straddles its cut."""
  all_vs_all = gallery is None
  g_labels = query_labels if all_vs_all else gallery_labels
  rel = relevant_indices(query_labels, g_labels, all_vs_all)
  n_rel = np.sum(rel >= 0, axis=1)
  n_gallery = max(query.shape[0] - 1, 0) if all_vs_all else gallery.shape[0]
  k = min(max(max_k, rel.shape[1], 2), n_gallery)
  searched = min(k + 1, n_gallery)
  scores, idx = knn.get_search(backend)(query, query if all_vs_all else gallery, searched,
                                        exclude_self=all_vs_all)
  if searched > k:
    if np.any(scores[:, k - 1] - scores[:, k] <= TIE_TOLERANCE):
      return None
    scores, idx = scores[:, :k], idx[:, :k]
  # Near-tied runs of the list in gallery-index order (module doc, "Ties").
  run = np.cumsum(np.diff(scores, axis=1, prepend=scores[:, :1]) < -TIE_TOLERANCE, axis=1)
  idx = np.take_along_axis(idx, np.lexsort((idx, run), axis=1), axis=1)
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
                backend: str = "rank_count", block_size: int | None = None) -> QueryRanks:
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
  knn.backend_name(backend, RETRIEVAL_BACKENDS, "retrieval back-end")
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
  if backend != "rank_count":
    ranks = _knn_ranks(query, query_labels, gallery, gallery_labels, max_k, backend)
    if ranks is not None:
      return ranks
    logging.info("Near-tied scores at the neighbor list's cut: ranks computed exactly "
                 "(ties by gallery index).")
  return _exact_ranks(query, query_labels, gallery, gallery_labels,
                      block_size or platform.defaults().retrieval_block)


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, *, recall_ks=(1, 2, 4, 8),
                      backend: str = "rank_count",
                      block_size: int | None = None) -> dict[str, float]:
  """All-vs-all ``recall@K`` (K in ``recall_ks``), ``r_precision`` and ``map@r`` of
  embeddings [N, D] with labels [N], each query excluded from its own neighbors."""
  check_ks(recall_ks)
  return query_ranks(embeddings, labels, max_k=max(recall_ks), backend=backend,
                     block_size=block_size).metrics(recall_ks)


def query_gallery_metrics(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                          gallery_labels: np.ndarray, *, recall_ks=(1, 10, 20, 30),
                          backend: str = "rank_count",
                          block_size: int | None = None) -> dict[str, float]:
  """In-Shop style: queries [Q, D] against a separate gallery [N, D]; ``recall@K``,
  ``r_precision``, ``map@r``."""
  check_ks(recall_ks)
  return query_ranks(query, query_labels, gallery, gallery_labels, max_k=max(recall_ks),
                     backend=backend, block_size=block_size).metrics(recall_ks)
