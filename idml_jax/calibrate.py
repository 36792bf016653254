"""Thresholds for matching with abstention, chosen on a labelled held-out split.

    python -m idml_jax.calibrate --index=runs/demo/index --queries=heldout.npz \\
        [--target_precision=0.9]

For each held-out query, its top-1 gallery neighbor is *correct* when it has the query's
label. ``--rule`` chooses how a query is decided; each rule is calibrated across every
threshold the data allows (the distinct scores; a threshold t keeps the queries whose score
is >= t, so ties never split):

* ``combined`` (the default): one fitted confidence from the top-1 similarity, the top-1 −
  top-2 gap and ||u|| (:mod:`idml_jax.evaluation.confidence`: a logistic model on the
  standardised scores, fitted on every held-out query). The top-1 is a match when the
  modelled probability that it is right is >= t_c; otherwise the query abstains. The number
  of queries to answer is chosen on the held-out queries' *cross-fitted* ordering (folds by
  class: each query scored by weights that never saw its class), so the held-out precision
  is not the fit's own optimism; t_c is the fitted model's probability that answers as many.
  Where the model cannot be fitted (one class, no wrong or no right top-1,
  non-finite scores) calibration is refused, storing nothing.
* ``similarity``: two separate rules, **match** when the top-1's cosine similarity s >= t and
  **answer** only when ||u|| <= t_u (IDML).

For each: precision = correct / declared, recall = correct declared / all correct, F1, and
coverage = declared / all. The chosen threshold is the loosest one whose precision reaches
``target_precision`` (the most queries answered at that precision), or the one with the
highest F1 without a target. A target no threshold reaches is refused, naming the best
precision there is. The thresholds are stored with the index (``GalleryIndex.thresholds``),
whose queries turn them into a per-query decision with its reason (``idml_jax.index.decide``):

    match      p >= t_c      "confidence 0.93 >= 0.90 (combined: nearest, gap, uncertainty)"
    abstain    p < t_c       "confidence 0.42 < 0.90 (combined: nearest, gap, uncertainty)"
    abstain    ||u|| > t_u   "uncertainty 0.93 > 0.80"
    match      s >= t        "similarity 0.71 >= 0.65"
    no_match   s < t         "similarity 0.42 < 0.65"

``calibration.png`` (precision, recall, F1 and coverage against each threshold) is written
beside the index.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags
from matplotlib.figure import Figure

from idml_jax.evaluation import confidence
from idml_jax.evaluation.inputs import check_finite
from idml_jax.index import GalleryIndex, Thresholds, read_embeddings, top1_scores

RULES = ("combined", "similarity")


def threshold_curve(scores: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
  """Every threshold t (the distinct ``scores``, descending) of the rule "declare when
  score >= t": ``threshold``, ``precision``, ``recall``, ``f1``, ``coverage`` [T] each."""
  scores = np.asarray(scores, np.float64)
  correct = np.asarray(correct, bool)
  check_finite(scores, "The calibration scores")
  if scores.shape != correct.shape or scores.ndim != 1 or len(scores) == 0:
    raise ValueError(f"scores and correct must be [N] alike, N >= 1; got {scores.shape}, "
                     f"{correct.shape}.")
  order = np.argsort(-scores, kind="stable")
  s, c = scores[order], correct[order]
  last = np.concatenate([np.flatnonzero(s[1:] != s[:-1]), [len(s) - 1]])  # Group ends.
  declared = last + 1.0
  hits = np.cumsum(c)[last].astype(np.float64)
  total = max(c.sum(), 1)
  precision = hits / declared
  recall = hits / total
  with np.errstate(invalid="ignore", divide="ignore"):
    f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
  return {"threshold": s[last], "precision": precision, "recall": recall, "f1": f1,
          "coverage": declared / len(s)}


def choose_threshold(curve: dict[str, np.ndarray], target_precision: float | None = None,
                     what: str = "similarity") -> int:
  """Index into ``curve`` of the chosen threshold (module doc)."""
  if target_precision is None:
    return int(np.argmax(curve["f1"]))
  ok = np.flatnonzero(curve["precision"] >= target_precision)
  if not len(ok):
    best = int(np.argmax(curve["precision"]))
    raise ValueError(f"No {what} threshold reaches precision {target_precision} on the "
                     f"held-out split (best {curve['precision'][best]:.3f} at "
                     f"{curve['threshold'][best]:.4f}): lower the target precision.")
  return int(ok[np.argmax(curve["coverage"][ok])])


