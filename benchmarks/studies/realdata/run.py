"""Every method × loss × seed on the real-image sets, one table (resumable by row).

    python benchmarks/studies/realdata/make_sets.py --out ~/realdata           # once (see its doc)
    python benchmarks/studies/realdata/run.py --data ~/realdata --out realdata.jsonl \\
        [--sets icons,glyphs] [--rows idml-pa,baseline-ms,...] [--seeds 0,1,2,3,4] \\
        [--variants default,official] [--steps 1200]
    python benchmarks/studies/realdata/run.py --out realdata.jsonl --table     # the table only

Each row trains ``configs/small_images.py:<method>,<loss>`` (a variant's overrides on top)
on a set's train classes and evaluates on its test classes; its figures are appended to
``--out`` as one JSON line, so an interrupted benchmark continues where it stopped and can
be run in parts (by set, row or seed). The table gives mean ± sd over seeds of test
Recall@1 and MAP@R, the AURC (lower is better) of each confidence score — ``u`` = IDML's
‖u‖, ``nn`` = the nearest similarity, ``gap`` = top-1 − top-2 — with E-AURC, corr(‖u‖, miss),
how often ‖u‖ beats the nearest similarity, the ISM factor during the last epoch (mean,
p10–p90) and how ‖u‖ spreads over the test images (the fraction at 0 and at its bound 1).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))
import jax  # noqa: E402
import numpy as np  # noqa: E402

from idml_jax import data  # noqa: E402
from idml_jax.config_files import from_file  # noqa: E402
from idml_jax.train import loop  # noqa: E402
from idml_jax.train.reporting import read_metrics  # noqa: E402
from idml_jax.train.workdir import Workdir  # noqa: E402

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs", "small_images.py")
ROWS = ("baseline-pa", "idml-pa", "baseline-ms", "idml-ms", "iaa-ms", "idml_iaa-ms")
# variant -> config overrides (dotted keys) on top of the recipe.
VARIANTS = {
    "default": {},
    "official": {"model.uncertainty_activation": "l2_normalize",
                 "model.uncertainty_input": "features", "model.uncertainty_init": "torch"},
    "relu": {"model.uncertainty_activation": "relu"},
    "softplus_bounded": {"model.uncertainty_activation": "softplus_bounded"},
    # The pairwise form: no offset (u = 0 gives the cosine), dmu from the raw mu, or each
    # anchor's own uncertainty only (du_ij = ||u_i||², as against proxies).
    "a0": {"ism.a": 0.0},
    "raw": {"ism.semantic_distance": "raw"},
    "anchor": {"ism.pair_uncertainty": "anchor"},
    # The recipe: PyTorch's default convolution initialisation; a plain 3-block CNN.
    "torch_init": {"model.conv_init": "torch"},
    "cnn_small": {"model.backbone": "cnn_small"},
    "cnn_small_torch_init": {"model.backbone": "cnn_small", "model.conv_init": "torch"},
    # What a plain PyTorch loop of a user's may do otherwise (issue 35: Multi-Similarity).
    "no_flip": {"data.flip": False},
    "max_pool": {"model.pooling": "max"},
    "head_lr10": {"optimizer.head_lr_mult": 10.0},
}


def _class_share(values: np.ndarray, labels: np.ndarray) -> float:
  """η²: the share of ``values``' variance [N] that lies between the classes ``labels`` [N]."""
  values = values.astype(np.float64)
  total = np.sum((values - values.mean()) ** 2)
  between = sum(np.sum(labels == c) * (values[labels == c].mean() - values.mean()) ** 2
                for c in np.unique(labels))
  return float(between / total) if total > 0 else float("nan")


