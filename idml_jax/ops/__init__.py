"""Array helpers used across the package: normalisation, distances, a CPU-fast top-k."""

from idml_jax.ops.linalg import NORM_EPS, l2_normalize, l2_normalize_np, squared_distances
from idml_jax.ops.top_k import top_k, top_k_candidates

__all__ = ["NORM_EPS", "l2_normalize", "l2_normalize_np", "squared_distances", "top_k",
           "top_k_candidates"]
