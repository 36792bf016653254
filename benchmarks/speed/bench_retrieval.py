"""Retrieval metrics at SOP-test scale: exact (rank counting) vs the matmul floor and ScaNN.

Usage: python benchmarks/speed/bench_retrieval.py [--dataset sop_test]
       [--backends rank_count,exact_host,approximate]

Prints wall seconds and ratios measured in this run. The matmul floor is the full
N×N similarity matrix by blocked JAX matmul (no selection at all).
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))
from common import clustered_embeddings  # noqa: E402

from idml_jax.evaluation import retrieval_metrics  # noqa: E402
from idml_jax.ops import l2_normalize_np  # noqa: E402


def matmul_floor(x: np.ndarray, block: int = 4096) -> float:
  f = jax.jit(lambda a, b: jnp.sum(a @ b.T))  # Sum so that nothing large is copied back.
  xj = jnp.asarray(x)
  f(xj[:block], xj[:block]).block_until_ready()
  t = time.perf_counter()
  outs = [f(xj[i:i + block], xj) for i in range(0, len(x), block)]
  jax.block_until_ready(outs)
  return time.perf_counter() - t


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--dataset", default="sop_test")
  p.add_argument("--noise", type=float, default=2.2)  # R@1 ~0.79 on sop_test.
  p.add_argument("--backends", default="rank_count,exact_host,approximate")
  p.add_argument("--block", type=int, default=4096)
  p.add_argument("--intrinsic-dim", type=int, default=None)
  args = p.parse_args()
  x, y = clustered_embeddings(args.dataset, noise=args.noise, intrinsic_dim=args.intrinsic_dim)
  x = l2_normalize_np(x)
  ks = (1, 10, 100, 1000) if args.dataset.startswith("sop") else (1, 2, 4, 8)
  floor = matmul_floor(x)
  print(f"{args.dataset}: N={len(x)}, classes={len(np.unique(y))}, jax={jax.__version__}")
  print(f"matmul floor (full N×N, blocked JAX): {floor:.1f} s")
  results = {}
  for b in args.backends.split(","):
    t = time.perf_counter()
    m = retrieval_metrics(x, y, recall_ks=ks, backend=b, block_size=args.block)
    dt = time.perf_counter() - t
    results[b] = m
    print(f"{b:9s} {dt:7.1f} s  ({dt / floor:.2f}× floor)  " +
          "  ".join(f"{k}={v:.4f}" for k, v in m.items()), flush=True)
  if "rank_count" in results and "approximate" in results:
    d = 100 * (results["rank_count"]["recall@1"] - results["approximate"]["recall@1"])
    print(f"approximate Recall@1 is {d:.2f} points below rank_count")


if __name__ == "__main__":
  main()
