"""Risk–coverage, AURC / E-AURC and ECE against naive computations: the expectation over
tie orders by enumerating every ordering, ECE bin by bin with explicit comparisons."""

import itertools
import math

import numpy as np
import pytest

from idml_jax.evaluation import selective


def orderings(conf):
  """Every ordering of the items by decreasing confidence (each tied group permuted)."""
  groups = [[i for i in range(len(conf)) if conf[i] == v] for v in sorted(set(conf), reverse=True)]
  for parts in itertools.product(*[itertools.permutations(g) for g in groups]):
    yield [i for part in parts for i in part]


def naive_expected_curve(conf, correct):
  """risk(i), averaged over every ordering consistent with decreasing confidence."""
  n = len(conf)
  curves = [np.cumsum([1 - correct[p] for p in perm]) / np.arange(1, n + 1)
            for perm in orderings(list(conf))]
  return np.mean(curves, axis=0)


def naive_aurc(conf, correct):
  curve = naive_expected_curve(conf, correct)
  oracle = naive_expected_curve(list(correct), correct)  # Correct answers first.
  return curve.mean(), curve.mean() - oracle.mean(), curve


def test_hand_computed_example():
  # risks at i = 1..4: 0, 1/2, 1/3, 2/4; the oracle's: 0, 0, 1/3, 1/2.
  rc = selective.risk_coverage(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
  assert rc["aurc"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
  assert rc["eaurc"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4 - (1 / 3 + 1 / 2) / 4)


@pytest.mark.parametrize("seed", range(6))
def test_aurc_and_curve_equal_the_average_over_tie_orders(seed):
  rng = np.random.default_rng(seed)
  n = 7
  conf = rng.integers(0, 3, n).astype(float)  # Many ties.
  correct = rng.integers(0, 2, n)
  aurc, eaurc, curve = naive_aurc(list(conf), list(correct))
  rc = selective.risk_coverage(conf, correct)
  np.testing.assert_allclose(rc["curve"], curve, atol=1e-12)
  assert rc["aurc"] == pytest.approx(aurc) and rc["eaurc"] == pytest.approx(eaurc)


def test_a_constant_score_carries_no_information():
  correct = np.array([1, 0, 0, 1, 1, 1, 0, 1])
  rc = selective.risk_coverage(np.full(8, 0.3), correct)
  np.testing.assert_allclose(rc["curve"], 3 / 8)
  assert rc["aurc"] == pytest.approx(3 / 8)
  assert rc["eaurc"] > 0
  assert rc["risk"] == pytest.approx([3 / 8] * 10)


def test_perfect_and_inverted_orderings():
  correct = np.array([1, 1, 1, 0, 0])
  assert selective.risk_coverage(correct.astype(float), correct)["eaurc"] == pytest.approx(0)
  aurc, eaurc, _ = naive_aurc([0, 0, 0, 1, 1], list(correct))
  rc = selective.risk_coverage(-correct.astype(float), correct)
  assert rc["aurc"] == pytest.approx(aurc) and rc["eaurc"] == pytest.approx(eaurc)
  assert rc["aurc"] > selective.risk_coverage(np.zeros(5), correct)["aurc"]


def test_metric_on_the_most_confident_fraction():
  conf = np.array([5.0, 4.0, 4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 0.0, -1.0])
  correct = np.array([1, 1, 0, 1, 0, 1, 0, 0, 1, 0])
  ap = np.array([1.0, 0.5, np.nan, 0.25, 0.0, 1.0, 0.0, 0.5, 1.0, 0.0])
  rc = selective.risk_coverage(conf, correct, {"recall@1": correct, "map@r": ap})
  orders = list(orderings(list(conf)))  # Naive: every order, the first k items' mean.
  assert len(orders) == 2 * 6
  for c, r1, m in zip(rc["coverage"], rc["recall@1"], rc["map@r"], strict=True):
    k = math.ceil(c * 10 - 1e-9)
    want_r1 = np.mean([np.mean(correct[list(p[:k])]) for p in orders])
    want_map = np.mean([np.mean(np.nan_to_num(ap)[list(p[:k])]) for p in orders])
    assert r1 == pytest.approx(want_r1) and m == pytest.approx(want_map)


def test_non_finite_confidence_is_refused():
  with pytest.raises(ValueError, match="confidence scores"):
    selective.risk_coverage(np.array([0.1, np.nan]), np.array([1, 0]))


def naive_ece(conf, correct, bins=15):
  edges = np.linspace(0, 1, bins + 1)
  total = 0.0
  for b in range(bins):
    sel = [(c > edges[b] or (b == 0 and c == 0)) and c <= edges[b + 1] for c in conf]
    sel = np.array(sel)
    if sel.any():
      total += sel.mean() * abs(np.mean(np.asarray(correct)[sel]) - np.mean(np.asarray(conf)[sel]))
  return total


@pytest.mark.parametrize("seed", range(4))
def test_ece_equals_the_naive_bin_loop_including_bin_edges(seed):
  rng = np.random.default_rng(seed)
  conf = np.concatenate([rng.uniform(0, 1, 40), np.arange(16) / 15, [0.0, 1.0]])
  correct = rng.integers(0, 2, len(conf))
  got = selective.expected_calibration_error(conf, correct)
  assert got["ece"] == pytest.approx(naive_ece(conf, correct))
  assert sum(got["bin_count"]) == len(conf)


def test_ece_of_a_calibrated_and_an_overconfident_classifier():
  conf = np.full(100, 0.7)
  assert selective.expected_calibration_error(conf, np.arange(100) < 70)["ece"] == pytest.approx(0)
  assert selective.expected_calibration_error(np.ones(10), np.zeros(10))["ece"] == pytest.approx(1)


def test_softmax_confidence_is_stable_and_exact():
  logits = np.array([[1000.0, 999.0, -1000.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
  want = [1 / (1 + math.exp(-1)), 1 / 3, math.exp(3) / (math.exp(1) + math.exp(2) + math.exp(3))]
  np.testing.assert_allclose(selective.softmax_confidence(logits), want, rtol=1e-12)


def test_report_names_every_score_and_the_oracle_is_perfect():
  rng = np.random.default_rng(0)
  correct = rng.integers(0, 2, 50).astype(bool)
  scores = selective.confidence_scores(uncertainty_norm=rng.uniform(size=50),
                                       nearest_score=rng.uniform(size=50),
                                       second_score=rng.uniform(size=50) - 1)
  scalars, curves, undefined = selective.selective_report(scores, correct, {"recall@1": correct})
  assert set(scalars) == {f"{m}_{s}" for m in ("aurc", "eaurc", "rauroc")
                          for s in ("uncertainty", "nearest", "gap")}
  assert undefined == {}
  groups = np.arange(50) % 7
  scalars, curves, _ = selective.selective_report(scores, correct, {"recall@1": correct}, groups)
  assert {"aurc_combined", "eaurc_combined", "rauroc_combined"} <= set(scalars)
  assert curves["oracle"]["eaurc"] == pytest.approx(0)
  assert len(curves["nearest"]["risk"]) == 100 and curves["nearest"]["risk"][-1] == \
      pytest.approx(1 - correct.mean())
  # A one-item gallery has no second neighbor: no gap score.
  assert "gap" not in selective.confidence_scores(nearest_score=np.ones(3),
                                                  second_score=np.full(3, -np.inf))


def test_eaurc_oracle_orders_fractional_outcomes():
  """The oracle answers the best outcomes first, fractional ones too (MAP@R-like values): its
  AURC is the mean of the prefix means of the risks sorted ascending, by a loop."""
  correct = np.array([0.5, 0.9, 0.2, 1.0, 0.0, 0.3])
  risks = sorted(1.0 - correct)
  oracle_aurc = np.mean([np.mean(risks[:i]) for i in range(1, len(risks) + 1)])
  out = selective.risk_coverage(np.arange(6.0), correct)
  assert out["aurc"] - out["eaurc"] == pytest.approx(oracle_aurc, rel=1e-12)
  assert out["eaurc"] >= 0


def test_uncertainty_report_counts_dead_and_saturated_heads():
  from idml_jax.evaluation import uncertainty_report
  u = np.array([0.0, 0.0, 1e-7, 0.3, 0.995, 1.0, 0.5, 0.99])
  failed = np.array([0, 1, 0, 1, 1, 0, 0, 1], bool)
  got = uncertainty_report(u, failed)
  assert got["uncertainty_zero_fraction"] == 3 / 8  # <= 1e-6
  assert got["uncertainty_bound_fraction"] == 3 / 8  # >= 0.99
  assert got["uncertainty_mean"] == pytest.approx(u.mean())
  x, y = u - u.mean(), failed - failed.mean()
  assert got["uncertainty_failure_corr"] == pytest.approx((x @ y) / np.sqrt((x @ x) * (y @ y)))


def naive_rauroc(conf, correct):
  """Every (success, failure) pair: 1 if the success is more confident, 1/2 if tied."""
  ok = [c for c, y in zip(conf, correct, strict=True) if y]
  bad = [c for c, y in zip(conf, correct, strict=True) if not y]
  wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in ok for b in bad)
  return wins / (len(ok) * len(bad))


@pytest.mark.parametrize("seed", range(6))
def test_rauroc_equals_the_pairwise_count_with_ties(seed):
  rng = np.random.default_rng(seed)
  n = 40
  conf = rng.integers(0, 5, n).astype(float) if seed % 2 else rng.normal(size=n)  # Ties or not.
  correct = rng.integers(0, 2, n).astype(bool)
  assert selective.rauroc(conf, correct) == pytest.approx(naive_rauroc(conf, correct), abs=1e-12)


def test_rauroc_of_constant_perfect_and_inverted_scores():
  correct = np.array([1, 0, 1, 1, 0], bool)
  assert selective.rauroc(np.full(5, 0.3), correct) == 0.5
  assert selective.rauroc(correct.astype(float), correct) == 1.0
  assert selective.rauroc(-correct.astype(float), correct) == 0.0


def test_rauroc_is_undefined_without_failures_or_successes():
  assert selective.rauroc(np.arange(4.0), np.ones(4, bool)) is None
  assert selective.rauroc(np.arange(4.0), np.zeros(4, bool)) is None
  scores = {"nearest": np.arange(4.0), "gap": np.ones(4)}
  scalars, curves, undefined = selective.selective_report(scores, np.ones(4, bool),
                                                          {"recall@1": np.ones(4)}, np.arange(4))
  assert "rauroc_nearest" not in scalars and curves["nearest"]["rauroc"] is None
  assert "no query's top-1 is wrong" in undefined["rauroc"]
  assert "Every top-1 is right" in undefined["combined"]


def test_rauroc_and_aurc_order_two_scores_alike_when_one_dominates():
  """A score that ranks every failure below every success (AUROC 1, the oracle's AURC) beats
  one that swaps a pair, on both figures; and a score that is a monotone transform of another
  has the same R-AUROC and AURC."""
  rng = np.random.default_rng(0)
  correct = rng.integers(0, 2, 60).astype(bool)
  perfect = correct + rng.uniform(0, 0.5, 60)
  swapped = perfect.copy()
  i, j = np.flatnonzero(correct)[0], np.flatnonzero(~correct)[0]
  swapped[i], swapped[j] = perfect[j], perfect[i]
  for better, worse in ((perfect, swapped), (swapped, rng.normal(size=60))):
    assert selective.rauroc(better, correct) > selective.rauroc(worse, correct)
    assert (selective.risk_coverage(better, correct)["aurc"]
            < selective.risk_coverage(worse, correct)["aurc"])
  assert selective.rauroc(np.exp(3 * swapped), correct) == selective.rauroc(swapped, correct)
