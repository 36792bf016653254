"""Selective prediction: is a confidence score useful for knowing when to trust an answer?

Queries are answered from the most to the least confident; at coverage c only the most
confident fraction c is answered. For a per-query outcome v (1 - v is the risk: a Recall@1
miss, a top-1 error):

* the **risk–coverage curve** risk(i) = (1/i) sum of the risks of the i most confident
  queries, for i = 1..N, and the metric on the most confident fraction c (c = 0.1 .. 1.0);
* **AURC** = (1/N) sum_i risk(i), the area under it (Geifman et al., ICLR 2019);
* **E-AURC** = AURC - AURC*, where AURC* is the oracle's: the queries answered in order of
  their outcome, best first (for 0/1 outcomes every failure last), computed exactly on these
  N queries rather than by the continuous approximation r + (1 - r) ln(1 - r), and exact
  for fractional outcomes too. 0 is a perfect ordering; a random one is about r - AURC*.

**Ties.** Queries with equal confidence are answered in random order, and every figure is
the expectation over those orders, in closed form: within a tied group of g queries whose
values sum to S, the first j taken contribute j·S/g. A constant score (all queries tied)
therefore gives risk(i) = the overall risk for every i, AURC = that risk: no information,
never a lucky or unlucky ordering.

**R-AUROC** (Kirchhof et al., "URL: A Representation Learning Benchmark for Transferable
Uncertainty Estimates", NeurIPS 2023 Datasets & Benchmarks) = the AUROC of a confidence for
telling the queries whose top-1 is right from those whose top-1 is wrong: the probability that
a random success is more confident than a random failure, a tie counting one half (so a
constant score gives 0.5). It is undefined where every query succeeds or every one fails,
and reported so, never as a number.

With ``groups`` (the queries' classes), :func:`selective_report` adds ``combined``: the
logistic confidence of the other scores, cross-fitted by class
(:mod:`idml_jax.evaluation.confidence`).

Also the **expected calibration error** of a classifier's top-1 probability (15 equal-width
bins, Guo et al., ICML 2017) and its per-bin reliability.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.stats

from idml_jax.evaluation import confidence as confidence_lib
from idml_jax.evaluation.inputs import check_finite

COVERAGES = tuple(round(0.1 * i, 1) for i in range(1, 11))
ECE_BINS = 15


def expected_prefix_sums(confidence: np.ndarray, values: np.ndarray) -> np.ndarray:
  """[N], [N] -> [N + 1]: the expected sum of ``values`` over the i most confident items,
  i = 0..N, ties in random order (module doc)."""
  confidence = np.asarray(confidence, np.float64)
  values = np.asarray(values, np.float64)
  if confidence.shape != values.shape or confidence.ndim != 1:
    raise ValueError(f"confidence and values must be [N] alike; got {confidence.shape}, "
                     f"{values.shape}.")
  check_finite(confidence, "The confidence scores")
  n = len(values)
  order = np.argsort(-confidence, kind="stable")
  c, v = confidence[order], values[order]
  starts = np.concatenate([[0], np.flatnonzero(c[1:] != c[:-1]) + 1]).astype(np.int64)
  sizes = np.diff(np.concatenate([starts, [n]]))
  sums = np.add.reduceat(v, starts) if n else np.zeros(0)
  before = np.concatenate([[0.0], np.cumsum(sums)[:-1]])
  i = np.arange(1, n + 1)
  group = np.searchsorted(starts, i - 1, side="right") - 1  # The group of the i-th item.
  prefix = before[group] + (i - starts[group]) * sums[group] / sizes[group]
  return np.concatenate([[0.0], prefix])


def _coverage_count(c: float, n: int) -> int:
  return max(1, math.ceil(c * n - 1e-9))


def risk_coverage(confidence: np.ndarray, correct: np.ndarray,
                  per_query: dict[str, np.ndarray] | None = None,
                  coverages=COVERAGES) -> dict:
  """Risk–coverage of a confidence score (higher = more confident) [N] against per-query
  correctness ``correct`` [N] (bool or in [0, 1]).

  Returns ``{"aurc", "eaurc", "coverage": [C], "risk": [C]}`` and, for each ``per_query``
  metric (e.g. ``{"map@r": [N]}``, NaN entries taken as 0), its mean over the most
  confident fraction c at each coverage, ``{name: [C]}``; also ``"curve"``: risk(i) for
  i = 1..N.
  """
  correct = np.asarray(correct, np.float64)
  n = len(correct)
  if n == 0:
    raise ValueError("risk_coverage needs at least one query.")
  if np.any(~((correct >= 0) & (correct <= 1))):
    raise ValueError("risk_coverage: correct must be in [0, 1] (bool, or a per-query metric).")
  risk_sum = expected_prefix_sums(confidence, 1.0 - correct)
  i = np.arange(1, n + 1)
  curve = risk_sum[1:] / i
  oracle = np.cumsum(np.sort(1.0 - correct)) / i  # The best outcomes answered first.
  counts = [_coverage_count(c, n) for c in coverages]
  out = {"aurc": float(curve.mean()), "eaurc": float(curve.mean() - oracle.mean()),
         "coverage": list(coverages), "risk": [float(curve[m - 1]) for m in counts],
         "curve": curve}
  for name, values in (per_query or {}).items():
    prefix = expected_prefix_sums(confidence, np.nan_to_num(np.asarray(values, np.float64)))
    out[name] = [float(prefix[m] / m) for m in counts]
  return out


def rauroc(confidence: np.ndarray, correct: np.ndarray) -> float | None:
  """R-AUROC (module doc) of ``confidence`` [N] (higher = more confident) for ``correct`` [N]
  (bool); None (undefined) when ``correct`` has no False or no True. The Mann–Whitney U
  statistic over the successes' average ranks (ties share their rank: one half each)."""
  conf = np.asarray(confidence, np.float64)
  ok = np.asarray(correct, bool)
  if conf.shape != ok.shape or conf.ndim != 1:
    raise ValueError(f"confidence and correct must be [N] alike; got {conf.shape}, {ok.shape}.")
  check_finite(conf, "The confidence scores")
  n_ok, n_bad = int(ok.sum()), int((~ok).sum())
  if not n_ok or not n_bad:
    return None
  ranks = scipy.stats.rankdata(conf)  # Ties: the average of their ranks.
  return float((ranks[ok].sum() - n_ok * (n_ok + 1) / 2) / (n_ok * n_bad))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray,
                               bins: int = ECE_BINS) -> dict:
  """ECE of top-1 probabilities [N] in [0, 1] against correctness [N].

  Bin b holds the confidences in (b/bins, (b+1)/bins] (0 goes to the first bin).
  ``ECE = sum_b |B_b|/N · |accuracy(B_b) - mean confidence(B_b)|``. Returns
  ``{"ece", "bin_confidence": [bins], "bin_accuracy": [bins], "bin_count": [bins]}``
  (NaN for empty bins).
  """
  conf = np.asarray(confidence, np.float64)
  correct = np.asarray(correct, np.float64)
  check_finite(conf, "The confidences")
  if np.any((conf < 0) | (conf > 1)):
    raise ValueError("Confidences for the ECE must be probabilities in [0, 1].")
  which = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], conf, side="left")
  count = np.bincount(which, minlength=bins).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_conf = np.bincount(which, conf, bins) / count
    accuracy = np.bincount(which, correct, bins) / count
  filled = count > 0
  ece = float(np.sum(count[filled] / len(conf) * np.abs(accuracy[filled] - mean_conf[filled])))
  return {"ece": ece, "bin_confidence": mean_conf.tolist(), "bin_accuracy": accuracy.tolist(),
          "bin_count": count.astype(int).tolist()}


