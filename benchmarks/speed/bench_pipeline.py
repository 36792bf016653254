"""Input-pipeline throughput: JPEG decode + random-resized-crop 224 + flip, images/s.

Usage: python benchmarks/speed/bench_pipeline.py [--images 512] [--batch 64] [--steps 8]

Writes CUB-sized JPEGs (500×375) to a temporary folder, then times ``train_batches``
with threads only (0 workers) and with 2 worker processes.
"""

import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image

from idml_jax.data import ClassBalancedSampler, train_batches
from idml_jax.data.sources import FileSource


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--images", type=int, default=512)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--workers", default="0,2")
  args = p.parse_args()
  with tempfile.TemporaryDirectory() as d:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(args.images):
      path = os.path.join(d, f"{i}.jpg")
      # Smooth noise compresses like a photograph, unlike white noise.
      small = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
      Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(path, quality=90)
      paths.append(path)
    src = FileSource(paths, np.arange(args.images) % 32)
    sampler = ClassBalancedSampler(src.labels, args.batch, 4, seed=0)
    print(f"{os.cpu_count()} CPU cores; {args.batch} images/batch at 224 px from 500×375 JPEGs")
    for workers in map(int, args.workers.split(",")):
      it = train_batches(src, sampler, image_size=224, seed=0, start_step=0,
                         num_steps=args.steps + 1, worker_count=workers, num_threads=8)
      next(it)  # Start-up (worker processes, first batch).
      t = time.perf_counter()
      for _ in range(args.steps):
        next(it)
      dt = time.perf_counter() - t
      print(f"workers={workers}: {args.steps * args.batch / dt:7.1f} images/s", flush=True)


if __name__ == "__main__":
  main()
