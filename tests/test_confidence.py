"""The fitted confidence (``combined``): its penalised logistic fit against a naive Newton
solver, its cross-fitting (no class in two folds, no leak), and its refusals."""

import numpy as np
import pytest

from idml_jax.evaluation import confidence, selective


def naive_logistic(z, y, prior, strength, steps=60):
  """Newton's method on sum(log-loss) + strength·N/2·||w − prior||², the intercept free, in
  float64."""
  n, d = z.shape
  zb = np.hstack([z, np.ones((n, 1))])
  w = np.zeros(d + 1)
  centre = np.append(prior, 0.0)
  penalty = np.diag([strength * n] * d + [0.0])
  for _ in range(steps):
    p = 1.0 / (1.0 + np.exp(-zb @ w))
    grad = zb.T @ (p - y) + penalty @ (w - centre)
    hess = zb.T @ (zb * (p * (1 - p))[:, None]) + penalty
    w -= np.linalg.solve(hess, grad)
  return w[:-1], w[-1]


def _scores(rng, n):
  return {"nearest": rng.normal(0.6, 0.1, n), "gap": rng.exponential(0.05, n),
          "uncertainty": -rng.uniform(0, 1, n)}


@pytest.mark.parametrize("strength", [0.0, confidence.PRIOR_STRENGTH, 1.0])
def test_fit_equals_a_naive_newton_solver_on_standardised_scores(strength):
  rng = np.random.default_rng(0)
  n = 300
  scores = _scores(rng, n)
  logit = 20 * (scores["nearest"] - 0.6) + 2 * scores["uncertainty"] + 1
  correct = rng.random(n) < 1 / (1 + np.exp(-logit))
  model = confidence.fit(scores, correct, strength)
  x = np.stack(list(scores.values()), axis=1)
  mean, sd = x.mean(0), x.std(0)
  w, b = naive_logistic((x - mean) / sd, correct.astype(float), np.array([1.0, 0.0, 0.0]),
                        strength)
  np.testing.assert_allclose(model.mean, mean, rtol=1e-12)
  np.testing.assert_allclose(model.scale, sd, rtol=1e-12)
  np.testing.assert_allclose(model.weights, w, atol=1e-6)
  assert model.bias == pytest.approx(b, abs=1e-6)
  assert model.weights[0] > 0 and model.weights[2] > 0  # Both informative scores count.
  np.testing.assert_allclose(model.log_odds(scores), ((x - mean) / sd) @ w + b, atol=1e-5)
  again = confidence.ConfidenceModel.from_dict(model.to_dict())
  np.testing.assert_array_equal(again.log_odds(scores), model.log_odds(scores))
  if strength == 1.0:  # A strong prior keeps the nearest-similarity rule: (1, 0, 0).
    np.testing.assert_allclose(model.weights, [1.0, 0.0, 0.0], atol=0.2)


def test_a_constant_score_weighs_nothing():
  rng = np.random.default_rng(1)
  correct = rng.random(100) < 0.5
  model = confidence.fit({"nearest": correct + rng.normal(0, 1, 100),
                          "uncertainty": np.zeros(100)}, correct)
  assert model.scale[1] == 1.0 and model.weights[1] == pytest.approx(0.0, abs=1e-9)


def test_no_class_is_in_two_folds_and_the_folds_are_balanced():
  rng = np.random.default_rng(2)
  groups = rng.integers(0, 23, 500)
  fold = confidence.class_folds(groups)
  assert set(fold) == set(range(confidence.FOLDS))
  for g in np.unique(groups):
    assert len(set(fold[groups == g])) == 1
  sizes = np.bincount(fold)
  assert sizes.max() - sizes.min() <= np.bincount(groups).max()
  assert set(confidence.class_folds(np.array([3, 3, 7, 7, 7]))) == {0, 1}  # Two classes.


@pytest.mark.parametrize("strength", [0.0, confidence.PRIOR_STRENGTH])
def test_cross_fitted_scores_of_independent_scores_carry_nothing(strength):
  """Scores drawn independently of the outcomes: the cross-fitted ``combined`` has R-AUROC
  0.5 up to noise, over 30 draws. A model fitted on every query (it saw each one's label)
  scores the same draws ~0.57 without the prior: the test fails on that leak."""
  got = []
  for seed in range(30):
    rng = np.random.default_rng(seed)
    n = 200
    scores = {name: rng.normal(size=n) for name in ("nearest", "gap", "uncertainty")}
    correct = rng.random(n) < 0.6
    combined = confidence.cross_fitted(scores, correct, rng.integers(0, 20, n),
                                       strength=strength)
    got.append(selective.rauroc(combined, correct))
  assert 0.46 < np.mean(got) < 0.53


