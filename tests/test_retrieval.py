"""Retrieval metrics (§3) against a naive full sort; back-ends agree; bad input refused."""

import naive
import numpy as np
import pytest

from idml_jax.evaluation import knn, retrieval, retrieval_metrics


def _data(seed=0, n=120, classes=25, d=8):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, n)
  centres = rng.standard_normal((classes, d))
  x = centres[y] + rng.standard_normal((n, d)) * 1.2
  return x.astype(np.float32), y


@pytest.mark.parametrize("backend", retrieval.RETRIEVAL_BACKENDS)
def test_all_vs_all_matches_naive(backend):
  x, y = _data()
  y[0] = 999  # A singleton query: a miss for Recall@K, excluded from RP and MAP@R.
  want = naive.retrieval(x, y, x, y, (1, 2, 4, 8), all_vs_all=True)
  got = retrieval_metrics(x, y, ks=(1, 2, 4, 8), backend=backend, block_size=32)
  assert got == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("backend", retrieval.RETRIEVAL_BACKENDS)
def test_query_gallery_matches_naive(backend):
  x, y = _data(1, n=150)
  q, ql, g, gl = x[:60], y[:60], x[60:], y[60:]
  want = naive.retrieval(q, ql, g, gl, (1, 10, 20, 30), all_vs_all=False)
  got = retrieval_metrics(q, ql, g, gl, ks=(1, 10, 20, 30), backend=backend, block_size=32)
  assert got == pytest.approx(want, abs=1e-9)


def test_exact_block_sizes_agree():
  x, y = _data(2, n=200)
  ref = retrieval_metrics(x, y, block_size=4096)
  for bs in (32, 64, 96):
    assert retrieval_metrics(x, y, block_size=bs) == pytest.approx(ref, abs=1e-12)


def test_large_k_recall_uses_true_rank():
  # Recall@K for K beyond the class size must still see the first hit's true rank.
  x, y = _data(3, n=300, classes=100)
  want = naive.retrieval(x, y, x, y, (1, 50, 200), all_vs_all=True)
  got = retrieval_metrics(x, y, ks=(1, 50, 200), block_size=64)
  assert got == pytest.approx(want, abs=1e-9)


def test_knn_backends_return_the_same_neighbours():
  x, _ = _data(4, n=80)
  x = retrieval.l2_normalize_np(x)
  s0, i0 = knn.jax_search(x, x, 5, exclude_self=True, block_size=16)
  s1, i1 = knn.scann_search(x, x, 5, exclude_self=True)
  np.testing.assert_array_equal(i0, i1)
  np.testing.assert_allclose(s0, s1, atol=1e-5)
  assert not np.any(i0 == np.arange(80)[:, None])


def test_scann_ah_close_to_exact_on_larger_gallery():
  x, y = _data(5, n=3000, classes=300, d=16)
  exact = retrieval_metrics(x, y, backend="exact")
  approx = retrieval_metrics(x, y, backend="scann_ah")
  assert abs(exact["recall@1"] - approx["recall@1"]) < 0.02


@pytest.mark.parametrize("bad, match", [
    (dict(query=np.zeros((5, 3)), query_labels=np.zeros(4, int)), "labels must be"),
    (dict(query=np.zeros((5, 3)), query_labels=np.array([0, 1, -1, 0, 1])), ">= 0"),
    (dict(query=np.full((5, 3), np.nan), query_labels=np.zeros(5, int)), "NaN"),
    (dict(query=np.ones((5, 3)), query_labels=np.zeros(5, int), ks=(1, 8)), "Recall@8"),
    (dict(query=np.ones((5, 3)), query_labels=np.zeros(5, float)), "integers"),
    (dict(query=np.ones((5, 3)), query_labels=np.zeros(5, int), backend="faiss"), "valid"),
    (dict(query=np.ones((5, 3)), query_labels=np.zeros(5, int), gallery=np.ones((4, 2)),
          gallery_labels=np.zeros(4, int)), "dim"),
])
def test_bad_input_is_refused(bad, match):
  with pytest.raises(ValueError, match=match):
    retrieval_metrics(**bad)


def test_public_evaluate_api_all_metrics_in_one_call():
  from idml_jax import evaluate
  from idml_jax.evaluation import clustering_metrics

  rng = np.random.default_rng(7)
  y = np.repeat(np.arange(8), 5)
  x = (rng.standard_normal((8, 6))[y] + 0.5 * rng.standard_normal((40, 6))).astype(np.float32)
  got = evaluate.retrieval_metrics(x, y, recall_ks=(1, 4))
  want = naive.retrieval(x, y, x, y, (1, 4), all_vs_all=True)
  for k, v in want.items():
    assert got[k] == pytest.approx(v, abs=1e-6), k
  assert got["nmi"] == clustering_metrics(x, y)["nmi"] and 0 <= got["f1"] <= 1
  qg = evaluate.query_gallery_metrics(x[:10], y[:10], x[10:], y[10:], recall_ks=(1, 2))
  assert set(qg) == {"recall@1", "recall@2", "r_precision", "map@r"}
  with pytest.raises(ValueError, match="NaN|finite"):
    evaluate.retrieval_metrics(np.full((4, 2), np.nan), np.arange(4) % 2)


@pytest.mark.parametrize("gallery", [False, True])
def test_exact_grouped_candidates_match_naive(gallery):
  # Blocks of 256 with classes of <= 3 other items: the grouped top-P candidates are used.
  rng = np.random.default_rng(9)
  y = np.repeat(np.arange(200), 3)[:560]
  x = (rng.standard_normal((200, 16))[y] + rng.standard_normal((560, 16))).astype(np.float32)
  if gallery:
    q, ql, g, gl = x[::2], y[::2], x[1::2], y[1::2]
    want = naive.retrieval(q, ql, g, gl, (1, 10, 100), all_vs_all=False)
    got = retrieval_metrics(q, ql, g, gl, ks=(1, 10, 100), block_size=256)
  else:
    want = naive.retrieval(x, y, x, y, (1, 10, 100), all_vs_all=True)
    got = retrieval_metrics(x, y, ks=(1, 10, 100), block_size=256)
  assert got == pytest.approx(want, abs=1e-9)
