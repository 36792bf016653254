"""The fitted confidence (``combined``): its logistic fit against a naive Newton solver, its
cross-fitting (no class in two folds, no leak), and its refusals."""

import numpy as np
import pytest

from idml_jax.evaluation import confidence, selective


def naive_logistic(x, y, c=confidence.REGULARISATION, steps=50):
  """Newton's method on sum(log-loss) + ||w||² / (2C), the intercept unpenalised (scikit-learn's
  objective), in float64."""
  xb = np.hstack([x, np.ones((len(x), 1))])
  w = np.zeros(xb.shape[1])
  penalty = np.diag([1.0 / c] * x.shape[1] + [0.0])
  for _ in range(steps):
    p = 1.0 / (1.0 + np.exp(-xb @ w))
    grad = xb.T @ (p - y) + penalty @ w
    hess = xb.T @ (xb * (p * (1 - p))[:, None]) + penalty
    w -= np.linalg.solve(hess, grad)
  return w[:-1], w[-1]


def test_fit_equals_a_naive_newton_solver_on_standardised_scores():
  rng = np.random.default_rng(0)
  n = 300
  scores = {"nearest": rng.normal(0.6, 0.1, n), "gap": rng.exponential(0.05, n),
            "uncertainty": -rng.uniform(0, 1, n)}
  logit = 20 * (scores["nearest"] - 0.6) + 2 * scores["uncertainty"] + 1
  correct = rng.random(n) < 1 / (1 + np.exp(-logit))
  model = confidence.fit(scores, correct)
  x = np.stack(list(scores.values()), axis=1)
  mean, sd = x.mean(0), x.std(0)
  w, b = naive_logistic((x - mean) / sd, correct.astype(float))
  np.testing.assert_allclose(model.mean, mean, rtol=1e-12)
  np.testing.assert_allclose(model.scale, sd, rtol=1e-12)
  np.testing.assert_allclose(model.weights, w, atol=1e-4)
  assert model.bias == pytest.approx(b, abs=1e-4)
  assert model.weights[0] > 0 and model.weights[2] > 0  # Both informative scores count.
  np.testing.assert_allclose(model.log_odds(scores), ((x - mean) / sd) @ w + b, atol=1e-3)
  again = confidence.ConfidenceModel.from_dict(model.to_dict())
  np.testing.assert_array_equal(again.log_odds(scores), model.log_odds(scores))


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


def test_cross_fitted_scores_of_independent_scores_carry_nothing():
  """Scores drawn independently of the outcomes: the cross-fitted ``combined`` has R-AUROC
  0.5 up to noise (cross-validation's small known downward bias included), over 30 draws.
  Scored in-sample (a model that saw each query's label), the same draws give ~0.57."""
  got = []
  for seed in range(30):
    rng = np.random.default_rng(seed)
    n = 200
    scores = {name: rng.normal(size=n) for name in ("nearest", "gap", "uncertainty")}
    correct = rng.random(n) < 0.6
    combined = confidence.cross_fitted(scores, correct, rng.integers(0, 20, n))
    got.append(selective.rauroc(combined, correct))
  assert 0.45 < np.mean(got) < 0.53


def test_cross_fitted_combined_beats_each_score_where_each_tells_half():
  """Failures of two kinds, each seen by one score only: the combination ranks them better
  than either score alone."""
  rng = np.random.default_rng(3)
  n = 1200
  labels = rng.integers(0, 40, n)
  miss_a, miss_b = rng.random(n) < 0.15, rng.random(n) < 0.15
  correct = ~(miss_a | miss_b)
  scores = {"nearest": rng.normal(0, 1, n) - 2 * miss_a,
            "uncertainty": rng.normal(0, 1, n) - 2 * miss_b}
  combined = confidence.cross_fitted(scores, correct, labels)
  auroc = {k: selective.rauroc(v, correct) for k, v in {**scores, "combined": combined}.items()}
  assert auroc["combined"] > max(auroc["nearest"], auroc["uncertainty"]) + 0.05


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
  with pytest.raises(confidence.ConfidenceError, match="Fold .* No top-1 is right|Every"):
    confidence.cross_fitted(scores, labels != 0, labels)
  with pytest.raises(confidence.ConfidenceError, match="needs the score"):
    confidence.fit(scores, rng.random(20) < 0.5).log_odds({"gap": np.ones(3)})