def _check_inputs(top1_correct: np.ndarray, uncertainty_norm, target_precision) -> None:
  if target_precision is not None and not 0 < target_precision <= 1:
    raise ValueError(f"The target precision must lie in (0, 1]; got {target_precision}.")
  correct = np.asarray(top1_correct, bool)
  if len(correct) and not correct.any():
    raise ValueError("No query's nearest neighbor is right: there is no match to calibrate "
                     "on; calibrate on labelled queries whose classes are in the gallery.")
  if len(correct) and correct.all():
    raise ValueError("Every query's nearest neighbor is right (one class?): there is no "
                     "mismatch to calibrate against; use queries from several classes.")
  if uncertainty_norm is not None:
    check_finite(np.asarray(uncertainty_norm), "The queries' uncertainties")


def calibrate(top1_similarity: np.ndarray, top1_correct: np.ndarray,
              uncertainty_norm: np.ndarray | None = None, *,
              target_precision: float | None = None) -> tuple[Thresholds, dict]:
  """The ``similarity`` rule: thresholds for match (similarity) and answer (uncertainty, only
  where given and not constant), and the curves ``{"similarity": ..., "uncertainty": ...}``
  they were chosen from.

  A target the similarity rule cannot reach is refused (ValueError); one the uncertainty
  rule cannot reach turns abstention off (``uncertainty=None``) with the reason in
  ``heldout["uncertainty_note"]``. Refused too: a target outside (0, 1], data with no right
  or no wrong nearest neighbor (nothing to calibrate), a NaN/inf uncertainty.
  """
  _check_inputs(top1_correct, uncertainty_norm, target_precision)
  curves = {"similarity": threshold_curve(top1_similarity, top1_correct)}
  i = choose_threshold(curves["similarity"], target_precision, "similarity")
  heldout = {f"similarity_{k}": float(v[i]) for k, v in curves["similarity"].items()
             if k != "threshold"}
  t_u = None
  if uncertainty_norm is not None and np.ptp(np.asarray(uncertainty_norm)) > 0:
    curve = threshold_curve(-np.asarray(uncertainty_norm, np.float64), top1_correct)
    curve["threshold"] = -curve["threshold"]  # "answer when ||u|| <= t_u"
    curves["uncertainty"] = curve
    try:
      j = choose_threshold(curve, target_precision, "uncertainty")
    except ValueError as e:  # Abstention is optional: off, and said so.
      heldout["uncertainty_note"] = f"{e} Abstention is off."
    else:
      t_u = float(curve["threshold"][j])
      heldout.update({f"uncertainty_{k}": float(v[j]) for k, v in curve.items()
                      if k != "threshold"})
  return Thresholds(float(curves["similarity"]["threshold"][i]), t_u, target_precision,
                    heldout), curves


def calibrate_combined(top1_similarity: np.ndarray, top1_correct: np.ndarray,
                       classes: np.ndarray, second_similarity: np.ndarray | None = None,
                       uncertainty_norm: np.ndarray | None = None, *,
                       target_precision: float | None = None) -> tuple[Thresholds, dict]:
  """The ``combined`` rule (module doc): the confidence model fitted on every held-out query,
  and t_c chosen on their cross-fitted probabilities (folds by ``classes`` [N], the queries'
  labels). Returns the thresholds and the curves ``{"combined": ..., "similarity": ...}``
  (the similarity's for comparison). Refused (ValueError, nothing chosen): what
  :func:`calibrate` refuses, a model that cannot be fitted, a target no threshold reaches."""
  _check_inputs(top1_correct, uncertainty_norm, target_precision)
  correct = np.asarray(top1_correct, bool)
  scores = top1_scores(top1_similarity, second_similarity, uncertainty_norm)
  if "uncertainty" in scores and np.ptp(scores["uncertainty"]) == 0:
    del scores["uncertainty"]  # A constant uncertainty tells nothing.
  try:
    held = confidence.cross_fitted(scores, correct, classes)
    model = confidence.fit(scores, correct)
  except confidence.ConfidenceError as e:
    raise ValueError(f"The combined confidence cannot be fitted: {e} Use --rule=similarity, "
                     "or labelled queries of several classes with right and wrong top-1s."
                     ) from None
  # Precision and coverage as the cross-fitted ordering achieves them; each threshold the
  # fitted model's probability that answers the same number of these queries.
  curve = threshold_curve(held, correct)
  answered = np.round(curve["coverage"] * len(correct)).astype(int)
  curve["threshold"] = np.sort(model.probability(scores))[::-1][answered - 1]
  curves = {"combined": curve, "similarity": threshold_curve(top1_similarity, correct)}
  i = choose_threshold(curves["combined"], target_precision, "combined confidence")
  heldout = {f"combined_{k}": float(v[i]) for k, v in curves["combined"].items()
             if k != "threshold"}
  heldout["combined_weights"] = dict(zip(model.scores, model.weights.tolist(), strict=True))
  return Thresholds(target_precision=target_precision, heldout=heldout, rule="combined",
                    confidence=model.to_dict(),
                    combined=float(curves["combined"]["threshold"][i])), curves


