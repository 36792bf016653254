"""NMI / F1 (docs/algorithms.md §3): pairwise F1 against enumerated pairs; JAX k-means
against scikit-learn."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from idml_jax.evaluation import clustering


def test_pairwise_f1_matches_enumerated_pairs():
  rng = np.random.default_rng(0)
  labels, clusters = rng.integers(0, 4, 40), rng.integers(0, 5, 40)
  tp = fp = fn = 0
  for i, j in itertools.combinations(range(40), 2):
    same_c, same_k = labels[i] == labels[j], clusters[i] == clusters[j]
    tp += same_c and same_k
    fp += same_k and not same_c
    fn += same_c and not same_k
  p, r = tp / (tp + fp), tp / (tp + fn)
  assert clustering.pairwise_f1(labels, clusters) == pytest.approx(2 * p * r / (p + r))


@pytest.mark.parametrize("trials", [None, 1])  # Greedy (backend jax) and plain (jax_plain).
def test_kmeans_is_a_local_optimum_and_recovers_clear_clusters(trials):
  rng = np.random.default_rng(1)
  centres = rng.standard_normal((6, 5)) * 10
  y = np.repeat(np.arange(6), 30)
  x = (centres[y] + rng.standard_normal((180, 5))).astype(np.float32)
  assign = clustering.kmeans(x, 6, seed=0, block=64, trials=trials)
  assert normalized_mutual_info_score(y, assign) == pytest.approx(1.0)
  # Lloyd fixed point: every point is nearest to its own cluster's mean.
  means = np.stack([x[assign == k].mean(0) for k in range(6)])
  d = ((x[:, None] - means[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(d.argmin(1), assign)


def test_nmi_agrees_with_scikit_learn_kmeans_on_many_small_clusters():
  # Retrieval-like regime: many classes of a few images each, overlapping classes.
  rng = np.random.default_rng(2)
  classes, dim = 300, 32
  y = np.repeat(np.arange(classes), rng.integers(2, 9, classes))
  centres = rng.standard_normal((classes, dim))
  x = (centres[y] + rng.standard_normal((len(y), dim)) * 0.6).astype(np.float32)
  ours = clustering.clustering_metrics(x, y, backend="jax")
  theirs = clustering.clustering_metrics(x, y, backend="sklearn")
  assert abs(ours["nmi"] - theirs["nmi"]) < 0.01
  assert abs(ours["f1"] - theirs["f1"]) < 0.05


def test_bad_input_is_refused():
  with pytest.raises(ValueError, match="NaN"):
    clustering.clustering_metrics(np.full((4, 2), np.nan), np.arange(4))
  with pytest.raises(ValueError, match=r"labels must be \[N\] = \[4\]"):
    clustering.clustering_metrics(np.ones((4, 2)), np.arange(3))
  with pytest.raises(ValueError, match="valid"):
    clustering.clustering_metrics(np.ones((4, 2)), np.arange(4), backend="faiss")


def test_kmeans_plus_plus_samples_proportional_to_squared_distance():
  # Points 0, 1, 3 on a line: the first centre is uniform, the second is drawn with
  # probability D(x)² / sum D² from the first (trials=1: plain k-means++).
  pts = np.array([0.0, 1.0, 3.0])
  keys = jax.random.split(jax.random.PRNGKey(0), 6000)
  draw = jax.jit(jax.vmap(lambda k: clustering.kmeans_plus_plus(k, jnp.asarray(pts[:, None]),
                                                                2, 1, 1)[:, 0]))
  freq = np.zeros((3, 3))
  for a, b in np.asarray(draw(keys)):
    freq[np.argmin(np.abs(pts - a)), np.argmin(np.abs(pts - b))] += 1
  want = np.array([(pts - p) ** 2 / np.sum((pts - p) ** 2) / 3 for p in pts])
  np.testing.assert_allclose(freq / len(keys), want, atol=0.02)
