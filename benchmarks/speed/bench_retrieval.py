"""Evaluation at SOP-test scale: our retrieval metrics against faiss's flat search, and the
clustering metrics timed apart.

Usage: python benchmarks/speed/bench_retrieval.py [--dataset sop_test] [--repeats 3]
       [--backends rank_count,exact_host,approximate] [--no-faiss] [--no-clustering]

On synthetic embeddings of the dataset's size (``common.clustered_embeddings``, noise 2.2:
Recall@1 ~0.79 on sop_test), each repeat times, in this process:

* ``faiss``: ``IndexFlatIP`` (exact inner product, ``pip install faiss-cpu``) for the
  neighbors Recall@K needs (K up to 1000 on SOP, plus the query itself), and Recall@K read
  off them — recall only, what a faiss-based evaluation (pytorch-metric-learning's
  ``AccuracyCalculator``) spends on it;
* each ``--backends``: ``evaluation.retrieval_metrics`` — Recall@K, R-Precision and MAP@R,
  which the rank count gets from the same pass;
* the matmul floor: the full N×N similarity matrix by blocked JAX matmul, nothing else;

and, once, ``evaluation.clustering_metrics`` (NMI and F1, the k-means of ``eval.kmeans``):
a run that evaluates often can skip them with ``--config.eval.nmi=False``. Prints the median
of each and the ratio to faiss.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))
from common import clustered_embeddings  # noqa: E402

from idml_jax.evaluation import clustering_metrics, retrieval_metrics  # noqa: E402
from idml_jax.ops import l2_normalize_np  # noqa: E402


def matmul_floor(x: np.ndarray, block: int = 4096) -> float:
  f = jax.jit(lambda a, b: jnp.sum(a @ b.T))  # Sum so that nothing large is copied back.
  xj = jnp.asarray(x)
  f(xj[:block], xj[:block]).block_until_ready()
  t = time.perf_counter()
  outs = [f(xj[i:i + block], xj) for i in range(0, len(x), block)]
  jax.block_until_ready(outs)
  return time.perf_counter() - t


def faiss_recall(x: np.ndarray, y: np.ndarray, ks) -> dict[str, float]:
  """Recall@K from faiss's exact flat inner-product search, each query excluded."""
  import faiss

  index = faiss.IndexFlatIP(x.shape[1])
  index.add(x)
  _, nbr = index.search(x, max(ks) + 1)
  nbr = np.where(nbr == np.arange(len(x))[:, None], -1, nbr)  # Drop the query itself ...
  order = np.argsort(nbr < 0, axis=1, kind="stable")  # ... moving it to the end.
  nbr = np.take_along_axis(nbr, order, axis=1)[:, :max(ks)]
  hit = y[nbr] == y[:, None]
  return {f"recall@{k}": float(np.mean(np.any(hit[:, :k], axis=1))) for k in ks}


def timed(fn):
  t = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dataset", default="sop_test")
  p.add_argument("--noise", type=float, default=2.2)  # R@1 ~0.79 on sop_test.
  p.add_argument("--backends", default="rank_count")
  p.add_argument("--block", type=int, default=None, help="The rank count's block (default: "
                 "the platform's).")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no-faiss", dest="faiss", action="store_false")
  p.add_argument("--no-clustering", dest="clustering", action="store_false")
  p.add_argument("--intrinsic-dim", type=int, default=None)
  args = p.parse_args()
  x, y = clustered_embeddings(args.dataset, noise=args.noise, intrinsic_dim=args.intrinsic_dim)
  x = l2_normalize_np(x)
  ks = (1, 10, 100, 1000) if args.dataset.startswith("sop") else (1, 2, 4, 8)
  print(f"{args.dataset}: N={len(x)}, D={x.shape[1]}, classes={len(np.unique(y))}, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}; medians of {args.repeats}")
  times, results = {}, {}
  for _ in range(args.repeats):  # Interleaved, so the machine's drift hits every row alike.
    times.setdefault("matmul floor", []).append(matmul_floor(x))
    if args.faiss:
      results["faiss"], dt = timed(lambda: faiss_recall(x, y, ks))
      times.setdefault("faiss", []).append(dt)
    for b in args.backends.split(","):
      results[b], dt = timed(lambda b=b: retrieval_metrics(x, y, recall_ks=ks, backend=b,
                                                           block_size=args.block))
      times.setdefault(b, []).append(dt)
  if args.clustering:
    results["clustering"], dt = timed(lambda: clustering_metrics(x, y))
    times["clustering"] = [dt]
  median = {k: statistics.median(v) for k, v in times.items()}
  print("| what | seconds (median) | runs | ÷ faiss | metrics |")
  print("|---|---|---|---|---|")
  for k, v in median.items():
    ratio = f"{v / median['faiss']:.2f}" if "faiss" in median else "–"
    shown = "  ".join(f"{m}={val:.4f}" for m, val in results.get(k, {}).items())
    print(f"| {k} | {v:.1f} | {' / '.join(f'{t:.1f}' for t in times[k])} | {ratio} | {shown} |")
  if "faiss" in results and "rank_count" in results:
    same = all(abs(results["faiss"][m] - results["rank_count"][m]) < 1e-9
               for m in results["faiss"])
    print(f"faiss's Recall@K {'equals' if same else 'DIFFERS FROM'} the rank count's.")
  if "rank_count" in median:
    total = median["rank_count"] + median.get("clustering", 0.0)
    print(f"all metrics (rank count + clustering): {total:.1f} s")


if __name__ == "__main__":
  main()
