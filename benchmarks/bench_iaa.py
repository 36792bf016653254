"""IAA estimate update + neighbor correction at SOP-train scale (59,551×512, 11,318 classes).

Usage: python benchmarks/bench_iaa.py [--dataset sop_train] [--repeats 3]

The official PyTorch code takes ~7.7 s here (FACTS.md); its small-dataset merge on CUB
~1.9 s. Prints compile+first-call and steady-state medians measured in this run.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import SIZES, clustered_embeddings  # noqa: E402

from idml_jax import iaa  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--dataset", default="sop_train")
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  x, y = clustered_embeddings(args.dataset)
  z, labels = jnp.asarray(x), jnp.asarray(y)
  num_classes = SIZES[args.dataset][1]
  correct = num_classes > 1000
  update = jax.jit(lambda s, z, y: iaa.update(s, z, y, correct=correct))
  stats = iaa.ClassStats.create(num_classes, x.shape[1])
  for name, fn in [("merge only", jax.jit(lambda s, z, y: iaa.update(s, z, y))),
                   ("merge + correction" if correct else "merge", update)]:
    t = time.perf_counter()
    jax.block_until_ready(fn(stats, z, labels))
    first = time.perf_counter() - t
    times = []
    for _ in range(args.repeats):
      t = time.perf_counter()
      jax.block_until_ready(fn(stats, z, labels))
      times.append(time.perf_counter() - t)
    print(f"{args.dataset} {name:20s} first call (with compile) {first:6.2f} s, "
          f"steady median {statistics.median(times):6.2f} s", flush=True)


if __name__ == "__main__":
  main()
