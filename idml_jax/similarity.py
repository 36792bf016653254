"""The introspective similarity metric (ISM) of IDML (docs/algorithms.md §1.2–1.4).

Wang et al., "Introspective Deep Metric Learning", TPAMI 2023. Every image has a semantic
embedding ``mu`` and an uncertainty embedding ``u``; two items are compared with

    sI = 1 - (1 - s) * exp(-(du + a) / (b * dmu))

where ``s`` is the cosine similarity of the semantic embeddings, ``dmu`` their squared
Euclidean distance and ``du`` the squared uncertainty distance. Large uncertainty pulls
``sI`` towards 1, so ambiguous images are pushed more gently.

Pure, jit-able and finite (values and gradients) at zero distances, at zero-norm inputs
and on the diagonal of a pairwise matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from idml_jax.ops import l2_normalize, squared_distances

# Guards the division by the semantic distance: exp(-c / (b * eps)) underflows to exactly
# 0, so coinciding semantic embeddings give sI = 1 with a finite (zero) gradient.
DISTANCE_EPS = 1e-6


def _factor(d_semantic: jax.Array, d_uncertainty: jax.Array, a: float, b: float) -> jax.Array:
  """``exp(-(du + a) / (b (dmu + eps)))`` of broadcastable distances."""
  return jnp.exp(-(d_uncertainty + a) / (b * (jnp.maximum(d_semantic, 0.0) + DISTANCE_EPS)))


def _ism(s: jax.Array, d_semantic: jax.Array, d_uncertainty: jax.Array, a: float,
         b: float) -> jax.Array:
  """``1 - (1 - s) · factor`` of broadcastable ingredients."""
  return 1.0 - (1.0 - s) * _factor(d_semantic, d_uncertainty, a, b)


def _pair_uncertainty(uncertainty_a: jax.Array, uncertainty_b: jax.Array | None) -> jax.Array:
  """[Na, Nb] (or [Na, 1]) ``du = ||u_a||² + ||u_b||²``; ``||u_a||²`` against proxies."""
  d = jnp.sum(jnp.square(uncertainty_a), axis=-1)[:, None]
  if uncertainty_b is not None:
    d = d + jnp.sum(jnp.square(uncertainty_b), axis=-1)[None, :]
  return d


def introspective_similarity(semantic_a: jax.Array, uncertainty_a: jax.Array | None,
                             semantic_b: jax.Array, uncertainty_b: jax.Array | None = None, *,
                             a: float = 4.0, b: float = 5.0) -> jax.Array:
  """The ISM of every pair of rows of ``a`` and ``b`` (§1.2 proxy form, §1.3 pairwise form).

  Inputs are used as given: the cosine ``s`` uses normalised copies, ``dmu`` the semantic
  embeddings exactly as passed (the caller decides whether they are normalised, see
  ``ism.semantic_distance``), and ``du = ||u_a||² + ||u_b||²`` — ``||u_a||²`` when
  ``uncertainty_b`` is None (class proxies carry no uncertainty), plain cosine when both
  are None.

  Args:
    semantic_a: [Na, D]; uncertainty_a: [Na, Du] or None.
    semantic_b: [Nb, D]; uncertainty_b: [Nb, Du] or None.
    a: offset added to ``du`` (4 for retrieval).
    b: scale of ``dmu`` (5).
  Returns:
    [Na, Nb] similarities in (-1, 1]; exactly 1 where the semantic embeddings coincide.
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
    raise ValueError("uncertainty_b given without uncertainty_a: pass both (pairs), only "
                     "uncertainty_a (against proxies), or neither (cosine).")
  s = l2_normalize(semantic_a) @ l2_normalize(semantic_b).T
  if uncertainty_a is None:
    return s
  return _ism(s, squared_distances(semantic_a, semantic_b),
              _pair_uncertainty(uncertainty_a, uncertainty_b), a, b)


def introspective_factor(semantic_a: jax.Array, uncertainty_a: jax.Array,
                         semantic_b: jax.Array, uncertainty_b: jax.Array | None = None, *,
                         a: float = 4.0, b: float = 5.0) -> jax.Array:
  """[Na, Nb] ``exp(-(du + a) / (b dmu))``, the factor by which the ISM shrinks ``1 - s``.

  Near 1 the ISM is the cosine; near 0 every pair looks identical. Logged during
  training to show on which scale the uncertainty acts.
  """
  return _factor(squared_distances(semantic_a, semantic_b),
                 _pair_uncertainty(uncertainty_a, uncertainty_b), a, b)


def introspective_logits(features: jax.Array, kernel: jax.Array, uncertainty: jax.Array,
                         bias: jax.Array | None = None, *, a: float = 0.0,
                         b: float = 5.0) -> tuple[jax.Array, jax.Array]:
  """Classification form (§1.4): the classifier's columns act as proxies.

  Args:
    features: [B, F] pooled features ``h``.
    kernel: [F, C] classifier weights (column ``w_c``).
    uncertainty: [B, U] uncertainty embedding (e.g. ``relu(W_u h)``).
    bias: [C] classifier bias, or None. With a bias, the logits are ``w_c·h + b_c`` and
      each class's proxy is ``w_c + b_c`` (the official code's ``fc(I)``).
  Returns:
    ``(logits, introspective)``, both [B, C]: plain ``z_c`` (used at test time) and
    ``zI_c = 1 - (1 - z_c) exp(-(du + a) / (b ||h - p_c||²))`` (trained on).
  """
  logits = features @ kernel
  proxies = kernel.T
  if bias is not None:
    logits = logits + bias
    proxies = proxies + bias[:, None]
  return logits, _ism(logits, squared_distances(features, proxies),
                      _pair_uncertainty(uncertainty, None), a, b)
