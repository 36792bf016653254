"""One fitted confidence from a run's scores: how likely is a query's top-1 to be right?

Each score alone (the nearest similarity, the top-1 − top-2 gap, IDML's −‖u‖) is right on
some data and wrong on other data (BENCHMARKS.md, "What ‖u‖ says"). :func:`fit` learns, on
labelled queries, a logistic model of "the top-1 is right" on the standardised scores; its
log-odds are the ``combined`` confidence. Where a score carries nothing the model gives it a
weight near 0, so ``combined`` follows the best of its inputs.

Evaluation scores every test query with a model that saw neither its label nor its class
(:func:`cross_fitted`): the queries are split into folds *by class* (scikit-learn's
``GroupKFold``), and each fold is scored by the model fitted on the others. ``calibrate``
fits one model on all its held-out queries and stores it in the index
(:class:`ConfidenceModel`).

Degenerate data is refused with the reason (:class:`ConfidenceError`): no right or no wrong
top-1 (in the data or in a fold's training part), fewer than two classes to fold by,
non-finite scores.
"""

from __future__ import annotations

import dataclasses

import numpy as np

FOLDS = 5
# L2 strength of the logistic model (scikit-learn's C, on standardised scores).
REGULARISATION = 1.0


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
    x = _matrix(scores, self.scores)
    return ((x - self.mean) / self.scale) @ self.weights + self.bias

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


def fit(scores: dict[str, np.ndarray], correct: np.ndarray) -> ConfidenceModel:
  """The logistic model of ``correct`` [N] (bool: the top-1 is right) on every score of
  ``scores`` (``{name: [N]}``, higher = more confident), standardised (a constant score gets
  scale 1, so it weighs nothing)."""
  from sklearn.linear_model import LogisticRegression

  names = tuple(scores)
  if not names:
    raise ConfidenceError("No confidence score to fit.")
  x = _matrix(scores, names)
  y = np.asarray(correct, bool)
  if y.shape != (len(x),):
    raise ConfidenceError(f"correct must be [{len(x)}] like the scores; got {y.shape}.")
  if y.all() or not y.any():
    raise ConfidenceError(f"{'Every' if y.all() else 'No'} top-1 is right in the {len(y)} "
                          "labelled queries: there is nothing to tell apart.")
  mean, scale = x.mean(axis=0), x.std(axis=0)
  scale = np.where(scale > 0, scale, 1.0)
  model = LogisticRegression(C=REGULARISATION, tol=1e-10, max_iter=10_000).fit(
      (x - mean) / scale, y)  # Solved to its optimum: the same model on every machine.
  return ConfidenceModel(names, mean, scale, model.coef_[0].astype(np.float64),
                         float(model.intercept_[0]))


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
                 folds: int = FOLDS) -> np.ndarray:
  """[N] the ``combined`` confidence of each query, from the model fitted on the other folds
  (:func:`class_folds`): no query is scored by a model that saw its label or its class.
  Raises :class:`ConfidenceError` where a fold's model cannot be fitted."""
  fold = class_folds(groups, folds)
  out = np.empty(len(fold), np.float64)
  for k in range(fold.max() + 1):
    held = fold == k
    try:
      model = fit({n: np.asarray(s)[~held] for n, s in scores.items()},
                  np.asarray(correct)[~held])
    except ConfidenceError as e:
      raise ConfidenceError(f"Fold {k + 1} of {fold.max() + 1} (classes held out): {e}") from None
    out[held] = model.log_odds({n: np.asarray(s)[held] for n, s in scores.items()})
  return out
