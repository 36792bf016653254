"""Nearest neighbors of query images in a gallery, from ``idml_jax.embed`` outputs.

    python -m idml_jax.search --gallery=gallery.npz --save_index=runs/demo/index   # build once
    python -m idml_jax.calibrate --index=runs/demo/index [--target_precision=0.9]  # optional
    python -m idml_jax.search --index=runs/demo/index --queries=queries.npz --k=5 \\
        [--rerank] [--out=neighbors.json]
    python -m idml_jax.search --gallery=gallery.npz [--queries=q.npz] --k=5   # one-off

Per query: its neighbors (names, labels, cosine similarities — the ISM's with
``--rerank``), its uncertainty and, once calibrated, a match / no_match / abstain decision
with its reason (:mod:`idml_jax.calibrate`); where the queries lack what the calibrated rule
reads (an uncertainty), the decisions line says what is off and why. Without ``--queries``
the gallery queries itself, each image's own entry left out. The index itself is
:class:`idml_jax.index.GalleryIndex`.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

from idml_jax.evaluation import SEARCH_BACKENDS
from idml_jax.evaluation.knn import backend_name
from idml_jax.index import GalleryIndex, read_embeddings

_GALLERY = flags.DEFINE_string("gallery", None, "Gallery .npz (from idml_jax.embed).")
_INDEX = flags.DEFINE_string("index", None, "A saved index folder (--save_index).")
_SAVE = flags.DEFINE_string("save_index", None, "Build the index from --gallery and save it "
                            "here.")
_QUERIES = flags.DEFINE_string("queries", None, "Query .npz (default: the gallery itself, "
                               "each image's own entry left out).")
_K = flags.DEFINE_integer("k", 5, "Neighbors per query.")
_RERANK = flags.DEFINE_bool("rerank", False, "Re-score the top-k with the pairwise "
                            "introspective similarity (IDML models).")
_BACKEND = flags.DEFINE_string("backend", None, f"Search back-end, one of "
                               f"{', '.join(SEARCH_BACKENDS)}: exact_host (ScaNN brute force), "
                               "exact_device (JAX), approximate (ScaNN partitioned + quantised, "
                               "large galleries); default: exact_host on CPU hosts, "
                               "exact_device on accelerators.")
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")


def _opt(npz, key):
  return npz[key] if key in npz else None


def _gallery_index(path: str) -> GalleryIndex:
  g = read_embeddings(path, "gallery")
  ism = ({"a": float(g["ism_a"]), "b": float(g["ism_b"]),
          "semantic_distance": str(g["semantic_distance"])} if "ism_a" in g else None)
  source = {k: str(g[k]) for k in ("workdir", "checkpoint", "step") if k in g}
  return GalleryIndex(g["semantic"], g["names"], _opt(g, "labels"), _opt(g, "uncertainty_norm"),
                      max_k=max(_K.value + 1, 100), backend=_BACKEND.value, ism=ism,
                      source=source)


def main(argv):
  del argv
  if (_GALLERY.value is None) == (_INDEX.value is None):
    sys.exit("search: give --gallery=G.npz (from idml_jax.embed) or --index=DIR (a saved "
             "index), not both.")
  if _OUT.value:
    folder = os.path.dirname(os.path.abspath(_OUT.value))
    if os.path.isdir(_OUT.value):
      sys.exit(f"search: --out={_OUT.value} is a folder: name a file (e.g. {_OUT.value}/nn.json).")
    if not os.path.isdir(folder):
      sys.exit(f"search: --out={_OUT.value}: the folder {folder} does not exist; create it first.")
  try:
    if _BACKEND.value is not None:
      backend_name(_BACKEND.value, SEARCH_BACKENDS, "search back-end")
    index = (GalleryIndex.load(_INDEX.value, backend=_BACKEND.value) if _INDEX.value
             else _gallery_index(_GALLERY.value))
    if _SAVE.value:
      index.save(_SAVE.value)
      print(f"Saved an index of {len(index)} items ({index.dim}-d, {index.backend}) to "
            f"{_SAVE.value}.")
      if _QUERIES.value is None:
        return
    self_query = _QUERIES.value is None
    available = len(index) - int(self_query)
    if not 0 < _K.value <= available:
      sys.exit(f"search: --k={_K.value} must be in 1..{available} (the gallery has "
               f"{len(index)} images{', less each query itself' if self_query else ''}).")
    if self_query:
      queries, q_names, q_unc = index.embeddings, index.names, index.uncertainty_norm
    else:
      q = read_embeddings(_QUERIES.value, "queries")
      queries, q_names, q_unc = q["semantic"], q["names"], _opt(q, "uncertainty_norm")
    matches = index.query(queries, _K.value, q_unc, rerank=_RERANK.value,
                          exclude_self=self_query)
  except (ValueError, OSError) as e:
    sys.exit(f"search: {e}")
  results = matches.records(q_names)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(results, f, indent=1)
  for r in results[:20]:
    decided = f" [{r['decision']}: {r['reason']}]" if "decision" in r else ""
    print(r["query"], "->", ", ".join(f"{n['name']} ({n['score']:.3f})"
                                       for n in r["neighbors"]) + decided)
  if len(results) > 20:
    print(f"... {len(results) - 20} more queries" + (f" in {_OUT.value}" if _OUT.value else ""))
  if index.thresholds is not None:
    counts = {d: int(np.sum(matches.decision == d)) for d in ("match", "no_match", "abstain")}
    print("decisions: " + (matches.note if matches.note.startswith("decisions are off") else
                           ", ".join(f"{k} {v}" for k, v in counts.items())
                           + (f" ({matches.note})" if matches.note else "")))


if __name__ == "__main__":
  app.run(main)