def _two_kinds_of_failure(seed, n=1200):
  """Failures of two kinds, each seen by one score only."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 40, n)
  miss_a, miss_b = rng.random(n) < 0.15, rng.random(n) < 0.15
  scores = {"nearest": rng.normal(0, 1, n) - 2 * miss_a,
            "uncertainty": rng.normal(0, 1, n) - 2 * miss_b}
  return scores, ~(miss_a | miss_b), labels


def test_cross_fitted_combined_beats_each_score_where_each_tells_half():
  scores, correct, labels = _two_kinds_of_failure(3)
  combined = confidence.cross_fitted(scores, correct, labels)
  auroc = {k: selective.rauroc(v, correct) for k, v in {**scores, "combined": combined}.items()}
  assert auroc["combined"] > max(auroc["nearest"], auroc["uncertainty"]) + 0.05


def test_where_only_the_nearest_similarity_tells_combined_ranks_as_it_does():
  """The other score's relation to the errors flips from class to class (none overall): the
  prior keeps ``combined`` at the nearest similarity's R-AUROC; without it, cross-fitting by
  class learns the other folds' relation, the opposite of the held-out fold's, and loses."""
  gaps = {0.0: [], confidence.PRIOR_STRENGTH: []}
  for seed in range(6):
    rng = np.random.default_rng(seed)
    n, classes = 1200, 30
    labels = rng.integers(0, classes, n)
    sign = rng.choice([-1.0, 1.0], classes)[labels]  # Per class, u helps or misleads.
    miss = rng.random(n) < 0.3
    scores = {"nearest": rng.normal(0, 1, n) - 0.8 * miss,
              "uncertainty": rng.normal(0, 1, n) - 1.5 * sign * miss}
    nearest = selective.rauroc(scores["nearest"], ~miss)
    for strength, out in gaps.items():
      combined = confidence.cross_fitted(scores, ~miss, labels, strength=strength)
      out.append(selective.rauroc(combined, ~miss) - nearest)
  assert np.mean(gaps[confidence.PRIOR_STRENGTH]) > -0.01
  assert np.mean(gaps[0.0]) < np.mean(gaps[confidence.PRIOR_STRENGTH])


def test_degenerate_data_is_refused_with_the_reason():
  rng = np.random.default_rng(4)
  scores = {"nearest": rng.normal(size=20)}
  with pytest.raises(confidence.ConfidenceError, match="Every top-1 is right"):
    confidence.fit(scores, np.ones(20, bool))
  with pytest.raises(confidence.ConfidenceError, match="1 class"):
    confidence.cross_fitted(scores, rng.random(20) < 0.5, np.zeros(20))
  with pytest.raises(confidence.ConfidenceError, match="nearest hold NaN"):
    confidence.fit({"nearest": np.r_[np.nan, scores["nearest"][1:]]}, rng.random(20) < 0.5)
  # Every failure in one class: the folds that hold it out train on successes only.
  labels = np.repeat(np.arange(5), 4)
  with pytest.raises(confidence.ConfidenceError, match="Fold .*Every top-1 is right"):
    confidence.cross_fitted(scores, labels != 0, labels)
  with pytest.raises(confidence.ConfidenceError, match="needs the score"):
    confidence.fit(scores, rng.random(20) < 0.5).log_odds({"gap": np.ones(3)})


def test_where_the_other_scores_weigh_nothing_combined_orders_as_the_nearest_similarity():
  """A constant second score weighs exactly 0, so every fold's model is the nearest similarity
  at its own scale. Pooled, the folds must still be ordered as that one score orders them:
  the fold's weights enter by direction only (kept at their fitted lengths, folds whose model
  separated its training queries more sharply would rank above the others)."""
  rng = np.random.default_rng(5)
  n = 600
  labels = rng.integers(0, 30, n)
  miss = rng.random(n) < 0.3 + 0.4 * (labels % 3 == 0)  # The folds' error rates differ.
  scores = {"nearest": rng.normal(0, 1, n) - 1.0 * miss, "gap": np.ones(n)}
  combined = confidence.cross_fitted(scores, ~miss, labels)
  np.testing.assert_array_equal(np.argsort(combined, kind="stable"),
                                np.argsort(scores["nearest"], kind="stable"))
