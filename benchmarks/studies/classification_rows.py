"""Small-scale comparison of the classification rows (IDML §1.4) on the shipped data.

Usage: python benchmarks/studies/classification_rows.py
       [--rows baseline,ism,mixup,idml_mixup,cutmix,idml_cutmix] [--seeds 0,1,2]
       [--dataset demo] [--epochs E] [--out /tmp/cls_rows]

Trains ``configs/classification.py:<dataset>,<row>`` with the same budget for every row and
seed (each run is a real training run, resumable from its workdir; ``--epochs`` changes the
budget, the decay boundaries scaled with it) and prints the final and best test top-1 per
row: mean ± standard deviation over the seeds, and each seed's value.
"""

import argparse
import json
import logging
import os
import statistics

from idml_jax import config_files
from idml_jax.train.loop import train_and_evaluate

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def load_config(arg: str):
  return config_files.from_file(os.path.join(ROOT, "configs", "classification.py") + ":" + arg)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--rows", default="baseline,ism,mixup,idml_mixup,cutmix,idml_cutmix")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--dataset", default="demo")
  p.add_argument("--epochs", type=int, default=0, help="0: the config's")
  p.add_argument("--out", default="/tmp/cls_rows")
  args = p.parse_args()
  logging.getLogger().setLevel(logging.WARNING)
  table = {}
  for row in args.rows.split(","):
    for seed in map(int, args.seeds.split(",")):
      c = load_config(f"{args.dataset},{row}")
      c.seed = seed
      if args.epochs:
        scale = args.epochs / c.num_epochs
        c.optimizer.boundaries = tuple(round(b * scale) for b in c.optimizer.boundaries)
        c.num_epochs = args.epochs
        c.eval.every_epochs = max(1, args.epochs // 6)
      workdir = os.path.join(args.out, f"{args.dataset}_{row}_e{c.num_epochs}_seed{seed}")
      path = os.path.join(workdir, "results.json")
      r = json.load(open(path)) if os.path.exists(path) else train_and_evaluate(c, workdir)
      table.setdefault(row, []).append((r["final"]["top1"], r["best"]["top1"],
                                        r["final"].get("uncertainty_failure_corr")))
      print(f"{row:12s} seed {seed}: final top-1 {r['final']['top1']:.4f} "
            f"best {r['best']['top1']:.4f}", flush=True)
  print(f"\n{'row':12s} {'final top-1 (mean ± sd)':>26s} {'best top-1':>18s}  per seed (final)")
  for row, vals in table.items():
    final, best = [v[0] for v in vals], [v[1] for v in vals]
    sd = lambda x: statistics.stdev(x) if len(x) > 1 else 0.0
    print(f"{row:12s} {100 * statistics.mean(final):17.2f} ± {100 * sd(final):5.2f} "
          f"{100 * statistics.mean(best):11.2f} ± {100 * sd(best):4.2f}  "
          + " ".join(f"{100 * v:.1f}" for v in final))


if __name__ == "__main__":
  main()
