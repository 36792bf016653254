"""On which scale does the ISM's uncertainty act? Candidates side by side, several seeds.

Usage: python benchmarks/studies/uncertainty_parameterisation.py [--seeds 0,1,2] [--out FILE.json]
       [--candidates raw,normalized,...] [--settings patches_ms,digits_ms,patches_pa]

Each candidate fixes what the ISM's ``dmu`` is computed from (``ism.semantic_distance``)
and how the uncertainty embedding is made (activation, initialisation, input). Each setting
is the shipped demo (patches, IDML + IAA, Multi-Similarity on the pairwise ISM), the same on
scikit-learn's digits, or the demo with IDML + Proxy-Anchor (the proxy form of the ISM).
For every run: test Recall@1 and MAP@R (final), the introspective factor
``exp(-(du + a) / (b dmu))`` over training (mean, 10th and 90th percentile of its per-step
values, first and last logged step), the uncertainty's mean and its correlation with
Recall@1 failures. Prints one table (mean ± sd over seeds) and writes every run as JSON.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
from conftest import load_config  # noqa: E402

from idml_jax.train import loop  # noqa: E402
from idml_jax.train.reporting import read_metrics  # noqa: E402
from idml_jax.train.workdir import Workdir  # noqa: E402

CANDIDATES = {  # name: (semantic_distance, activation, init, input)
    "raw": ("raw", "relu", "kaiming", "features"),  # dmu from raw mu (the earlier default)
    "normalized": ("normalized", "relu", "kaiming", "features"),  # the "obvious fix"
    "normalized_small_init": ("normalized", "relu", "small", "features"),
    "normalized_features": ("normalized", "relu", "kaiming", "normalized_features"),
    "normalized_bounded": ("normalized", "relu_bounded", "kaiming", "normalized_features"),
    "official": ("normalized", "l2_normalize", "torch", "features"),  # ||u|| = 1: no learning
}
SETTINGS = {
    "patches_ms": ("demo.py", "", {}),
    "digits_ms": ("demo.py", "digits", {}),
    "patches_pa": ("demo.py", "", {"method": "idml", "loss.name": "proxy_anchor",
                                   "optimizer.proxy_lr_mult": 100.0}),
}


def run(setting: str, candidate: str, seed: int) -> dict:
  name, arg, overrides = SETTINGS[setting]
  c = load_config(name, arg)
  for key, value in overrides.items():
    node, *path = key.split(".")
    target = c[node] if path else c
    target[path[0] if path else node] = value
  (c.ism.semantic_distance, c.model.uncertainty_activation, c.model.uncertainty_init,
   c.model.uncertainty_input) = CANDIDATES[candidate]
  c.seed = seed
  with tempfile.TemporaryDirectory() as workdir:
    t = time.perf_counter()
    results = loop.train_and_evaluate(c, workdir)
    rows = [r for r in read_metrics(Workdir(workdir)) if "train/ism_factor_mean" in r]
  factor = {k: [r[f"train/ism_factor_{k}"] for r in rows] for k in ("mean", "p10", "p90")}
  final = results["final"]
  return {"setting": setting, "candidate": candidate, "seed": seed,
          "recall@1": final["recall@1"], "map@r": final["map@r"],
          "untrained_recall@1": results["untrained"]["recall@1"],
          "uncertainty_mean": final.get("uncertainty_mean"),
          "uncertainty_failure_corr": final.get("uncertainty_failure_corr"),
          "factor_mean": float(np.mean(factor["mean"])),
          "factor_p10": float(np.mean(factor["p10"])),
          "factor_p90": float(np.mean(factor["p90"])),
          "factor_first": factor["mean"][0], "factor_last": factor["mean"][-1],
          "seconds": time.perf_counter() - t}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--candidates", default=",".join(CANDIDATES))
  p.add_argument("--settings", default=",".join(SETTINGS))
  p.add_argument("--out", default=None)
  args = p.parse_args()
  runs = []
  for setting in args.settings.split(","):
    for candidate in args.candidates.split(","):
      for seed in map(int, args.seeds.split(",")):
        runs.append(run(setting, candidate, seed))
        print(json.dumps(runs[-1]), flush=True)
        if args.out:
          with open(args.out, "w") as f:
            json.dump(runs, f, indent=1)
  fmt = lambda vs: (f"{statistics.mean(vs):.3f} ± {statistics.stdev(vs):.3f}" if len(vs) > 1
                    else f"{vs[0]:.3f}")
  keys = ("recall@1", "map@r", "factor_mean", "factor_p10", "factor_p90",
          "uncertainty_failure_corr")
  print("| setting | candidate | " + " | ".join(keys) + " |")
  print("|---" * (len(keys) + 2) + "|")
  for setting in args.settings.split(","):
    for candidate in args.candidates.split(","):
      sel = [r for r in runs if r["setting"] == setting and r["candidate"] == candidate]
      cells = [fmt([r[k] for r in sel if r[k] is not None]) if any(r[k] is not None for r in sel)
               else "—" for k in keys]
      print(f"| {setting} | {candidate} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
