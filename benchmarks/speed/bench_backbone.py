"""Backbone forward and forward+backward: JAX/Flax vs the same network in PyTorch (CPU).

Usage: python benchmarks/speed/bench_backbone.py [--backbone resnet50|vit_s16] [--batches 8,64]
       [--size 224] [--repeats 3]
Needs torch (``pip install torch==2.13.0``) for the PyTorch side (tests/torch_reference.py's
ResNet-50, tests/torch_vit.py's ViT-S/16 with timm's names); prints medians and JAX/PyTorch
ratios measured in this run. On a GPU/TPU the JAX side reports images/s.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from idml_jax.models import make_backbone, pool_features


def _median(fn, repeats):
  fn()  # Compile / warm up.
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def jax_times(name, batch, size, repeats, dtype):
  model = make_backbone(name, dtype=dtype)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)), jnp.float32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
  stats = variables.get("batch_stats", {})
  fwd = jax.jit(lambda p, x: pool_features(model.apply(p, x)).sum())
  grad = jax.jit(jax.grad(lambda params, x: pool_features(
      model.apply({"params": params, "batch_stats": stats}, x)).sum()))
  t_f = _median(lambda: fwd(variables, x).block_until_ready(), repeats)
  t_b = _median(lambda: jax.block_until_ready(grad(variables["params"], x)), repeats)
  return t_f, t_b


def torch_times(name, batch, size, repeats):
  import torch
  sys.path.insert(0, str(Path(__file__).parents[2] / "tests"))
  import torch_reference
  import torch_vit
  if name == "vit_s16":
    model = torch_vit.ViT().eval()  # ViT-S/16, timm's names; the pooled class token.
    features = model
  else:
    model = torch_reference.resnet50().eval()
    features = model.features
  x = torch.randn(batch, 3, size, size)

  def fwd():
    with torch.no_grad():
      features(x).sum()

  def fwd_bwd():
    model.zero_grad()
    features(x).sum().backward()

  return _median(fwd, repeats), _median(fwd_bwd, repeats)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--backbone", default="resnet50", choices=["resnet50", "vit_s16"])
  p.add_argument("--batches", default="8,64")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--no-torch", action="store_true")
  args = p.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {args.backbone} at "
        f"{args.size}px; JAX compute dtype {args.dtype}")
  for batch in map(int, args.batches.split(",")):
    jf, jb = jax_times(args.backbone, batch, args.size, args.repeats, jnp.dtype(args.dtype))
    line = (f"batch {batch:3d}: JAX fwd {jf:7.3f} s ({batch / jf:7.1f} img/s), "
            f"fwd+bwd {jb:7.3f} s ({batch / jb:7.1f} img/s)")
    if not args.no_torch:
      tf, tb = torch_times(args.backbone, batch, args.size, args.repeats)
      line += (f" | PyTorch fwd {tf:7.3f} s, fwd+bwd {tb:7.3f} s | JAX/PyTorch "
               f"fwd {jf / tf:.2f}×, fwd+bwd {jb / tb:.2f}×")
    print(line, flush=True)


if __name__ == "__main__":
  main()
