"""Retrieval evaluation in one call (ALGORITHMS.md §3): Recall@K, R-Precision, MAP@R, NMI, F1.

The pieces (kNN back-ends, rank counting, k-means) live in :mod:`idml_jax.evaluation`.
"""

from __future__ import annotations

import numpy as np

from idml_jax.evaluation import clustering_metrics
from idml_jax.evaluation import retrieval_metrics as _retrieval


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, *, recall_ks=(1, 2, 4, 8),
                      backend: str = "exact", clustering: bool = True, kmeans: str = "jax",
                      seed: int = 0) -> dict[str, float]:
  """All-vs-all metrics of embeddings [N, D] with labels [N], each query excluded from its own
  neighbours: ``recall@K`` for K in ``recall_ks``, ``r_precision``, ``map@r`` and (with
  ``clustering``) ``nmi`` and ``f1`` of k-means with as many clusters as classes. Values are
  fractions in [0, 1]; embeddings are L2-normalised first.

  ``backend``: ``exact`` (rank counting, no top-k), ``jax``, ``scann`` or ``scann_ah``.
  ``kmeans``: ``jax`` (scikit-learn's greedy k-means++, then Lloyd), ``jax_plain`` or ``sklearn``.
  """
  out = _retrieval(embeddings, labels, ks=tuple(recall_ks), backend=backend)
  if clustering:
    out.update(clustering_metrics(embeddings, labels, backend=kmeans, seed=seed))
  return out


def query_gallery_metrics(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                          gallery_labels: np.ndarray, *, recall_ks=(1, 10, 20, 30),
                          backend: str = "exact") -> dict[str, float]:
  """In-Shop style: queries [Q, D] against a separate gallery [N, D]; ``recall@K``,
  ``r_precision``, ``map@r``."""
  return _retrieval(query, query_labels, gallery, gallery_labels, ks=tuple(recall_ks),
                    backend=backend)
