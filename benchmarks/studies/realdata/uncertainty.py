"""Which confidence knows when a retrieval is wrong, per set: the tables of "What ‖u‖ says".

    python benchmarks/studies/realdata/run.py --data ~/realdata --network cnn --arrays ARRAYS \\
        --sets icons,glyphs,glyphs_degraded,fonts --out uncertainty.jsonl      # the runs
    python benchmarks/studies/realdata/uncertainty.py --arrays ARRAYS --data ~/realdata
    python benchmarks/studies/realdata/uncertainty.py --arrays ARRAYS --strengths 0.02,0.05,1,4

Reads the per-query figures each row saved (``run.py --arrays``) and, per set and row, over
seeds (mean ± sd): Recall@1; the AURC and R-AUROC of IDML's ‖u‖, the nearest similarity, the
top-1 − top-2 gap and ``combined`` (the fitted confidence, cross-fitted by class: what every
evaluation computes, ``evaluation.selective_report``); ``combined − nearest`` (AURC and
R-AUROC) paired over seeds (mean ± standard error); and which kind of set it is — η² (the
share of the variance between test classes) of the misses and of ‖u‖, the within-class
correlations of ‖u‖ and of −nearest with the misses. Where the set records what each image
shows (``images.json`` of ``make_sets.py``): Spearman(‖u‖, degradation level) and Recall@1
per level (``glyphs_degraded``), Spearman(‖u‖, ink) and Recall@1 per ink tercile
(``fonts``).

``--strengths``: how ``combined`` depends on its prior's strength
(``confidence.PRIOR_STRENGTH``): per set and row, ``combined − nearest`` (R-AUROC and AURC,
paired over seeds, ± standard error) for each strength; ``below`` marks a row where
``combined`` is worse than the nearest similarity by more than one standard error.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys

import numpy as np
import scipy.stats

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))
from run import CONFIG, _class_share, _ms, _within_class_corr  # noqa: E402

from idml_jax import methods  # noqa: E402
from idml_jax.config_files import load_module  # noqa: E402
from idml_jax.evaluation import (  # noqa: E402
    confidence_scores,
    rauroc,
    risk_coverage,
    selective_report,
)
from idml_jax.evaluation.confidence import cross_fitted  # noqa: E402

SETS = ("icons", "glyphs", "glyphs_degraded", "fonts")
ROWS = ("baseline-pa", "idml-pa", "baseline-ms", "idml-ms", "iaa-ms", "idml_iaa-ms")
SCORES = ("uncertainty", "nearest", "gap", "combined")
# A row's method word (configs/small_images.py's argument) -> the method.
ROW_METHODS = load_module(CONFIG).METHODS


def study(arrays: dict, images: dict | None, introspective: bool) -> dict:
  """The figures of one run (``arrays``: its saved per-query figures; ``images``: the set's
  ``images.json``, or None; ``introspective``: the row has an uncertainty head)."""
  labels, failed = arrays["labels"], arrays["failed"].astype(bool)
  has_u = introspective
  scores = confidence_scores(uncertainty_norm=arrays["uncertainty_norm"] if has_u else None,
                             nearest_score=arrays["nearest_score"],
                             second_score=arrays["second_score"])
  scalars, _, undefined = selective_report(scores, ~failed, {"recall@1": ~failed}, labels)
  miss = failed.astype(np.float64)
  out = {"recall@1": float(1 - miss.mean()), "undefined": undefined,
         **{k: v for k, v in scalars.items() if k.split("_")[0] in ("aurc", "rauroc")},
         "eta2_miss": _class_share(miss, labels),
         "corr_nn_miss_within": _within_class_corr(-arrays["nearest_score"], miss, labels)}
  if has_u:
    u = arrays["uncertainty_norm"].astype(np.float64)
    out.update(eta2_u=_class_share(u, labels),
               corr_u_miss_within=_within_class_corr(u, miss, labels),
               u_zero=float(np.mean(u <= 1e-6)))
  if images is not None:
    info = [images[str(p)] for p in arrays["image"]]
    for key in ("level", "ink"):
      if key not in info[0]:
        continue
      v = np.asarray([i[key] for i in info], np.float64)
      if has_u:
        out[f"spearman_u_{key}"] = float(scipy.stats.spearmanr(u, v).statistic)
      groups = v if key == "level" else np.digitize(v, np.quantile(v, [1 / 3, 2 / 3]))
      out[f"recall@1_by_{key}"] = {int(g): float(1 - miss[groups == g].mean())
                                   for g in np.unique(groups)}
  return out


def load(arrays_dir: str, data: str | None) -> dict[tuple[str, str], list[dict]]:
  """``{(set, row): [study of each seed]}`` of every saved run (default variant, cnn)."""
  images = {}
  out = collections.defaultdict(list)
  for path in sorted(glob.glob(os.path.join(arrays_dir, "*-default-cnn.npz"))):
    set_name, method, loss, seed = os.path.basename(path).split("-")[:4]
    if set_name not in images:
      found = data and os.path.join(data, set_name, "images.json")
      images[set_name] = json.load(open(found)) if found and os.path.exists(found) else None
    with np.load(path) as z:
      arrays = {k: z[k] for k in z.files}
    out[(set_name, f"{method}-{loss}")].append({"seed": int(seed), **study(
        arrays, images[set_name], methods.METHODS[ROW_METHODS[method]].introspective)})
  return out


def _paired(a, b) -> str:
  """mean ± standard error of a − b, paired over seeds."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  if len(d) < 2:
    return "–"
  return f"{d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f}"