def softmax_confidence(logits: np.ndarray) -> np.ndarray:
  """[N, C] -> [N] the maximum softmax probability (computed stably in float64)."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=1, keepdims=True)
  p = np.exp(z)
  return p.max(axis=1) / p.sum(axis=1)


def confidence_scores(*, uncertainty_norm=None, logits=None, nearest_score=None,
                      second_score=None) -> dict[str, np.ndarray]:
  """The confidence scores a run has, [N] each (higher = more confident):

  * ``uncertainty``: -||u|| (IDML's uncertainty; where given);
  * retrieval: ``nearest`` (cosine similarity of the nearest gallery item) and ``gap``
    (nearest - second nearest; where a second exists), which every model has;
  * classification: ``msp``, the maximum softmax probability of the plain ``logits``.
  """
  scores = {}
  if uncertainty_norm is not None:
    scores["uncertainty"] = -np.asarray(uncertainty_norm, np.float64)
  if logits is not None:
    scores["msp"] = softmax_confidence(logits)
  if nearest_score is not None:
    scores["nearest"] = np.asarray(nearest_score, np.float64)
    if second_score is not None and np.all(np.isfinite(second_score)):
      scores["gap"] = scores["nearest"] - np.asarray(second_score, np.float64)
  return scores


def selective_report(scores: dict[str, np.ndarray], correct: np.ndarray,
                     per_query: dict[str, np.ndarray], groups: np.ndarray | None = None
                     ) -> tuple[dict[str, float], dict, dict[str, str]]:
  """Each score's AURC, E-AURC and R-AUROC, and its curves.

  Args:
    scores: ``{name: [N]}`` confidence scores (:func:`confidence_scores`).
    correct: [N] bool, the query's top-1 is right.
    per_query: ``{metric: [N]}`` to report at each coverage (e.g. ``recall@1``, ``map@r``).
    groups: [N] the queries' classes: with two scores or more, ``combined`` (the module doc)
      joins them.
  Returns:
    ``(scalars, curves, undefined)``: ``aurc_<score>``, ``eaurc_<score>``, ``rauroc_<score>``
    (left out where undefined); per score (plus ``oracle``: the ordering by correctness
    itself) ``aurc``, ``eaurc``, ``rauroc`` (None where undefined), ``coverage`` and each
    ``per_query`` metric at ``COVERAGES``, ``risk`` at coverages 0.01 .. 1.00
    (``fine_coverage``), for results.json and the figure; and ``{"rauroc" | "combined": why it
    is undefined}``.
  """
  correct = np.asarray(correct, bool)
  scores, undefined = dict(scores), {}
  if groups is not None and len(scores) >= 2:
    try:
      scores["combined"] = confidence_lib.cross_fitted(scores, correct, groups)
    except confidence_lib.ConfidenceError as e:
      undefined["combined"] = str(e)
  if correct.all() or not correct.any():
    undefined["rauroc"] = (f"{'no' if correct.all() else 'every'} query's top-1 is wrong: "
                           "there are no failures and successes to tell apart")
  scalars, curves = {}, {}
  fine = tuple(round(0.01 * i, 2) for i in range(1, 101))
  for name, conf in {**scores, "oracle": correct.astype(np.float64)}.items():
    rc = risk_coverage(conf, correct, per_query)
    auroc = rauroc(conf, correct)
    if name != "oracle":
      scalars[f"aurc_{name}"], scalars[f"eaurc_{name}"] = rc["aurc"], rc["eaurc"]
      if auroc is not None:
        scalars[f"rauroc_{name}"] = auroc
    n = len(rc["curve"])
    curves[name] = {"aurc": rc["aurc"], "eaurc": rc["eaurc"], "rauroc": auroc,
                    "coverage": rc["coverage"], **{k: rc[k] for k in per_query},
                    "fine_coverage": list(fine),
                    "risk": [float(rc["curve"][_coverage_count(c, n) - 1]) for c in fine]}
  return scalars, curves, undefined
