"""k-nearest-neighbor search back-ends (inner product on L2-normalised embeddings).

All back-ends share one signature, ``search(queries, database, k, exclude_self)``
-> ``(scores [Q, k], indices [Q, k])`` sorted by decreasing score, so evaluation
and the retrieval service can swap them by name:

* ``jax``: exact, blocked matmul + ``lax.top_k`` under jit (CPU, GPU, TPU); never
  holds more than a ``block × N`` slice of the similarity matrix; ties to the lower index.
* ``scann``: ScaNN exact brute force.
* ``scann_ah``: ScaNN partitioning + anisotropic quantisation + exact re-ordering,
  for large galleries.

With ``exclude_self`` the database is the query set and each query's own index
is removed from its neighbors (all-vs-all evaluation).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from idml_jax import names


@functools.partial(jax.jit, static_argnames=("k", "exclude_self"))
def _topk_block(q: jax.Array, db: jax.Array, row_ids: jax.Array, k: int,
                exclude_self: bool) -> tuple[jax.Array, jax.Array]:
  s = q @ db.T
  if exclude_self:
    s = jnp.where(row_ids[:, None] == jnp.arange(db.shape[0])[None, :], -jnp.inf, s)
  return jax.lax.top_k(s, k)


@functools.partial(jax.jit, static_argnames=("k", "exclude_self"))
def _topk_tiled(q: jax.Array, tiles: jax.Array, row_ids: jax.Array, n: jax.Array, k: int,
                exclude_self: bool) -> tuple[jax.Array, jax.Array]:
  """Queries [B, D] against database tiles [T, G, D] (the last padded past ``n``): a
  running top-k over the tiles, never more than a B × G score block."""
  g = tiles.shape[1]

  def merge(carry, tile_and_start):
    best_s, best_i = carry
    tile, start = tile_and_start
    ids = start + jnp.arange(g)
    s = jnp.where(ids[None, :] < n, q @ tile.T, -jnp.inf)
    if exclude_self:
      s = jnp.where(row_ids[:, None] == ids[None, :], -jnp.inf, s)
    cand_s = jnp.concatenate([best_s, s], axis=1)  # Earlier tiles: lower indices first.
    cand_i = jnp.concatenate([best_i, jnp.broadcast_to(ids, s.shape)], axis=1)
    top_s, pos = jax.lax.top_k(cand_s, k)
    return (top_s, jnp.take_along_axis(cand_i, pos, axis=1)), None

  init = (jnp.full((q.shape[0], k), -jnp.inf, q.dtype),
          jnp.full((q.shape[0], k), jnp.iinfo(jnp.int32).max, jnp.int32))
  starts = jnp.arange(tiles.shape[0], dtype=jnp.int32) * g
  (scores, indices), _ = jax.lax.scan(merge, init, (tiles, starts))
  return scores, indices


def jax_search(queries: np.ndarray, database: np.ndarray, k: int, exclude_self: bool = False,
               block_size: int = 1024, gallery_block: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """Exact kNN by blocked matmul + top-k. [Q, D], [N, D] -> [Q, k] scores, indices.

  ``gallery_block``: also tile the database (a running top-k over tiles of that many
  items), so memory stays ``block_size × gallery_block`` however large the gallery; None
  scores each query block against the whole database at once.
  """
  n = queries.shape[0]
  block = min(block_size, n)
  pad = (-n) % block
  q = np.pad(np.asarray(queries, np.float32), ((0, pad), (0, 0)))
  tiled = gallery_block is not None and gallery_block < database.shape[0]
  if tiled:
    n_db = database.shape[0]
    t = -(-n_db // gallery_block)
    db = np.pad(np.asarray(database, np.float32), ((0, t * gallery_block - n_db), (0, 0)))
    db = jnp.asarray(db.reshape(t, gallery_block, -1))
  else:
    db = jnp.asarray(database, jnp.float32)
  scores, indices = [], []
  for start in range(0, n + pad, block):
    rows = jnp.arange(start, start + block)
    qb = jnp.asarray(q[start:start + block])
    s, i = (_topk_tiled(qb, db, rows, jnp.int32(n_db), k, exclude_self) if tiled
            else _topk_block(qb, db, rows, k, exclude_self))
    scores.append(s)
    indices.append(i)
  return (np.concatenate(jax.device_get(scores))[:n],
          np.concatenate(jax.device_get(indices))[:n].astype(np.int64))


# ScaNN's approximate index (BENCHMARKS.md has the sweep these come from): partitioning pays
# off from ~1,000 items; sqrt(N) leaves, a fifth of them searched; anisotropic quantisation
# with 2-d blocks and ScaNN's recommended threshold 0.2; the best max(2k, 100) candidates
# re-scored exactly; at most 250k points to train the tree, its k-means started by k-means++
# (ScaNN's default random start made two builds of one gallery answer differently; k-means++
# costs 3.2 s instead of 2.5 s to build 60,000 × 128 and finds the same neighbors).
SCANN_MIN_PARTITIONED = 1000
SCANN_LEAVES_SEARCHED = 1 / 5
SCANN_AH_DIMS_PER_BLOCK = 2
SCANN_AH_THRESHOLD = 0.2
SCANN_MIN_REORDER = 100
SCANN_TRAINING_SAMPLE = 250_000


def scann_searcher(database: np.ndarray, k: int, approximate: bool = False):
  """A built ScaNN searcher over ``database`` [N, D] (dot product), for up to ``k``
  neighbors: exact brute force, or (``approximate``, N >= ``SCANN_MIN_PARTITIONED``) tree
  partitioning + anisotropic quantisation + exact re-ordering."""
  try:
    import scann
  except ImportError as e:  # pragma: no cover - scann is a declared dependency.
    raise ImportError("The ScaNN back-end needs `pip install scann` (Linux x86-64).") from e
  n = database.shape[0]
  builder = scann.scann_ops_pybind.builder(np.ascontiguousarray(database, np.float32), k,
                                           "dot_product")
  if not approximate or n < SCANN_MIN_PARTITIONED:
    return builder.score_brute_force(quantize=False).build()
  num_leaves = max(1, int(round(math.sqrt(n))))
  return (builder.tree(num_leaves=num_leaves,
                       num_leaves_to_search=max(1, int(num_leaves * SCANN_LEAVES_SEARCHED)),
                       training_sample_size=min(n, SCANN_TRAINING_SAMPLE), random_init=False)
          .score_ah(SCANN_AH_DIMS_PER_BLOCK, anisotropic_quantization_threshold=SCANN_AH_THRESHOLD)
          .reorder(max(2 * k, SCANN_MIN_REORDER)).build())


def drop_self(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Removes each row's own index from k+1 results (or the last one if absent)."""
  rows = np.arange(indices.shape[0])[:, None]
  is_self = indices == rows
  # Push self to the end (stable), then keep the first k.
  order = np.argsort(is_self, axis=1, kind="stable")
  return (np.take_along_axis(scores, order, 1)[:, :k],
          np.take_along_axis(indices, order, 1)[:, :k])


