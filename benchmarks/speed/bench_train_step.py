"""Train-step throughput per method, and the loss/IAA share of the step.

Usage: python benchmarks/speed/bench_train_step.py [--model demo|resnet50] [--batch 40]
       [--methods baseline,idml,iaa,idml+iaa] [--dtype bfloat16] [--steps 5]

For each method: images/s of the full jitted step (IDML: two forward passes), and the
same step with the metric-learning loss replaced by a trivial one (sum of embeddings):
``overhead = 1 - trivial / full`` is the share of the step spent in the loss, Mixup's
second pass excluded (it is part of both), and IAA synthesis.
"""

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))
from common import median_step_seconds, recipe, steady_state  # noqa: E402

from idml_jax.tasks import retrieval  # noqa: E402
from idml_jax.train.steps import Steps, make_mesh, to_global  # noqa: E402


def config_for(model: str, method: str, batch: int, dtype: str):
  """``method``'s paper recipe (``common.RECIPES``) at the benchmark's network and sizes."""
  c = recipe(method)
  c.optimizer.warmup_epochs = 0
  c.batch_size = batch
  c.model.dtype = dtype
  if model == "demo":
    c.model.backbone, c.model.embedding_dim = "resnet_tiny", 64
    c.data.image_size = 64
  else:
    c.model.backbone, c.data.image_size = "resnet50", 224
  return c


def time_step(c, num_classes, steps_n, trivial: bool):
  steps = Steps.build(c, num_classes, 100, make_mesh())
  z = np.random.default_rng(0).standard_normal((4 * num_classes, c.model.embedding_dim))
  y = np.repeat(np.arange(num_classes), 4).astype(np.int32)
  mesh, (state, plan) = steps.mesh, steady_state(steps, z.astype(np.float32), y)
  rng = np.random.default_rng(0)
  s = c.data.image_size
  batch = to_global(mesh, {
      "image": rng.integers(0, 255, (c.batch_size, s, s, 3), dtype=np.uint8),
      "label": np.repeat(np.arange(c.batch_size // 4), 4).astype(np.int32) % num_classes})
  if trivial:
    real = retrieval.loss_on_embeddings
    retrieval.loss_on_embeddings = lambda cfg, out, *a, **k: jnp.sum(out["semantic"]) * 1e-6
  try:
    return median_step_seconds(lambda s: steps.train_step(
        s, batch, plan, train_backbone=True), state, steps_n)
  finally:
    if trivial:
      retrieval.loss_on_embeddings = real


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--model", default="demo", choices=["demo", "resnet50"])
  p.add_argument("--batch", type=int, default=40)
  p.add_argument("--methods", default="baseline,idml,iaa,idml+iaa")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--classes", type=int, default=100)
  p.add_argument("--steps", type=int, default=5)
  args = p.parse_args()
  print(f"{args.model} batch {args.batch} {args.dtype} on {jax.device_count()}× "
        f"{jax.devices()[0].device_kind}")
  for method in args.methods.split(","):
    c = config_for(args.model, method, args.batch, args.dtype)
    full = time_step(c, args.classes, args.steps, trivial=False)
    base = time_step(c, args.classes, args.steps, trivial=True)
    print(f"{method:9s} {args.batch / full:8.1f} images/s ({full * 1000:7.1f} ms/step); "
          f"loss+IAA share of the step {max(0.0, 1 - base / full):5.1%}", flush=True)


if __name__ == "__main__":
  main()
