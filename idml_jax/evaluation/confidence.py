"""One fitted confidence from a run's scores: how likely is a query's top-1 to be right?

Each score alone (the nearest similarity, the top-1 − top-2 gap, IDML's −‖u‖) is right on
some data and wrong on other data (BENCHMARKS.md, "What ‖u‖ says"). :func:`fit` learns, on
labelled queries, a logistic model of "the top-1 is right" on the standardised scores; its
log-odds are the ``combined`` confidence.

The model's prior is the nearest-similarity rule: the L2 penalty pulls the weights towards
``PRIOR_WEIGHTS`` (1 on ``nearest``, 0 on the others), with a strength of ``PRIOR_STRENGTH``
per labelled query. How a score relates to the errors changes from class to class, and a
model is fitted on some classes and used on others, so a weight earns its place only where
the evidence holds across classes: where no score helps, ``combined`` ranks as the nearest
similarity does; where ‖u‖ or the gap knows more, it follows them.

Evaluation scores every test query with a model that saw neither its label nor its class
(:func:`cross_fitted`): the queries are split into folds *by class* (scikit-learn's
``GroupKFold``), each fold is scored by the weights fitted on the others, on scores
standardised over all queries (their values only: no label, no class). The folds' scores
are pooled into one ranking, so each fold keeps only its model's *direction*: the weights
scaled to unit length, without the intercept. (A fold's intercept is the other folds' base
rate and its weights' length how sharply they separated their queries; neither says anything
about the order of this fold's queries, and pooled, each would order whole folds against
each other: with the lengths kept, ``combined`` lost to the nearest similarity on real sets
where no other score helps; BENCHMARKS.md.) ``calibrate`` fits one model on all its
held-out queries and stores it in the index (:class:`ConfidenceModel`).

Degenerate data is refused with the reason (:class:`ConfidenceError`): no right or no wrong
top-1 (in the data or in a fold's training part), fewer than two classes to fold by,
non-finite scores.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.optimize

FOLDS = 5
# The prior's pull towards PRIOR_WEIGHTS, per labelled query (BENCHMARKS.md, "What ‖u‖ says":
# the smallest strength at which `combined` is level with the nearest similarity wherever no
# other score helps, on four real sets × six methods × five seeds).
PRIOR_STRENGTH = 0.05


def prior_weights(names) -> np.ndarray:
  """[S] the prior weight of each standardised score: the nearest-similarity rule."""
  return np.asarray([1.0 if n == "nearest" else 0.0 for n in names])


class ConfidenceError(ValueError):
  """The data cannot fit a confidence model (the message says why)."""


@dataclasses.dataclass
class ConfidenceModel:
  """A logistic model of "the top-1 is right" on standardised scores.

  Attributes:
    scores: the score names it reads, in order (e.g. ``("nearest", "gap", "uncertainty")``).
    mean, scale: [S] the standardisation fitted with it.
    weights: [S] the logistic weights of the standardised scores.
    bias: the intercept.
  """

  scores: tuple[str, ...]
  mean: np.ndarray
  scale: np.ndarray
  weights: np.ndarray
  bias: float

  def log_odds(self, scores: dict[str, np.ndarray]) -> np.ndarray:
    """``{name: [N]}`` (at least :attr:`scores`) -> [N] the log-odds that the top-1 is right
    (the ``combined`` confidence; higher = more confident)."""
    return standardise(_matrix(scores, self.scores), self.mean, self.scale) @ self.weights \
        + self.bias

  def probability(self, scores: dict[str, np.ndarray]) -> np.ndarray:
    """[N] the modelled probability that the top-1 is right."""
    return 1.0 / (1.0 + np.exp(-self.log_odds(scores)))

  def to_dict(self) -> dict:
    return {"scores": list(self.scores), "mean": self.mean.tolist(),
            "scale": self.scale.tolist(), "weights": self.weights.tolist(),
            "bias": self.bias}

  @classmethod
  def from_dict(cls, d: dict) -> ConfidenceModel:
    return cls(tuple(d["scores"]), *(np.asarray(d[k], np.float64)
                                     for k in ("mean", "scale", "weights")), float(d["bias"]))


def _matrix(scores: dict[str, np.ndarray], names) -> np.ndarray:
  """[N, S] float64 of the named scores; a missing or non-finite one is refused."""
  missing = [n for n in names if n not in scores]
  if missing:
    raise ConfidenceError(f"The confidence model needs the score(s) {', '.join(missing)}; "
                          f"only {', '.join(scores) or 'none'} are given.")
  x = np.stack([np.asarray(scores[n], np.float64) for n in names], axis=1)
  if not np.all(np.isfinite(x)):
    bad = [n for i, n in enumerate(names) if not np.all(np.isfinite(x[:, i]))]
    raise ConfidenceError(f"The score(s) {', '.join(bad)} hold NaN/inf values.")
  return x


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(mean [S], scale [S])`` of ``x`` [N, S]; a constant column gets scale 1."""
  scale = x.std(axis=0)
  return x.mean(axis=0), np.where(scale > 0, scale, 1.0)


def standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
  return (x - mean) / scale


def _check_outcomes(correct: np.ndarray, n: int) -> np.ndarray:
  y = np.asarray(correct, bool)
  if y.shape != (n,):
    raise ConfidenceError(f"correct must be [{n}] like the scores; got {y.shape}.")
  if y.all() or not y.any():
    raise ConfidenceError(f"{'Every' if y.all() else 'No'} top-1 is right in the {len(y)} "
                          "labelled queries: there is nothing to tell apart.")
  return y


def logistic_weights(z: np.ndarray, y: np.ndarray, prior: np.ndarray,
                     strength: float = PRIOR_STRENGTH) -> tuple[np.ndarray, float]:
  """``(weights [S], intercept)`` minimising the log-loss of ``y`` [N] (bool) on ``z`` [N, S]
  plus ``strength · N / 2 · ||weights − prior||²`` (the intercept is not penalised), solved to
  its optimum (L-BFGS on the exact gradient: the same weights on every machine)."""
  n, d = z.shape
  t_y = y.astype(np.float64)
  penalty = strength * n

  def objective(p):
    w, b = p[:d], p[d]
    t = z @ w + b
    s = 1.0 / (1.0 + np.exp(-t))
    loss = np.sum(np.logaddexp(0.0, t) - t_y * t) + 0.5 * penalty * np.sum((w - prior) ** 2)
    grad = np.concatenate([z.T @ (s - t_y) + penalty * (w - prior), [np.sum(s - t_y)]])
    return loss, grad

  start = np.concatenate([prior, [np.log(t_y.mean() / (1 - t_y.mean()))]])
  result = scipy.optimize.minimize(objective, start, jac=True, method="L-BFGS-B",
                                   options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 10_000})
  return result.x[:d], float(result.x[d])


def fit(scores: dict[str, np.ndarray], correct: np.ndarray,
        strength: float = PRIOR_STRENGTH) -> ConfidenceModel:
  """The logistic model of ``correct`` [N] (bool: the top-1 is right) on every score of
  ``scores`` (``{name: [N]}``, higher = more confident), standardised, with the
  nearest-similarity prior of ``strength`` (module doc)."""
  names = tuple(scores)
  if not names:
    raise ConfidenceError("No confidence score to fit.")
  x = _matrix(scores, names)
  y = _check_outcomes(correct, len(x))
  mean, scale = standardisation(x)
  w, b = logistic_weights(standardise(x, mean, scale), y, prior_weights(names), strength)
  return ConfidenceModel(names, mean, scale, w, b)


def class_folds(groups: np.ndarray, folds: int = FOLDS) -> np.ndarray:
  """[N] the fold of each item, every class (``groups`` [N]) in exactly one fold, the folds'
  sizes balanced (``GroupKFold``); ``min(folds, classes)`` folds."""
  from sklearn.model_selection import GroupKFold

  groups = np.asarray(groups)
  n_groups = len(np.unique(groups))
  if n_groups < 2:
    raise ConfidenceError(f"The queries come from {n_groups} class(es): cross-fitting by class "
                          "needs at least two.")
  out = np.empty(len(groups), np.int64)
  for k, (_, held) in enumerate(GroupKFold(min(folds, n_groups)).split(groups, groups=groups)):
    out[held] = k
  return out


def cross_fitted(scores: dict[str, np.ndarray], correct: np.ndarray, groups: np.ndarray,
                 folds: int = FOLDS, strength: float = PRIOR_STRENGTH) -> np.ndarray:
  """[N] the ``combined`` confidence of each query, from the direction of the weights fitted
  on the other folds (:func:`class_folds`; module doc): no query is scored by a model that
  saw its label or its class. Raises :class:`ConfidenceError` where a fold's model cannot be
  fitted."""
  names = tuple(scores)
  x = _matrix(scores, names)
  y = np.asarray(correct, bool)
  z = standardise(x, *standardisation(x))
  fold = class_folds(groups, folds)
  out = np.empty(len(fold), np.float64)
  for k in range(fold.max() + 1):
    held = fold == k
    try:
      train = _check_outcomes(y[~held], int((~held).sum()))
    except ConfidenceError as e:
      raise ConfidenceError(f"Fold {k + 1} of {fold.max() + 1} (classes held out): {e}") from None
    w, _ = logistic_weights(z[~held], train, prior_weights(names), strength)
    out[held] = z[held] @ (w / max(np.linalg.norm(w), 1e-300))
  return out
