"""Retrieval metrics (§3) against a naive full sort; every back-end agrees, ties included."""

import naive
import numpy as np
import pytest

from idml_jax import evaluation
from idml_jax.evaluation import knn, query_gallery_metrics, query_ranks, retrieval_metrics
from idml_jax.evaluation.retrieval import RETRIEVAL_BACKENDS
from idml_jax.ops import l2_normalize_np


def _data(seed=0, n=120, classes=25, d=8):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, n)
  centres = rng.standard_normal((classes, d))
  x = centres[y] + rng.standard_normal((n, d)) * 1.2
  return x.astype(np.float32), y


@pytest.mark.parametrize("backend", RETRIEVAL_BACKENDS)
def test_all_vs_all_matches_naive(backend):
  x, y = _data()
  y[0] = 999  # A singleton query: a miss for Recall@K, excluded from RP and MAP@R.
  want = naive.retrieval(x, y, x, y, (1, 2, 4, 8), all_vs_all=True)
  got = retrieval_metrics(x, y, recall_ks=(1, 2, 4, 8), backend=backend, block_size=32)
  assert got == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("backend", RETRIEVAL_BACKENDS)
def test_query_gallery_matches_naive(backend):
  x, y = _data(1, n=150)
  q, ql, g, gl = x[:60], y[:60], x[60:], y[60:]
  want = naive.retrieval(q, ql, g, gl, (1, 10, 20, 30), all_vs_all=False)
  got = query_gallery_metrics(q, ql, g, gl, recall_ks=(1, 10, 20, 30), backend=backend,
                              block_size=32)
  assert got == pytest.approx(want, abs=1e-9)


def test_per_query_values_and_nearest_scores_match_naive():
  x, y = _data(8, n=90, classes=12)
  ranks = query_ranks(x, y, max_k=8, block_size=32)
  _, per = naive.retrieval(x, y, x, y, (1,), all_vs_all=True, per_query=True)
  np.testing.assert_array_equal(ranks.first_hit_rank, per["first_hit"])
  mine = ranks.per_query()
  np.testing.assert_allclose(mine["r_precision"], per["r_precision"], atol=1e-12)
  np.testing.assert_allclose(mine["map@r"], per["map@r"], atol=1e-12)
  sim = naive.normalize(x) @ naive.normalize(x).T
  np.fill_diagonal(sim, -np.inf)
  top2 = -np.sort(-sim, axis=1)[:, :2]
  np.testing.assert_allclose(ranks.nearest_score, top2[:, 0], atol=1e-6)
  np.testing.assert_allclose(ranks.second_score, top2[:, 1], atol=1e-6)
  for backend in ("exact_device", "exact_host"):
    other = query_ranks(x, y, max_k=8, backend=backend)
    np.testing.assert_allclose(other.nearest_score, top2[:, 0], atol=1e-6)
    np.testing.assert_allclose(other.second_score, top2[:, 1], atol=1e-6)


def test_exact_block_sizes_agree():
  x, y = _data(2, n=200)
  ref = retrieval_metrics(x, y, block_size=4096)
  for bs in (32, 64, 96):
    assert retrieval_metrics(x, y, block_size=bs) == pytest.approx(ref, abs=1e-12)


def test_large_k_recall_uses_true_rank():
  # Recall@K for K beyond the class size must still see the first hit's true rank.
  x, y = _data(3, n=300, classes=100)
  want = naive.retrieval(x, y, x, y, (1, 50, 200), all_vs_all=True)
  got = retrieval_metrics(x, y, recall_ks=(1, 50, 200), block_size=64)
  assert got == pytest.approx(want, abs=1e-9)


