"""The exact back-end now against an earlier revision's, in one process (same data).

    python benchmarks/bench_retrieval_versions.py [--old 08786cc] [--n 5000] [--dim 128]

Loads ``idml_jax/evaluation/retrieval.py`` as it was at ``--old`` (git) beside today's and
times ``retrieval_metrics`` (exact back-end, compiled first) on Gaussian classes of two sizes
(50 and 500 classes: ~100 and ~10 relevant items per query); prints seconds, the ratio and
both metrics (equal unless near-ties decide them).
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from idml_jax.evaluation import retrieval as new  # noqa: E402


def load_old(rev: str):
  src = subprocess.run(["git", "show", f"{rev}:idml_jax/evaluation/retrieval.py"], cwd=ROOT,
                       capture_output=True, text=True, check=True).stdout
  path = os.path.join(tempfile.mkdtemp(), "retrieval_old.py")
  open(path, "w").write(src)
  spec = importlib.util.spec_from_file_location("idml_jax.evaluation.retrieval_old", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--old", default="08786cc")
  p.add_argument("--n", type=int, default=5000)
  p.add_argument("--dim", type=int, default=128)
  args = p.parse_args()
  old = load_old(args.old)
  r = np.random.default_rng(0)
  for classes in (50, 500):
    y = r.integers(0, classes, args.n)
    x = (r.normal(size=(classes, args.dim))[y] + 3 * r.normal(size=(args.n, args.dim))
         ).astype(np.float32)
    times = {}
    for name, m in ((args.old, old), ("now", new)):
      m.retrieval_metrics(x, y)  # Compiles.
      t = time.perf_counter()
      out = m.retrieval_metrics(x, y)
      times[name] = time.perf_counter() - t
      print(f"{args.n} x {args.dim}, {classes} classes, {name}: {times[name]:.2f} s, "
            f"R@1 {out['recall@1']:.4f}, MAP@R {out['map@r']:.4f}", flush=True)
    print(f"  now / {args.old}: {times['now'] / times[args.old]:.2f}")


if __name__ == "__main__":
  main()
