"""Does re-ranking the cosine top-k with the pairwise ISM change retrieval?

Usage: python benchmarks/studies/rerank.py [--workdir W [W ...]] [--k 60] [--seeds 0,1,2]
       [--synthetic_only]

Two measurements, each with Recall@1 and MAP@R (over the top-k, leave-one-out on the test
split) for the cosine ranking and for its ISM re-ranking (``GalleryIndex.query(...,
rerank=True)``: both sides' ``||u||``, ``dmu`` as the model was trained):

* **trained runs**: each ``--workdir`` (an IDML retrieval run), or, without one, the
  shipped demo (``configs/demo.py``) trained here, once per seed;
* **synthetic**: class centres on the unit sphere, each sample with its own noise level
  sigma_i ~ U(0.2, 1.6) and, as its "uncertainty", ``||u|| = c · sigma_i`` — a perfectly
  informative uncertainty, at several scales c. What re-ranking can do with the best
  uncertainty there is.

Prints what it measures, in either direction.
"""

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
from conftest import load_config  # noqa: E402

from idml_jax import data, inference  # noqa: E402
from idml_jax.index import GalleryIndex  # noqa: E402
from idml_jax.train import loop  # noqa: E402


def ranked_metrics(neighbor_labels: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Recall@1 and MAP@R from ranked neighbor labels [Q, k] (k >= the largest R)."""
  rel = neighbor_labels == labels[:, None]
  r = np.array([np.sum(labels == lab) - 1 for lab in labels])
  ap = []
  for row, ri in zip(rel, r, strict=True):
    hits = row[:ri]
    ap.append(np.sum(np.cumsum(hits) / np.arange(1, ri + 1) * hits) / ri if ri else 0.0)
  return {"recall@1": float(np.mean(rel[:, 0])), "map@r": float(np.mean(ap))}


def compare(semantic, uncertainty_norm, labels, k, semantic_distance) -> dict:
  labels = np.asarray(labels).astype(str)
  k = min(k, len(labels) - 1)
  r_max = max(np.sum(labels == lab) - 1 for lab in set(labels))
  if r_max > k:
    raise SystemExit(f"--k={k} is below the largest class's R={r_max}: MAP@R needs k >= R.")
  index = GalleryIndex(semantic, labels=labels, uncertainty_norm=uncertainty_norm,
                       max_k=k + 1, backend="exact_device",
                       ism={"semantic_distance": semantic_distance})
  cos = index.query(semantic, k, exclude_self=True)
  ism = index.query(semantic, k, uncertainty_norm, rerank=True, exclude_self=True)
  out = {"cosine": ranked_metrics(cos.labels, labels), "ism": ranked_metrics(ism.labels, labels)}
  out["changed_top1"] = float(np.mean(cos.indices[:, 0] != ism.indices[:, 0]))
  return out


def synthetic(seed: int, scale: float, classes=40, per_class=12, dim=32) -> dict:
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((classes, dim))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  labels = np.repeat(np.arange(classes), per_class)
  sigma = rng.uniform(0.2, 1.6, len(labels))
  x = centres[labels] + sigma[:, None] * rng.standard_normal((len(labels), dim)) / np.sqrt(dim)
  return compare(x.astype(np.float32), scale * sigma, labels, 20, "normalized")


def trained(workdir: str, k: int) -> dict:
  model = inference.load(workdir)
  cfg = model.config
  splits = data.load_splits(cfg.data.name, cfg.data.source, cfg.data.data_dir or None)
  emb = model.embed(splits["test"])
  return compare(emb["semantic"], emb["uncertainty_norm"], emb["labels"], k,
                 cfg.ism.semantic_distance)


def fmt(name, res):
  c, i = res["cosine"], res["ism"]
  return (f"| {name} | {c['recall@1']:.4f} | {i['recall@1']:.4f} | {c['map@r']:.4f} | "
          f"{i['map@r']:.4f} | {res['changed_top1']:.3f} |")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", nargs="*", default=None)
  p.add_argument("--k", type=int, default=60)
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--synthetic_only", action="store_true")
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  print("| run | R@1 cosine | R@1 ISM re-ranked | MAP@R cosine | MAP@R ISM | top-1 changed |")
  print("|---|---|---|---|---|---|")
  for scale in (0.5, 1.0, 2.0, 4.0):
    for seed in seeds:
      print(fmt(f"synthetic, ||u|| = {scale} sigma, seed {seed}", synthetic(seed, scale)),
            flush=True)
  if args.synthetic_only:
    return
  if args.workdir:
    for w in args.workdir:
      print(fmt(w, trained(w, args.k)), flush=True)
    return
  for seed in seeds:
    with tempfile.TemporaryDirectory() as w:
      c = load_config("demo.py", "")
      c.seed = seed
      loop.train_and_evaluate(c, w)
      print(fmt(f"configs/demo.py, seed {seed}", trained(w, args.k)), flush=True)


if __name__ == "__main__":
  main()
