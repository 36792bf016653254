"""Classification train-step throughput per paper row, as a ratio to the baseline row.

Usage: python benchmarks/speed/bench_classification_step.py [--model demo|resnet50] [--batch 64]
       [--classes 1000] [--steps 5] [--dtype float32|bfloat16]

The ISM adds the uncertainty branch and a [B, C] distance matrix to the logits; Mixup and
CutMix add a permutation gather of the global batch. Each row's full jitted step (BatchNorm
training, SGD) is timed on random images, the rows interleaved over ``--rounds`` rounds
(the best median per row is kept); the baseline is measured in the same run.
"""

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import median_step_seconds  # noqa: E402

from idml_jax import config_files  # noqa: E402
from idml_jax.train.steps import Steps, make_mesh, to_global  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
ROWS = ("baseline", "ism", "mixup", "idml_mixup", "cutmix", "idml_cutmix")


def config_for(model: str, row: str, batch: int, dtype: str):
  c = config_files.from_file(os.path.join(ROOT, "configs", "classification.py") + ":"
                           + ("imagenet," if model == "resnet50" else "demo,") + row)
  c.batch_size, c.model.dtype = batch, dtype
  c.mixing.cutmix_prob = 1.0  # Time the mixing on every step.
  return c


def time_step(c, num_classes: int, n: int) -> float:
  steps = Steps.build(c, num_classes, 100, make_mesh())
  mesh, state = steps.mesh, steps.fresh_state()
  rng = np.random.default_rng(0)
  s = c.data.image_size
  batch = to_global(mesh, {
      "image": rng.integers(0, 255, (c.batch_size, s, s, 3), dtype=np.uint8),
      "label": rng.integers(0, num_classes, c.batch_size).astype(np.int32)})
  return median_step_seconds(lambda s: steps.train_step(
      s, batch, steps.method.plan(0), train_backbone=True), state, n)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--model", default="demo", choices=["demo", "resnet50"])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--classes", type=int, default=1000)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--rounds", type=int, default=2)
  args = p.parse_args()
  print(f"{args.model} batch {args.batch} {args.dtype}, {args.classes} classes, on "
        f"{jax.device_count()}× {jax.devices()[0].device_kind}")
  best = {}
  for _ in range(args.rounds):
    for row in ROWS:
      t = time_step(config_for(args.model, row, args.batch, args.dtype), args.classes,
                    args.steps)
      best[row] = min(best.get(row, t), t)
  base = best["baseline"]
  for row, t in best.items():
    print(f"{row:12s} {args.batch / t:9.1f} images/s ({t * 1000:8.1f} ms/step), "
          f"{t / base:5.2f}× the baseline's step time", flush=True)


if __name__ == "__main__":
  main()