def table(runs: dict, set_name: str) -> str:
  lines = [f"**{set_name}**", "",
           "| row | seeds | R@1 | AURC ‖u‖ | nearest | gap | combined | combined − nearest | "
           "R-AUROC ‖u‖ | nearest | gap | combined | combined − nearest | η² miss | η² ‖u‖ | "
           "within-class corr ‖u‖ / −nearest with miss | ‖u‖ = 0 |", "|" + "---|" * 17]
  for row in ROWS:
    rs = runs.get((set_name, row))
    if not rs:
      continue
    g = lambda k, rs=rs: [r.get(k) for r in rs]
    idml = methods.METHODS[ROW_METHODS[row.split("-")[0]]].introspective
    lines.append(
        f"| {row} | {len(rs)} | {_ms(g('recall@1'))} | "
        + " | ".join(_ms(g(f"aurc_{s}")) if s != "uncertainty" or idml else "–" for s in SCORES)
        + f" | {_paired(g('aurc_combined'), g('aurc_nearest'))} | "
        + " | ".join(_ms(g(f"rauroc_{s}")) if s != "uncertainty" or idml else "–"
                     for s in SCORES)
        + f" | {_paired(g('rauroc_combined'), g('rauroc_nearest'))}"
        + f" | {_ms(g('eta2_miss'), 2)} | {_ms(g('eta2_u'), 2) if idml else '–'} | "
        + (f"{_ms(g('corr_u_miss_within'), 2)} / " if idml else "– / ")
        + f"{_ms(g('corr_nn_miss_within'), 2)} | {_ms(g('u_zero'), 2) if idml else '–'} |")
  extra = [(row, rs) for row in ROWS if (rs := runs.get((set_name, row)))
           and any(k.startswith("recall@1_by_") for k in rs[0])]
  if extra:
    key = next(k for k in extra[0][1][0] if k.startswith("recall@1_by_"))
    what = key.removeprefix("recall@1_by_")
    groups = sorted(extra[0][1][0][key])
    names = ([f"level {g}" for g in groups] if what == "level"
             else ["ink: lowest third", "middle", "highest"])
    lines += ["", f"| row | Spearman(‖u‖, {what}) | " + " | ".join(
        f"R@1 {n}" for n in names) + " |", "|" + "---|" * (2 + len(groups))]
    for row, rs in extra:
      sp = [r.get(f"spearman_u_{what}") for r in rs]
      lines.append(f"| {row} | {_ms(sp, 2) if sp[0] is not None else '–'} | " + " | ".join(
          _ms([r[key][g] for r in rs]) for g in groups) + " |")
  return "\n".join(lines)


def strength_table(arrays_dir: str, strengths: list[float]) -> str:
  """``combined − nearest`` (R-AUROC / AURC, paired over seeds) per set, row and strength."""
  deltas = collections.defaultdict(list)  # (set, row, strength) -> [(dR-AUROC, dAURC)]
  for path in sorted(glob.glob(os.path.join(arrays_dir, "*-default-cnn.npz"))):
    set_name, method, loss, _ = os.path.basename(path).split("-")[:4]
    with np.load(path) as z:
      ok = ~z["failed"].astype(bool)
      has_u = methods.METHODS[ROW_METHODS[method]].introspective
      scores = confidence_scores(uncertainty_norm=z["uncertainty_norm"] if has_u else None,
                                 nearest_score=z["nearest_score"],
                                 second_score=z["second_score"])
      labels = z["labels"]
    near = (rauroc(scores["nearest"], ok), risk_coverage(scores["nearest"], ok)["aurc"])
    for s in strengths:
      c = cross_fitted(scores, ok, labels, strength=s)
      deltas[(set_name, f"{method}-{loss}", s)].append(
          (rauroc(c, ok) - near[0], risk_coverage(c, ok)["aurc"] - near[1]))
  lines = ["| set | row | seeds | " + " | ".join(
      f"{s}: Δ R-AUROC / Δ AURC" for s in strengths) + " |", "|" + "---|" * (3 + len(strengths))]
  for set_name in SETS:
    for row in ROWS:
      cells, n = [], 0
      for s in strengths:
        d = np.asarray(deltas.get((set_name, row, s), []), np.float64)
        if len(d) < 2:
          continue
        n = len(d)
        se = d.std(axis=0, ddof=1) / np.sqrt(n)
        below = d[:, 0].mean() < -se[0] or d[:, 1].mean() > se[1]
        cells.append(f"{d[:, 0].mean():+.3f} ± {se[0]:.3f} / {d[:, 1].mean():+.3f} ± "
                     f"{se[1]:.3f}{' below' if below else ''}")
      if cells:
        lines.append(f"| {set_name} | {row} | {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--arrays", required=True)
  p.add_argument("--data", default=os.path.expanduser("~/realdata"))
  p.add_argument("--sets", default=",".join(SETS))
  p.add_argument("--strengths", default="",
                 help="comma-separated prior strengths: print how combined depends on them")
  args = p.parse_args()
  if args.strengths:
    print(strength_table(args.arrays, [float(s) for s in args.strengths.split(",")]))
    return
  runs = load(args.arrays, args.data)
  for set_name in args.sets.split(","):
    print(table(runs, set_name), end="\n\n")


if __name__ == "__main__":
  main()
