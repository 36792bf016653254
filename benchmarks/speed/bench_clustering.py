"""NMI/F1 by k-means: the JAX back-end vs scikit-learn's KMeans (the official code's).

Usage: python benchmarks/speed/bench_clustering.py [--dataset sop_test] [--backends jax,sklearn]

scikit-learn at SOP-test scale (11,316 clusters) runs for 15-25 minutes on 2 cores.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from common import clustered_embeddings  # noqa: E402

from idml_jax.evaluation import clustering_metrics  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--dataset", default="sop_test")
  p.add_argument("--noise", type=float, default=2.6)
  p.add_argument("--backends", default="jax")
  args = p.parse_args()
  x, y = clustered_embeddings(args.dataset, noise=args.noise)
  print(f"{args.dataset}: N={len(x)}, clusters={len(set(y.tolist()))}")
  for b in args.backends.split(","):
    t = time.perf_counter()
    m = clustering_metrics(x, y, backend=b)
    print(f"{b:8s} {time.perf_counter() - t:8.1f} s  nmi={m['nmi']:.4f}  f1={m['f1']:.4f}",
          flush=True)


if __name__ == "__main__":
  main()
