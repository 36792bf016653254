"""The train loop against its bare step: does the loop run at the speed of its step?

    python benchmarks/bench_loop.py [--rows baseline,pa idml,pa iaa,ms idml_iaa,ms] \\
        [--epochs 6] [--repeats 3] [--slow 0.8]

For each row (``configs/small_images.py:<method>,<loss>,resnet`` on the demo's glyphs, the
demo's logging, checkpoint and evaluation settings, ``--epochs`` of 40 steps) and repeat:

* ``step``: steps/s of the bare jitted train step (the loop's own ``Steps``), on batches
  already on the device, after compilation, timed over ``--epochs`` × 40 steps;
* ``loop``: steps/s of ``train_and_evaluate`` as the progress line reports it (logging,
  checkpoints, IAA estimates and input included; compilation and evaluation left out: the
  median over its logs);
* ``loop, slow input``: the same with the input pipeline slowed by a sleep of ``--slow`` ×
  the bare step's time per batch (on the host thread that feeds the device: overlap with the
  device's work is what keeps the ratio up).

Prints each ratio loop ÷ step (goal ≥ 0.95; ≥ 0.9 with the slow input), mean over repeats.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from idml_jax import data  # noqa: E402
from idml_jax.config_files import load_module  # noqa: E402
from idml_jax.train import loop  # noqa: E402
from idml_jax.train.checkpoint import Workdir  # noqa: E402
from idml_jax.train.reporting import read_metrics  # noqa: E402
from idml_jax.train.steps import Steps, make_mesh, to_global  # noqa: E402


def config(row: str, epochs: int):
  method, loss = row.split(",")
  c = load_module(os.path.join(ROOT, "configs", "small_images.py")).build(method, loss, "resnet")
  c.data.source, c.data.name = "demo", "glyphs"  # The demo's data and settings.
  c.num_epochs, c.eval.every_epochs, c.eval.at_start = epochs, 10, False
  c.iaa.start_epoch = min(c.iaa.start_epoch, 1)
  return c


def bare_rate(c) -> float:
  """Steps/s of the jitted step alone on device-resident batches (after compilation)."""
  splits = data.load_splits(c.data.name, c.data.source)
  labels = splits["train"].labels
  sampler = data.SAMPLERS[c.data.sampler](labels, c.batch_size, c.data.images_per_class, c.seed)
  spe = sampler.steps_per_epoch(c.max_steps_per_epoch or None)
  steps = Steps.build(c, int(labels.max()) + 1, spe, make_mesh())
  state = steps.fresh_state()
  n = c.num_epochs * spe
  batches = [to_global(steps.mesh, {k: b[k] for k in ("image", "label")}) for b in
             data.train_batches(splits["train"], sampler, image_size=c.data.image_size,
                                seed=c.seed, start_step=0, num_steps=min(n, 40),
                                transform=data.transforms.from_config(c)[0])]
  synth = c.method in ("iaa", "idml+iaa")
  state, m = steps.train_step(state, batches[0], 0.8 if synth else 0.0, synthesize=synth,
                              train_backbone=True)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for i in range(n):
    state, m = steps.train_step(state, batches[i % len(batches)], 0.8 if synth else 0.0,
                                synthesize=synth, train_backbone=True)
  jax.block_until_ready(m)
  return n / (time.perf_counter() - t)


def loop_rate(c, sleep: float = 0.0) -> float:
  """The loop's steps/s (median of its progress logs, compilation and evaluation left out)."""
  real = data.train_batches

  def slowed(*args, **kwargs):
    for b in real(*args, **kwargs):
      time.sleep(sleep)
      yield b

  loop.data.train_batches = slowed if sleep else real
  try:
    with tempfile.TemporaryDirectory() as w:
      loop.train_and_evaluate(c, w)
      rates = [r["train/steps_per_sec"] for r in read_metrics(Workdir(w))
               if "train/steps_per_sec" in r]
  finally:
    loop.data.train_batches = real
  return float(np.median(rates))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rows", nargs="+", default=["baseline,pa", "idml,pa", "iaa,ms",
                                               "idml_iaa,ms"])
  p.add_argument("--epochs", type=int, default=6)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--slow", type=float, default=0.8)
  args = p.parse_args()
  print("| row | step (steps/s) | loop ÷ step | loop ÷ step, slow input | repeats |")
  print("|---|---|---|---|---|")
  for row in args.rows:
    steps, ratios, slow_ratios = [], [], []
    for _ in range(args.repeats):
      c = config(row, args.epochs)
      step = bare_rate(c)
      steps.append(step)
      ratios.append(loop_rate(config(row, args.epochs)) / step)
      slow_ratios.append(loop_rate(config(row, args.epochs), args.slow / step) / step)
    print(f"| {row} | {statistics.mean(steps):.1f} | {statistics.mean(ratios):.3f} | "
          f"{statistics.mean(slow_ratios):.3f} | {args.repeats} |", flush=True)


if __name__ == "__main__":
  main()