def _within_class_corr(x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> float:
  """corr(x, y) [N] after removing each class's mean from both: within-class agreement."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  for c in np.unique(labels):
    x[labels == c] -= x[labels == c].mean()
    y[labels == c] -= y[labels == c].mean()
  sx, sy = np.sqrt(np.sum(x * x)), np.sqrt(np.sum(y * y))
  return float(np.sum(x * y) / (sx * sy)) if sx > 0 and sy > 0 else float("nan")


def error_structure(ev: dict) -> dict:
  """How much of the test misses is a class's rather than an image's, and how ‖u‖ and the
  nearest similarity follow misses inside a class (``ev``: ``evaluated`` of a run)."""
  labels, miss = np.asarray(ev["labels"]), np.asarray(ev["failed"], np.float64)
  out = {"miss_class_share": _class_share(miss, labels),
         "nn_miss_corr_within_class": _within_class_corr(-np.asarray(ev["nearest_score"]),
                                                         miss, labels)}
  if "uncertainty_norm" in ev:
    u = np.asarray(ev["uncertainty_norm"])
    out.update(u_class_share=_class_share(u, labels),
               u_miss_corr_within_class=_within_class_corr(u, miss, labels))
  return out


def save_arrays(path: str, ev: dict, set_dir: str) -> None:
  """The per-query figures of a run's final evaluation (``ev``: its ``evaluated``), with each
  query's image (relative to ``set_dir``), for studies that need more than the row."""
  paths = np.asarray(data.load_splits("image_folder", "folder", set_dir)["test"].paths)
  keep = ("labels", "failed", "first_hit_rank", "nearest_score", "second_score",
          "uncertainty_norm")
  np.savez_compressed(path, **{k: np.asarray(ev[k]) for k in keep if k in ev},
                      image=np.asarray([os.path.relpath(p, set_dir) for p in
                                        paths[np.asarray(ev["index"])]]))


def run_row(data: str, set_name: str, row: str, seed: int, variant: str, steps: int,
            overrides: dict | None = None, network: str = "resnet",
            arrays: str | None = None) -> dict:
  method, loss = row.split("-")
  c = from_file(f"{CONFIG}:{method},{loss},{network}")  # Variants change it.
  c.data.data_dir = os.path.join(data, set_name)
  c.seed = seed
  epochs = max(1, steps // c.max_steps_per_epoch)
  if epochs != c.num_epochs:  # Keep IAA's start and the evaluations at the same fractions.
    c.iaa.start_epoch = max(1, round(c.iaa.start_epoch * epochs / c.num_epochs))
    c.num_epochs = epochs
  c.eval.every_epochs, c.eval.nmi = c.num_epochs, False  # Untrained and final only.
  c.update_from_flattened_dict({**(overrides or {}), **VARIANTS[variant]})
  with tempfile.TemporaryDirectory() as workdir:
    t = time.perf_counter()
    results = loop.train_and_evaluate(c, workdir)
    if arrays:
      os.makedirs(arrays, exist_ok=True)
      save_arrays(os.path.join(arrays, f"{set_name}-{row}-{seed}-{variant}-{network}.npz"),
                  results["evaluated"], c.data.data_dir)
    logged = [r for r in read_metrics(Workdir(workdir)) if "train/ism_factor_mean" in r]
  last_epoch = logged[-max(1, c.max_steps_per_epoch // c.log_every_steps):]
  factor = {k: statistics.mean(r[f"train/ism_factor_{k}"] for r in last_epoch)
            for k in ("mean", "p10", "p90")} if last_epoch else {}
  final = results["final"]
  return {"set": set_name, "row": row, "seed": seed, "variant": variant, "steps": steps,
          "network": network, "platform": jax.devices()[0].platform,
          "untrained_recall@1": results["untrained"]["recall@1"],
          **{k: v for k, v in final.items() if isinstance(v, float | int)},
          **{f"factor_{k}": v for k, v in factor.items()},
          **error_structure(results["evaluated"]),
          "seconds": round(time.perf_counter() - t, 1)}


def _done(path: str) -> dict[tuple, dict]:
  if not os.path.exists(path):
    return {}
  rows = [json.loads(line) for line in open(path) if line.strip()]
  return {(r["set"], r["row"], r["seed"], r["variant"], r["steps"], r.get("repeat", 0),
           r.get("network", "resnet")): r for r in rows}


def _ms(values: list[float], digits: int = 3) -> str:
  """mean ± sd of the values that are not None or NaN ("–" without any)."""
  values = [v for v in values if v is not None and v == v]
  if not values:
    return "–"
  sd = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def table(rows: list[dict]) -> str:
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r["set"], r.get("platform", "cpu"), r["variant"], r["steps"], r["row"]),
                      []).append(r)
  head = ("| set | on | variant | row | runs | R@1 untrained → trained | MAP@R | AURC u | "
          "AURC nn | AURC gap | E-AURC u | corr(‖u‖, miss) | u < nn | factor mean (p10–p90) | "
          "‖u‖ = 0 | ‖u‖ ≥ 0.99 |")
  lines = [head, "|" + "---|" * 16]
  for (set_name, platform, variant, _, row), rs in sorted(groups.items(), key=lambda kv: (
      kv[0][:3], ROWS.index(kv[0][4]) if kv[0][4] in ROWS else 99)):
    g = lambda k, rs=rs: [r.get(k) for r in rs]
    idml = "idml" in row
    wins = sum(r["aurc_uncertainty"] < r["aurc_nearest"] for r in rs) if idml else None
    factor = (f"{_ms(g('factor_mean'), 2)} ({statistics.mean(g('factor_p10')):.2f}–"
              f"{statistics.mean(g('factor_p90')):.2f})" if idml and rs[0].get("factor_mean")
              is not None else "–")
    lines.append(
        f"| {set_name} | {platform} | {variant} | {row} | {len(rs)} | "
        f"{statistics.mean(g('untrained_recall@1')):.3f} → {_ms(g('recall@1'))} | "
        f"{_ms(g('map@r'))} | {_ms(g('aurc_uncertainty')) if idml else '–'} | "
        f"{_ms(g('aurc_nearest'))} | {_ms(g('aurc_gap'))} | "
        f"{_ms(g('eaurc_uncertainty')) if idml else '–'} | "
        f"{_ms(g('uncertainty_failure_corr'), 2) if idml else '–'} | "
        f"{f'{wins}/{len(rs)}' if idml else '–'} | {factor} | "
        f"{_ms(g('uncertainty_zero_fraction'), 2) if idml else '–'} | "
        f"{_ms(g('uncertainty_bound_fraction'), 2) if idml else '–'} |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", default=os.path.expanduser("~/realdata"))
  p.add_argument("--out", default="realdata.jsonl")
  p.add_argument("--sets", default="icons,glyphs")
  p.add_argument("--rows", default=",".join(ROWS))
  p.add_argument("--seeds", default="0,1,2,3,4")
  p.add_argument("--variants", default="default")
  p.add_argument("--steps", type=int, default=1200)
  p.add_argument("--network", default="resnet", help="configs/small_images.py's network: cnn "
                 "(the recipe's default) or resnet (the tables measured before it).")
  p.add_argument("--arrays", default=None, help="Also save each row's per-query figures here "
                 "(one .npz a row).")
  p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                 help="A config override for every row (e.g. data.num_threads=2); not recorded "
                      "in the row: use it for settings that do not change the figures.")
  p.add_argument("--repeat", type=int, default=0,
                 help="Run rows already in --out again, recorded as this repeat (GPU runs are "
                      "not bit-reproducible: a repeat of a seed is another draw).")
  p.add_argument("--deadline", type=float, default=None,
                 help="Unix time after which no new row starts (rows finished so far stay).")
  p.add_argument("--table", action="store_true", help="Print the table of --out and stop.")
  args = p.parse_args()
  if not args.table:
    overrides = {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in args.override)}
    done = _done(args.out)
    for seed in (int(s) for s in args.seeds.split(",")):  # Seed-major: whole rows early.
      for set_name in args.sets.split(","):
        for variant in args.variants.split(","):
          for row in args.rows.split(","):
            if (set_name, row, seed, variant, args.steps, args.repeat,
                args.network) in done:
              continue
            if args.deadline and time.time() > args.deadline:
              print("deadline passed: stopping before", set_name, row, seed, variant)
              return
            result = {**run_row(args.data, set_name, row, seed, variant, args.steps, overrides,
                                args.network, args.arrays), "repeat": args.repeat}
            with open(args.out, "a") as f:
              f.write(json.dumps(result) + "\n")
            print(json.dumps({k: result[k] for k in ("set", "row", "seed", "variant",
                                                     "recall@1", "seconds")}), flush=True)
  seeds = {int(s) for s in args.seeds.split(",")}
  print(table([r for r in _done(args.out).values() if r["seed"] in seeds]))


if __name__ == "__main__":
  main()
