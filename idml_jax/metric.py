"""The introspective similarity metric of two sets of embeddings (ALGORITHMS.md §1.2–1.3).

One entry point for both forms: samples against samples (pairwise, ``uncertainty_b`` given)
and samples against proxies (``uncertainty_b=None``: proxies carry no uncertainty). The
building blocks live in :mod:`idml_jax.similarity`.
"""

from __future__ import annotations

import jax

from idml_jax import similarity


def introspective_similarity(semantic_a: jax.Array, uncertainty_a: jax.Array | None,
                             semantic_b: jax.Array, uncertainty_b: jax.Array | None = None, *,
                             offset: float = 4.0, scale: float = 5.0) -> jax.Array:
  """ISM ``s_I = 1 - (1 - s) exp(-(du + offset) / (scale · dmu))`` of every pair.

  Inputs are used as given (no normalisation inside); the cosine ``s`` uses normalised
  copies, ``dmu`` is the squared distance of the raw semantic embeddings, and
  ``du = ||u_a||² + ||u_b||²`` (``||u_a||²`` when ``uncertainty_b`` is None).

  Args:
    semantic_a: [Na, D]; uncertainty_a: [Na, Du], or None for plain cosine similarity.
    semantic_b: [Nb, D]; uncertainty_b: [Nb, Du], or None (zero uncertainty: proxies).
  Returns:
    [Na, Nb] similarities in (-1, 1], finite with finite gradients everywhere (1 where the
    semantic embeddings coincide).
  """
  if semantic_a.ndim != 2 or semantic_b.ndim != 2 or semantic_a.shape[1] != semantic_b.shape[1]:
    raise ValueError(f"semantic_a [Na, D] and semantic_b [Nb, D] must share D; got "
                     f"{semantic_a.shape} and {semantic_b.shape}.")
  for name, u, mu in (("uncertainty_a", uncertainty_a, semantic_a),
                      ("uncertainty_b", uncertainty_b, semantic_b)):
    if u is not None and (u.ndim != 2 or u.shape[0] != mu.shape[0]):
      raise ValueError(f"{name} must be [N, Du] with the N of its semantic embeddings "
                       f"{mu.shape}; got {u.shape}.")
  if uncertainty_a is None and uncertainty_b is not None:
    raise ValueError("uncertainty_b given without uncertainty_a: pass both, or only "
                     "uncertainty_a (proxies), or neither (cosine).")
  if uncertainty_b is None:
    return similarity.proxy_introspective_similarity(semantic_a, uncertainty_a, semantic_b,
                                                     offset, scale)
  return similarity.pairwise_introspective_similarity(semantic_a, uncertainty_a, semantic_b,
                                                      uncertainty_b, offset, scale)
