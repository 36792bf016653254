"""Retrieval and clustering evaluation (ALGORITHMS.md §3)."""

from idml_jax.evaluation.clustering import KMEANS_BACKENDS, clustering_metrics, kmeans, pairwise_f1
from idml_jax.evaluation.knn import SEARCH_BACKENDS, get_search
from idml_jax.evaluation.retrieval import RETRIEVAL_BACKENDS, retrieval_metrics

__all__ = [
    "KMEANS_BACKENDS",
    "RETRIEVAL_BACKENDS",
    "SEARCH_BACKENDS",
    "clustering_metrics",
    "get_search",
    "kmeans",
    "pairwise_f1",
    "retrieval_metrics",
]