def _degenerate(kind, n=60, d=8, seed=0):
  """Embeddings of a collapsed or broken model, with class-sorted labels (the worst case
  for a tie rule that favours the relevant item)."""
  y = np.repeat(np.arange(6), n // 6)
  rng = np.random.default_rng(seed)
  if kind == "constant":
    return np.full((n, d), 0.3, np.float32), y
  if kind == "zero":
    return np.zeros((n, d), np.float32), y
  if kind == "huge":  # Squares overflow float32: a naive normalisation gives zeros.
    centres = rng.standard_normal((6, d))
    return ((centres[y] + rng.standard_normal((n, d))) * 1e30).astype(np.float32), y
  if kind == "duplicated":  # Pairs of identical rows, half across classes.
    x = rng.standard_normal((n // 2, d)).astype(np.float32)
    return np.concatenate([x, x]), np.concatenate([y[: n // 2], rng.permutation(y[n // 2:])])
  raise ValueError(kind)


@pytest.mark.parametrize("kind", ["constant", "zero", "huge", "duplicated"])
@pytest.mark.parametrize("gallery", [False, True])
def test_degenerate_embeddings_same_metrics_on_every_backend(kind, gallery):
  x, y = _degenerate(kind)
  ks = (1, 2, 4)
  if gallery:
    q, ql, g, gl = x[::2], y[::2], x[1::2], y[1::2]
    want = naive.retrieval(q, ql, g, gl, ks, all_vs_all=False)
    run = lambda b, bs: query_gallery_metrics(q, ql, g, gl, recall_ks=ks, backend=b, block_size=bs)
  else:
    want = naive.retrieval(x, y, x, y, ks, all_vs_all=True)
    run = lambda b, bs: retrieval_metrics(x, y, recall_ks=ks, backend=b, block_size=bs)
  for backend in RETRIEVAL_BACKENDS:
    for block in (32, 4096):
      assert run(backend, block) == pytest.approx(want, abs=1e-9), (backend, block)


def test_constant_embeddings_get_chance_level_recall_not_a_perfect_score():
  rng = np.random.default_rng(4)
  y = rng.permutation(np.repeat(np.arange(10), 12))
  x = np.ones((120, 16), np.float32)
  got = retrieval_metrics(x, y, recall_ks=(1, 4))
  chance = np.mean([(np.sum(y == c) - 1) / (len(y) - 1) for c in y])
  assert abs(got["recall@1"] - chance) < 0.06
  assert got["map@r"] < 0.2


def test_normalisation_survives_values_whose_squares_overflow():
  x = np.array([[3e38, 3e38, 0.0], [-1e-40, 0.0, 2e-40], [0.0, 0.0, 0.0]], np.float32)
  got = l2_normalize_np(x)
  np.testing.assert_allclose(got, naive.normalize(x), rtol=1e-6)  # float64, as stored.
  np.testing.assert_allclose(got[0], [0.70710677, 0.70710677, 0], rtol=1e-6)


def test_knn_backends_return_the_same_neighbors():
  x, _ = _data(4, n=80)
  x = l2_normalize_np(x)
  s0, i0 = knn.jax_search(x, x, 5, exclude_self=True, block_size=16)
  s1, i1 = knn.scann_search(x, x, 5, exclude_self=True)
  np.testing.assert_array_equal(i0, i1)
  np.testing.assert_allclose(s0, s1, atol=1e-5)
  assert not np.any(i0 == np.arange(80)[:, None])


def test_scann_ah_close_to_exact_on_larger_gallery():
  x, y = _data(5, n=3000, classes=300, d=16)
  exact = retrieval_metrics(x, y, backend="rank_count")
  approx = retrieval_metrics(x, y, backend="approximate")
  assert abs(exact["recall@1"] - approx["recall@1"]) < 0.02


@pytest.mark.parametrize("bad, match", [
    (dict(embeddings=np.zeros((5, 3)), labels=np.zeros(4, int)), "labels must be"),
    (dict(embeddings=np.zeros((5, 3)), labels=np.array([0, 1, -1, 0, 1])), ">= 0"),
    (dict(embeddings=np.full((5, 3), np.nan), labels=np.zeros(5, int)), "NaN"),
    (dict(embeddings=np.ones((5, 3)), labels=np.zeros(5, int), recall_ks=(1, 8)), "Recall@8"),
    (dict(embeddings=np.ones((5, 3)), labels=np.zeros(5, float)), "integers"),
    (dict(embeddings=np.ones((5, 3)), labels=np.zeros(5, int), backend="faiss"), "valid"),
    (dict(embeddings=np.ones((5, 3)), labels=np.zeros(5, int), recall_ks=(-1,)), "positive"),
    (dict(embeddings=np.ones((5, 3)), labels=np.zeros(5, int), recall_ks=(0, 1)), "positive"),
    (dict(embeddings=np.ones((5, 3)), labels=np.zeros(5, int), recall_ks=(1.5,)), "positive"),
    (dict(embeddings=np.ones((5, 3)), labels=np.zeros(5, int), recall_ks=()), "positive"),
])
def test_bad_input_is_refused(bad, match):
  with pytest.raises(ValueError, match=match):
    retrieval_metrics(**bad)
  if match == "NaN":
    with pytest.raises(evaluation.NonFiniteEmbeddingsError, match="1 of 5|5 of 5"):
      retrieval_metrics(**bad)


def test_query_gallery_dimension_mismatch_is_refused():
  with pytest.raises(ValueError, match="dim"):
    query_gallery_metrics(np.ones((5, 3)), np.zeros(5, int), np.ones((4, 2)), np.zeros(4, int))


@pytest.mark.parametrize("gallery", [False, True])
def test_exact_grouped_candidates_match_naive(gallery):
  # Blocks of 256 with classes of <= 3 other items: the grouped top-P candidates are used.
  rng = np.random.default_rng(9)
  y = np.repeat(np.arange(200), 3)[:560]
  x = (rng.standard_normal((200, 16))[y] + rng.standard_normal((560, 16))).astype(np.float32)
  if gallery:
    q, ql, g, gl = x[::2], y[::2], x[1::2], y[1::2]
    want = naive.retrieval(q, ql, g, gl, (1, 10, 100), all_vs_all=False)
    got = query_gallery_metrics(q, ql, g, gl, recall_ks=(1, 10, 100), block_size=256)
  else:
    want = naive.retrieval(x, y, x, y, (1, 10, 100), all_vs_all=True)
    got = retrieval_metrics(x, y, recall_ks=(1, 10, 100), block_size=256)
  assert got == pytest.approx(want, abs=1e-9)


def _near_tied(seed: int, n: int = 150, classes: int = 25, d: int = 8, cluster: int = 0):
  """``_data`` with 22 rows replaced by copies of others: 17 with two entries moved by one
  float32 ulp, 5 exact (half in their source's class); ``cluster`` more rows become
  one-ulp copies of one row, in any class (a near-tie band wider than a class). None if any
  (relevant, other) pair of some query is neither clearly tied (|Δs| < tol / 4 in float64)
  nor clearly apart (> 4 tol)."""
  x, y = _data(seed, n, classes, d)
  rng = np.random.default_rng(seed + 100)
  picked = rng.choice(n, 45 + cluster, replace=False)
  src, dst = picked[:44].reshape(2, 22)
  x[dst] = x[src]
  x[dst[:17], :2] = np.nextafter(x[dst[:17], :2], np.float32(np.inf))
  band = picked[44:]
  x[band] = x[band[0]]
  x[band[1:], np.arange(1, len(band)) % d] = np.nextafter(
      x[band[1:], np.arange(1, len(band)) % d], np.float32(np.inf))
  y[dst[::2]] = y[src[::2]]  # Half the copies in their source's class, half elsewhere.
  tol = evaluation.retrieval.TIE_TOLERANCE
  sim = naive.normalize(x) @ naive.normalize(x).T
  delta = np.abs(sim[:, :, None] - sim[:, None, :])
  mixed = (y[None, :, None] == y[:, None, None]) != (y[None, None, :] == y[:, None, None])
  gray = mixed & (delta >= tol / 4) & (delta <= 4 * tol)
  return None if gray.any() else (x, y)


@pytest.mark.parametrize("cluster", [0, 30])
@pytest.mark.parametrize("gallery", [False, True])
def test_near_ties_match_a_float64_ranking_with_tolerance_on_every_backend(gallery, cluster,
                                                                           caplog):
  # Rows equal to within float32 rounding are ties for every query, ordered by gallery
  # index: exact arithmetic cannot tell them apart, and the relevant one must not win by
  # rounding (it did: relevant items were scored by an einsum, the rest by a matmul). A
  # band of 30 near-ties is wider than the exact back-end's top W: counted item by item.
  x, y = next(d for d in (_near_tied(s, cluster=cluster) for s in range(20)) if d is not None)
  tol, ks = evaluation.retrieval.TIE_TOLERANCE, (1, 2, 4, 8)
  if gallery:
    q, ql, g, gl = x[::3], y[::3], x, y
    want = naive.retrieval(q, ql, g, gl, ks, all_vs_all=False, tol=tol)
    run = lambda b, bs: query_gallery_metrics(q, ql, g, gl, recall_ks=ks, backend=b,
                                              block_size=bs)
  else:
    want = naive.retrieval(x, y, x, y, ks, all_vs_all=True, tol=tol)
    run = lambda b, bs: retrieval_metrics(x, y, recall_ks=ks, backend=b, block_size=bs)
  with caplog.at_level("INFO"):
    for backend in RETRIEVAL_BACKENDS:
      for block in (32, 4096):
        assert run(backend, block) == pytest.approx(want, abs=1e-9), (backend, block)
  assert ("counted item by item" in caplog.text) == bool(cluster)


@pytest.mark.parametrize("eps", [1e-7, 1e-6, 1e-5])
def test_embeddings_collapsed_to_within_float32_rounding_score_chance(eps):
  # 1,000 rows differing by eps around one vector, 100 classes of 10: chance R@1 = 9/999.
  r = np.random.default_rng(0)
  x = (r.normal(size=(1, 512)) + eps * r.normal(size=(1000, 512))).astype(np.float32)
  y = r.permutation(np.repeat(np.arange(100), 10))
  for backend in RETRIEVAL_BACKENDS:
    got = retrieval_metrics(x, y, recall_ks=(1,), backend=backend)
    assert got["recall@1"] < 0.03 and got["map@r"] < 0.03, (backend, got)
