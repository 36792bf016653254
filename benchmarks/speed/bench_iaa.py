"""IAA estimate update + neighbor correction at SOP-train scale (59,551×512, 11,318 classes).

Usage: python benchmarks/speed/bench_iaa.py [--dataset sop_train] [--repeats 3] [--no-numpy]

Baseline, measured in the same run: a straightforward NumPy port of the official code
(a Python loop over classes for the merge; the two C×C distance matrices by NumPy
matmul, i.e. OpenBLAS; a loop over classes for neighbors, weights and sums). The
official PyTorch code takes ~7.7 s here (docs/facts.md). Prints compile + first call and
steady-state medians, and the ratio to the baseline.
"""

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))
from common import SIZES, clustered_embeddings, timed  # noqa: E402

from idml_jax import iaa  # noqa: E402


def _sq_dist(x: np.ndarray) -> np.ndarray:
  n = np.sum(x * x, axis=1)
  return np.maximum(n[:, None] + n[None, :] - 2 * x @ x.T, 0)


def numpy_update(z: np.ndarray, y: np.ndarray, num_classes: int, k: int = 25,
                 beta: float = 0.1, gamma: float = 0.1, tau: float = 40.0) -> np.ndarray:
  """First estimate (empty state) + neighbor correction, class by class. -> [C, D]."""
  d = z.shape[1]
  mean = np.zeros((num_classes, d), np.float32)
  cov = np.zeros((num_classes, d), np.float32)
  b = np.zeros(num_classes)
  order = np.argsort(y, kind="stable")
  starts = np.searchsorted(y[order], np.arange(num_classes + 1))
  for c in range(num_classes):  # Merge into an empty state: w = 1.
    zc = z[order[starts[c]:starts[c + 1]]]
    b[c] = len(zc)
    if len(zc):
      mean[c], cov[c] = zc.mean(0), zc.var(0)
  elig = b > 1
  dm, dc = np.sqrt(_sq_dist(mean**2)), np.sqrt(_sq_dist(cov))
  g = (b[elig, None] * cov[elig]).sum(0) / b[elig].sum()
  out = np.empty_like(cov)
  for c in range(num_classes):
    valid = elig.copy()
    valid[c] = False
    idx = np.flatnonzero(valid)
    nbr = idx[np.argpartition(dm[c, idx], k)[:k]]
    norm = lambda row: (row[nbr] - row[idx].min()) / (row[idx].max() - row[idx].min())  # noqa: B023
    w = b[nbr] * np.exp(-norm(dm[c]) ** 2 / 2 - norm(dc[c]) ** 2 / 2)
    nb = (w[:, None] * cov[nbr]).sum(0) / w.sum()
    alpha = 1 / (1 + math.log(1 + beta * (max(b[c], 1) - 1))) if b[c] < tau else 0.0
    out[c] = (1 - alpha) * cov[c] + alpha * ((1 - gamma) * nb + gamma * g)
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--dataset", default="sop_train")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no-numpy", action="store_true", help="skip the NumPy baseline")
  args = p.parse_args()
  x, y = clustered_embeddings(args.dataset)
  z, labels = jnp.asarray(x), jnp.asarray(y)
  num_classes = SIZES[args.dataset][1]
  correct = num_classes > 1000
  stats = iaa.init(num_classes, x.shape[1])
  name = "merge + correction" if correct else "merge"
  runs = [("merge only", jax.jit(lambda s, z, y: iaa.update(s, z, y))),
          (name, jax.jit(lambda s, z, y: iaa.update(s, z, y, correct=correct)))]
  results = {}
  for label, fn in runs:
    out, first, times = timed(lambda fn=fn: fn(stats, z, labels), args.repeats)
    results[label] = out
    print(f"{args.dataset} {label:20s} first call (with compile) {first:6.2f} s, steady "
          f"median {statistics.median(times):6.2f} s (min {min(times):.2f}, "
          f"max {max(times):.2f})", flush=True)
  if args.no_numpy or not correct:
    return
  t = time.perf_counter()
  want = numpy_update(x, y, num_classes)
  base = time.perf_counter() - t
  got = np.asarray(results[name].synthesis_covariance)
  err = np.max(np.abs(got - want), axis=1) / np.max(np.abs(want))
  print(f"NumPy per-class baseline {base:6.2f} s; JAX steady median is "
        f"{base / statistics.median(times):.1f}× faster; classes differing by > 1e-4 (relative "
        f"to the largest entry): {int(np.sum(err > 1e-4))} of {num_classes} (a tie at the K-th "
        f"neighbor is broken differently), median difference {np.median(err):.1e}")


if __name__ == "__main__":
  main()
