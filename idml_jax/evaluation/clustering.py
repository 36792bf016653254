"""Clustering quality: NMI and pairwise F1 of k-means on the embeddings (§3).

The papers' NMI comes from scikit-learn's ``KMeans`` (k-means++ initialisation,
Lloyd iterations to convergence), which takes over 20 minutes at SOP scale
(11,316 clusters) on a 2-core CPU, dominated by its sequential k-means++. The
``jax`` back-end keeps the same algorithm family and is fast at that scale:

1. **greedy k-means++** (scikit-learn's: the best of ``2 + ln k`` candidates sampled
   ∝ D²), with the candidates of ``init_batch`` consecutive centres scored by one
   matmul.
2. **Lloyd iterations**: a full assignment pass (blocked matmul) also records each
   point's ``num_candidates`` nearest centres; the next iterations assign among
   those candidates only (centroids move little between iterations); a full pass
   re-checks, and the loop stops when a full pass changes nothing or after
   ``max_full_passes``.

``sklearn`` runs scikit-learn's ``KMeans`` itself, for fidelity checks; ``jax_plain``
skips the greedy trials (``trials=1``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from idml_jax import names
from idml_jax.evaluation.inputs import check_embeddings
from idml_jax.ops import l2_normalize_np


def _sq_norms(x):
  return jnp.sum(jnp.square(x), axis=1)


@functools.partial(jax.jit, static_argnames=("k", "batch", "trials"))
def kmeans_plus_plus(key: jax.Array, x: jax.Array, k: int, batch: int, trials: int) -> jax.Array:
  """Greedy k-means++ seeding (as scikit-learn's), in rounds. [N, D] -> [k, D] centres.

  Each new centre is the best of ``trials`` candidates sampled with probability
  ∝ D² (the one that most reduces the potential sum_x min(D²(x), d(x, c)²)). A round
  samples the candidates of ``batch`` consecutive centres at once (from the D² at the
  start of the round) and scores them with one matmul; the greedy choices inside the
  round then use the exactly updated D². ``batch = 1`` is scikit-learn's algorithm.
  """
  n = x.shape[0]
  x_sq = _sq_norms(x)
  first = jax.random.randint(jax.random.fold_in(key, 0), (), 0, n)
  d2 = jnp.maximum(x_sq + x_sq[first] - 2 * x @ x[first], 0.0)
  rounds = -(-(k - 1) // batch)
  centres = jnp.zeros((1 + rounds * batch, x.shape[1]), x.dtype).at[0].set(x[first])

  def one_round(r, carry):
    centres, d2 = carry
    # Sampling ∝ D² by inverse CDF: O(N) per round, where a Gumbel-max categorical
    # would draw N random numbers per candidate.
    cdf = jnp.cumsum(d2)
    u = jax.random.uniform(jax.random.fold_in(key, r + 1), (batch, trials)) * cdf[-1]
    cand = jnp.minimum(jnp.searchsorted(cdf, u, side="right"), n - 1)
    dist = jnp.maximum(x_sq[:, None] + x_sq[cand.reshape(-1)][None, :]
                       - 2 * x @ x[cand.reshape(-1)].T, 0.0).reshape(n, batch, trials)

    def pick(t, carry):
      d2, chosen = carry
      dt = jax.lax.dynamic_index_in_dim(dist, t, axis=1, keepdims=False)  # [N, trials]
      best = jnp.argmin(jnp.sum(jnp.minimum(d2[:, None], dt), axis=0))
      d2 = jnp.minimum(d2, dt[:, best])
      return d2, chosen.at[t].set(cand[t, best])

    d2, chosen = jax.lax.fori_loop(0, batch, pick, (d2, jnp.zeros((batch,), jnp.int32)))
    centres = jax.lax.dynamic_update_slice_in_dim(centres, x[chosen], 1 + r * batch, 0)
    return centres, d2

  centres, _ = jax.lax.fori_loop(0, rounds, one_round, (centres, d2))
  return centres[:k]


@functools.partial(jax.jit, static_argnames=("num_candidates", "block"))
def _full_assign(x, centres, num_candidates: int, block: int):
  """Nearest centre and the ``num_candidates`` nearest ones, blocked over points."""
  c_sq = _sq_norms(centres)

  def one(xb):
    d = c_sq[None, :] - 2 * xb @ centres.T
    _, cand = jax.lax.top_k(-d, num_candidates)
    return cand

  cand = jax.lax.map(one, x.reshape(-1, block, x.shape[1])).reshape(-1, num_candidates)
  return cand[:, 0], cand


@functools.partial(jax.jit, static_argnames=("block",))
def _candidate_assign(x, centres, cand, block: int):
  c_sq = _sq_norms(centres)

  def one(args):
    xb, cb = args
    d = c_sq[cb] - 2 * jnp.einsum("nd,nmd->nm", xb, centres[cb])
    return jnp.take_along_axis(cb, jnp.argmin(d, axis=1)[:, None], axis=1)[:, 0]

  return jax.lax.map(one, (x.reshape(-1, block, x.shape[1]),
                           cand.reshape(-1, block, cand.shape[1]))).reshape(-1)


@functools.partial(jax.jit, static_argnames=("k",))
def _update_centres(x, assign, valid, centres, k: int):
  w = valid.astype(x.dtype)
  sums = jax.ops.segment_sum(x * w[:, None], assign, num_segments=k)
  counts = jax.ops.segment_sum(w, assign, num_segments=k)
  return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centres)


# The candidates of a k-means++ round are sampled from the D² at the start of the round: a
# round adds at most k / 64 centres, so that batching never crowds one region of the data
# (NMI within 0.01 of scikit-learn's in tests/test_clustering.py).
CENTRES_PER_ROUND_DIVISOR = 64


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, max_full_passes: int = 4,
           candidate_iters: int = 15, num_candidates: int = 8, block: int = 2048,
           init_batch: int = 64, trials: int | None = None) -> np.ndarray:
  """k-means in JAX (see module doc). [N, D] -> [N] cluster assignments.

  ``trials`` defaults to scikit-learn's ``2 + floor(ln k)`` candidates per centre.
  """
  n = x.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"k-means needs 1 <= k <= N; got k={k}, N={n}.")
  block = min(block, n)
  pad = (-n) % block
  xj = jnp.asarray(np.pad(np.asarray(x, np.float32), ((0, pad), (0, 0))))
  valid = jnp.arange(n + pad) < n
  m = min(num_candidates, k)
  trials = trials or 2 + int(np.log(k))
  batch = max(1, min(init_batch, k // CENTRES_PER_ROUND_DIVISOR))
  centres = kmeans_plus_plus(jax.random.PRNGKey(seed), xj[:n], k, batch, trials)
  assign, cand = _full_assign(xj, centres, m, block)
  for _ in range(max_full_passes):
    for _ in range(candidate_iters):
      centres = _update_centres(xj, assign, valid, centres, k)
      new = _candidate_assign(xj, centres, cand, block)
      changed = bool(jnp.any((new != assign) & valid))
      assign = new
      if not changed:
        break
    centres = _update_centres(xj, assign, valid, centres, k)
    new, cand = _full_assign(xj, centres, m, block)
    changed = bool(jnp.any((new != assign) & valid))
    assign = new
    if not changed:
      break
  return np.asarray(assign[:n])


def sklearn_kmeans(x: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
  """scikit-learn's KMeans, as the official IDML evaluation runs it."""
  from sklearn.cluster import KMeans
  return KMeans(n_clusters=k, random_state=seed).fit(x).labels_


# ``jax_plain``: plain k-means++ (one candidate per centre), ~3× faster at SOP scale, but its
# NMI is not scikit-learn's there (0.8705 vs 0.9041 in BENCHMARKS.md): for quick looks only.
KMEANS_BACKENDS = {"jax": kmeans, "jax_plain": functools.partial(kmeans, trials=1),
                   "sklearn": sklearn_kmeans}


def pairwise_f1(labels: np.ndarray, clusters: np.ndarray) -> float:
  """F1 of same-cluster pair decisions against same-class pairs (DML convention)."""
  _, li = np.unique(labels, return_inverse=True)
  _, ci = np.unique(clusters, return_inverse=True)
  joint = np.unique(li.astype(np.int64) * (ci.max() + 1) + ci, return_counts=True)[1]
  pairs = lambda c: float(np.sum(c.astype(np.float64) * (c - 1) / 2))
  tp = pairs(joint)
  pred = pairs(np.bincount(ci))
  true = pairs(np.bincount(li))
  if tp == 0:
    return 0.0
  precision, recall = tp / pred, tp / true
  return 2 * precision * recall / (precision + recall)


def clustering_metrics(embeddings: np.ndarray, labels: np.ndarray, *, backend: str = "jax",
                       seed: int = 0) -> dict[str, float]:
  """``nmi`` and ``f1`` of k-means on the L2-normalised embeddings, as many clusters as classes.

  Args:
    embeddings: [N, D]; labels: [N] int.
    backend: ``jax`` (greedy k-means++ as scikit-learn's, then Lloyd), ``jax_plain``
      (plain k-means++: faster, different NMI on many small clusters) or ``sklearn``
      (the official code's KMeans).
  """
  run = names.lookup(KMEANS_BACKENDS, backend, "k-means backend")
  x, labels = check_embeddings(embeddings, labels, "clustered")
  clusters = run(l2_normalize_np(x), len(np.unique(labels)), seed=seed)
  return {"nmi": float(normalized_mutual_info_score(labels, clusters)),
          "f1": pairwise_f1(labels, clusters)}
