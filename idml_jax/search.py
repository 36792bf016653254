"""Nearest neighbours of query images in a gallery, from ``idml_jax.embed`` outputs.

    python -m idml_jax.search --gallery=gallery.npz --queries=queries.npz --k=5 \\
        [--approximate] [--out=neighbours.json]

:class:`GalleryIndex` builds one ScaNN index over the L2-normalised gallery (exact brute
force, or ``approximate``: tree partitioning + anisotropic quantisation + exact re-ordering
for large galleries) and answers any number of query batches: the core of a retrieval
service. Scores are cosine similarities.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from absl import app, flags

from idml_jax.evaluation.inputs import check_finite
from idml_jax.evaluation.knn import drop_self, scann_searcher
from idml_jax.ops import l2_normalize_np


class GalleryIndex:
  """A ScaNN index over gallery embeddings [N, D] (normalised here)."""

  def __init__(self, embeddings: np.ndarray, names=None, approximate: bool = False,
               max_k: int = 100):
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or len(embeddings) == 0:
      raise ValueError(f"The gallery must be [N, D] with N >= 1; got shape {embeddings.shape}.")
    check_finite(embeddings, "The gallery embeddings")
    self.names = np.asarray(names if names is not None else np.arange(len(embeddings)))
    self.dim = embeddings.shape[1]
    self.max_k = min(max_k, len(embeddings))
    self.searcher = scann_searcher(l2_normalize_np(embeddings), self.max_k, approximate)

  def __len__(self) -> int:
    return len(self.names)

  def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Queries [Q, D] -> (cosine scores [Q, k], gallery indices [Q, k]), best first."""
    queries = np.asarray(queries, np.float32)
    if not 0 < k <= self.max_k:
      raise ValueError(f"k={k} must be in 1..{self.max_k} (the gallery has {len(self)} items; "
                       "the index was built for that many neighbours).")
    if queries.ndim != 2 or queries.shape[1] != self.dim:
      raise ValueError(f"The queries must be [Q, {self.dim}] like the gallery; got shape "
                       f"{queries.shape}. Were they embedded by the same model?")
    check_finite(queries, "The query embeddings")
    q = np.ascontiguousarray(l2_normalize_np(queries))
    indices, scores = self.searcher.search_batched_parallel(q, final_num_neighbors=k)
    return scores, indices.astype(np.int64)


_GALLERY = flags.DEFINE_string("gallery", None, "Gallery .npz (from idml_jax.embed).")
_QUERIES = flags.DEFINE_string("queries", None, "Query .npz (default: the gallery itself, "
                               "each image's own entry left out).")
_K = flags.DEFINE_integer("k", 5, "Neighbours per query.")
_APPROX = flags.DEFINE_bool("approximate", False, "Partitioned + quantised index (large "
                            "galleries) instead of exact brute force.")
_OUT = flags.DEFINE_string("out", None, "Write the neighbours as JSON here.")


def main(argv):
  del argv
  gallery = np.load(_GALLERY.value)
  self_query = _QUERIES.value is None
  queries = gallery if self_query else np.load(_QUERIES.value)
  available = len(gallery["names"]) - int(self_query)
  if not 0 < _K.value <= available:
    sys.exit(f"search: --k={_K.value} must be in 1..{available} (the gallery has "
             f"{len(gallery['names'])} images{', less each query itself' if self_query else ''}).")
  try:
    index = GalleryIndex(gallery["semantic"], gallery["names"], _APPROX.value,
                         max_k=_K.value + int(self_query))
    scores, indices = index.search(queries["semantic"], _K.value + int(self_query))
  except ValueError as e:
    sys.exit(f"search: {e}")
  if self_query:  # Each image's own entry left out.
    scores, indices = drop_self(scores, indices, _K.value)
  results = [{"query": str(name),
              "neighbours": [{"name": str(index.names[i]), "score": round(float(s), 5)}
                             for s, i in zip(s_row, i_row, strict=True)]}
             for name, s_row, i_row in zip(queries["names"], scores, indices, strict=True)]
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(results, f, indent=1)
  for r in results[:20]:
    print(r["query"], "->", ", ".join(f"{n['name']} ({n['score']:.3f})"
                                       for n in r["neighbours"]))
  if len(results) > 20:
    print(f"... {len(results) - 20} more queries" + (f" in {_OUT.value}" if _OUT.value else ""))


if __name__ == "__main__":
  flags.mark_flags_as_required(["gallery"])
  app.run(main)