def calibration_figure(curves: dict, thresholds: Thresholds) -> Figure:
  """Precision, recall, F1 and coverage against each rule's threshold."""
  fig = Figure(figsize=(5 * len(curves), 3.8))
  axes = np.atleast_1d(fig.subplots(1, len(curves)))
  chosen = {"similarity": thresholds.similarity, "uncertainty": thresholds.uncertainty,
            "combined": thresholds.combined}
  rules = {"similarity": "match if s >= t", "uncertainty": "answer if ||u|| <= t",
           "combined": "match if P(right) >= t, else abstain"}
  for ax, (name, c) in zip(axes, curves.items(), strict=True):
    for key in ("precision", "recall", "f1", "coverage"):
      ax.plot(c["threshold"], c[key], label=key)
    if chosen[name] is not None:
      ax.axvline(chosen[name], color="black", linestyle="--", label="chosen")
    ax.set(title=f"{name}: {rules[name]}", xlabel="threshold t")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def main(argv):
  del argv
  try:
    index = GalleryIndex.load(_INDEX.value)
    if index.labels is None:
      sys.exit("calibrate: the gallery has no labels: embed a folder of class sub-folders "
               "(idml_jax.embed stores each image's folder as its label).")
    if _QUERIES.value:
      held = read_embeddings(_QUERIES.value, "queries")
      if "labels" not in held:
        sys.exit(f"calibrate: {_QUERIES.value} has no labels: embed a folder of class "
                 "sub-folders (idml_jax.embed stores each image's folder as its label).")
      unc = held["uncertainty_norm"] if "uncertainty_norm" in held else None
      matches = index.query(held["semantic"], min(2, len(index)), unc)
      labels = held["labels"].astype(str)
    else:  # Leave-one-out on the gallery.
      matches = index.query(index.embeddings, min(2, len(index) - 1), index.uncertainty_norm,
                            exclude_self=True)
      labels, unc = index.labels, index.uncertainty_norm
    correct = matches.labels[:, 0] == labels
    top1 = matches.scores[:, 0]
    if _RULE.value == "combined":
      second = matches.scores[:, 1] if matches.scores.shape[1] > 1 else None
      thresholds, curves = calibrate_combined(top1, correct, labels, second, unc,
                                              target_precision=_TARGET.value)
    else:
      thresholds, curves = calibrate(top1, correct, unc, target_precision=_TARGET.value)
    index.thresholds = thresholds
    index.save(_INDEX.value)
    figure = os.path.join(_INDEX.value, "calibration.png")
    calibration_figure(curves, thresholds).savefig(figure, dpi=100)
  except (ValueError, OSError) as e:
    sys.exit(f"calibrate: {e}")
  print(summary(thresholds) + f". Stored in {_INDEX.value}; {figure}")


def summary(thresholds: Thresholds) -> str:
  """One line: the calibrated rule and what it achieved on the held-out queries."""
  held = thresholds.heldout
  if thresholds.rule == "combined":
    weights = ", ".join(f"{k} {v:+.2f}" for k, v in held["combined_weights"].items())
    return (f"combined confidence threshold {thresholds.combined:.4f} (weights on the "
            f"standardised scores: {weights}; cross-fitted held-out precision "
            f"{held['combined_precision']:.3f}, answers {held['combined_coverage']:.1%})")
  return (f"similarity threshold {thresholds.similarity:.4f} (held-out precision "
          f"{held['similarity_precision']:.3f}, recall {held['similarity_recall']:.3f})"
          + (f"; {held['uncertainty_note']}" if "uncertainty_note" in held else "")
          + ("" if thresholds.uncertainty is None else
             f"; uncertainty threshold {thresholds.uncertainty:.4f} (answers "
             f"{held['uncertainty_coverage']:.1%} at precision "
             f"{held['uncertainty_precision']:.3f})"))


if __name__ == "__main__":
  # Defined here, not at import: the tests import this module beside other CLIs.
  _INDEX = flags.DEFINE_string("index", None, "Saved index (python -m idml_jax.search "
                               "--save_index=DIR).")
  _QUERIES = flags.DEFINE_string("queries", None, "Labelled held-out .npz (idml_jax.embed of "
                                 "class sub-folders); default: the gallery, leave-one-out.")
  _TARGET = flags.DEFINE_float("target_precision", None, "Precision to reach (default: the "
                               "threshold of maximal F1).")
  _RULE = flags.DEFINE_enum("rule", "combined", list(RULES), "combined: one fitted confidence "
                            "from the similarity, the top-1 - top-2 gap and ||u||; similarity: "
                            "a similarity threshold and an uncertainty threshold.")
  flags.mark_flags_as_required(["index"])
  app.run(main)
