"""Evaluation (docs/algorithms.md §3): retrieval, clustering, classification, uncertainty
(selective prediction: risk–coverage, AURC, R-AUROC, the fitted ``combined`` confidence,
calibration).

The one public place for metrics; every function takes NumPy arrays and returns a dict of
floats (``query_ranks`` returns the per-query outcome they are computed from).
"""

from idml_jax.evaluation.classification import classification_metrics, true_class_rank
from idml_jax.evaluation.clustering import KMEANS_BACKENDS, clustering_metrics, kmeans, pairwise_f1
from idml_jax.evaluation.inputs import NonFiniteEmbeddingsError
from idml_jax.evaluation.knn import RENAMED_BACKENDS, SEARCH_BACKENDS, get_search
from idml_jax.evaluation.retrieval import (
    RETRIEVAL_BACKENDS,
    QueryRanks,
    query_gallery_metrics,
    query_ranks,
    retrieval_metrics,
)
from idml_jax.evaluation.selective import (
    confidence_scores,
    expected_calibration_error,
    rauroc,
    risk_coverage,
    selective_report,
    softmax_confidence,
)
from idml_jax.evaluation.uncertainty import uncertainty_report

__all__ = [
    "KMEANS_BACKENDS",
    "RENAMED_BACKENDS",
    "RETRIEVAL_BACKENDS",
    "SEARCH_BACKENDS",
    "NonFiniteEmbeddingsError",
    "QueryRanks",
    "classification_metrics",
    "clustering_metrics",
    "confidence_scores",
    "expected_calibration_error",
    "get_search",
    "kmeans",
    "pairwise_f1",
    "query_gallery_metrics",
    "query_ranks",
    "rauroc",
    "retrieval_metrics",
    "risk_coverage",
    "selective_report",
    "softmax_confidence",
    "true_class_rank",
    "uncertainty_report",
]