def _scann_search(queries, database, k, exclude_self, approximate):
  kk = k + 1 if exclude_self else k
  if kk > database.shape[0]:
    raise ValueError(f"k={k} exceeds the database size {database.shape[0]}.")
  searcher = scann_searcher(database, kk, approximate)
  indices, scores = searcher.search_batched_parallel(
      np.ascontiguousarray(queries, np.float32), final_num_neighbors=kk)
  indices = indices.astype(np.int64)
  if exclude_self:
    scores, indices = drop_self(scores, indices, k)
  return scores, indices


def scann_search(queries: np.ndarray, database: np.ndarray, k: int,
                 exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Exact kNN with ScaNN's brute-force scorer."""
  return _scann_search(queries, database, k, exclude_self, approximate=False)


def scann_ah_search(queries: np.ndarray, database: np.ndarray, k: int,
                    exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Approximate kNN: ScaNN tree partitioning + AH quantisation + exact re-ordering
  (exact below 1,000 database items)."""
  return _scann_search(queries, database, k, exclude_self, approximate=True)


# Named for what they are: exact on the device (JAX), exact on the host (ScaNN's brute force),
# approximate (ScaNN's partitioning + quantisation).
SEARCH_BACKENDS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "exact_device": jax_search,
    "exact_host": scann_search,
    "approximate": scann_ah_search,
}
# Back-end names of earlier versions -> today's (refused as arguments, naming the new one;
# translated where a saved index or run records them).
RENAMED_BACKENDS = {"exact": "rank_count", "jax": "exact_device", "scann": "exact_host",
                    "scann_ah": "approximate"}


def backend_name(name: str, table, what: str) -> str:
  """``name`` if ``table`` has it; an earlier name is refused with today's, any other with
  the valid ones (ValueError, one line)."""
  if name in RENAMED_BACKENDS and name not in table:
    raise ValueError(f"The {what} {name!r} was renamed: use {RENAMED_BACKENDS[name]!r}.")
  if name not in table:
    raise ValueError(names.unknown(what, name, table))
  return name


def get_search(name: str) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
  return SEARCH_BACKENDS[backend_name(name, SEARCH_BACKENDS, "kNN back-end")]
