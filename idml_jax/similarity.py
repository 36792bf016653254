"""The introspective similarity metric (ISM) of IDML.

Wang et al., "Introspective Deep Metric Learning", TPAMI 2023, and
ALGORITHMS.md §1.2–1.4. Every image has a semantic embedding ``mu`` and an
uncertainty embedding ``u``; two items are compared with

    sI = 1 - (1 - s) * exp(-(du + a) / (b * dmu))

where ``s`` is the cosine similarity of the semantic embeddings, ``dmu`` their
squared Euclidean distance and ``du`` the squared uncertainty distance. Large
uncertainty pulls ``sI`` towards 1, so ambiguous images are pushed more gently.

All functions are pure, jit-able and finite (values and gradients) at zero
distances, at zero-norm inputs and on the diagonal of a pairwise matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Guards the division by the semantic distance: exp(-c / (b * eps)) underflows to
# exactly 0, so the diagonal gives sI = 1 and a finite (zero) gradient.
DISTANCE_EPS = 1e-6
NORM_EPS = 1e-12

UNCERTAINTY_ACTIVATIONS = ("relu", "softplus", "identity", "l2_normalize")


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """``x / ||x||`` with a safe gradient at ``x = 0``."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, NORM_EPS))


def uncertainty_embedding(raw: jax.Array, activation: str = "relu") -> jax.Array:
  """Turns the uncertainty head's raw output into the uncertainty embedding ``u``.

  Args:
    raw: [..., D] output of the uncertainty head.
    activation: ``relu`` (default: non-negative, un-normalised, so ``u`` matters),
      ``softplus``, ``identity``, or ``l2_normalize`` — the official IDML retrieval
      code, under which ``||u||² = 1`` and the head gets no gradient.
  """
  if activation == "relu":
    return jax.nn.relu(raw)
  if activation == "softplus":
    return jax.nn.softplus(raw)
  if activation == "identity":
    return raw
  if activation == "l2_normalize":
    return l2_normalize(raw)
  raise ValueError(
      f"Unknown uncertainty activation {activation!r}; valid: {UNCERTAINTY_ACTIVATIONS}.")


def introspective_similarity(s: jax.Array, d_semantic: jax.Array, d_uncertainty: jax.Array,
                             a: float = 4.0, b: float = 5.0) -> jax.Array:
  """The ISM from its three ingredients (all broadcastable, e.g. [B, C]).

  Args:
    s: cosine similarity of the semantic embeddings.
    d_semantic: squared semantic distance ``dmu`` (>= 0).
    d_uncertainty: squared uncertainty distance ``du`` (>= 0).
    a: offset added to ``du`` (4 for retrieval, 0 for classification).
    b: scale of ``dmu`` (5).
  Returns:
    ``1 - (1 - s) * exp(-(du + a) / (b * (dmu + eps)))``.
  """
  d_semantic = jnp.maximum(d_semantic, 0.0) + DISTANCE_EPS
  factor = jnp.exp(-(d_uncertainty + a) / (b * d_semantic))
  return 1.0 - (1.0 - s) * factor


def squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
  """[N, D], [M, D] -> [N, M] squared Euclidean distances, clamped at 0."""
  xx = jnp.sum(jnp.square(x), axis=-1)[:, None]
  yy = jnp.sum(jnp.square(y), axis=-1)[None, :]
  return jnp.maximum(xx + yy - 2.0 * x @ y.T, 0.0)


def proxy_introspective_similarity(semantic: jax.Array, uncertainty: jax.Array | None,
                                   proxies: jax.Array, a: float = 4.0,
                                   b: float = 5.0) -> jax.Array:
  """Proxy form (§1.2): samples against class proxies, which carry no uncertainty.

  Args:
    semantic: [B, D] semantic embeddings ``mu`` as fed to the loss (un-normalised).
    uncertainty: [B, D] uncertainty embeddings ``u``, or None for plain cosine.
    proxies: [C, D] class proxies ``p_c`` (un-normalised).
  Returns:
    [B, C] introspective similarities (or cosine similarities if ``uncertainty`` is None).
  """
  s = l2_normalize(semantic) @ l2_normalize(proxies).T
  if uncertainty is None:
    return s
  d_semantic = squared_distances(semantic, proxies)
  d_uncertainty = jnp.sum(jnp.square(uncertainty), axis=-1)[:, None]
  return introspective_similarity(s, d_semantic, d_uncertainty, a, b)


def pairwise_introspective_similarity(semantic_a: jax.Array, uncertainty_a: jax.Array | None,
                                      semantic_b: jax.Array, uncertainty_b: jax.Array | None,
                                      a: float = 4.0, b: float = 5.0) -> jax.Array:
  """Pairwise form (§1.3) for pair-based losses.

  ``du_ij = ||u_i||² + ||u_j||²`` (expected extra squared distance of two Gaussian
  embeddings). The diagonal (``dmu = 0``) gives exactly 1 with a finite gradient.

  Args:
    semantic_a: [N, D] anchors' semantic embeddings.
    uncertainty_a: [N, D] anchors' uncertainty embeddings, or None for plain cosine.
    semantic_b: [M, D] candidates' semantic embeddings.
    uncertainty_b: [M, D] candidates' uncertainty embeddings (None if ``uncertainty_a`` is).
  Returns:
    [N, M] similarities.
  """
  s = l2_normalize(semantic_a) @ l2_normalize(semantic_b).T
  if uncertainty_a is None:
    return s
  d_semantic = squared_distances(semantic_a, semantic_b)
  d_uncertainty = (jnp.sum(jnp.square(uncertainty_a), axis=-1)[:, None]
                   + jnp.sum(jnp.square(uncertainty_b), axis=-1)[None, :])
  return introspective_similarity(s, d_semantic, d_uncertainty, a, b)


def introspective_logits(features: jax.Array, kernel: jax.Array, uncertainty: jax.Array,
                         a: float = 0.0, b: float = 5.0) -> tuple[jax.Array, jax.Array]:
  """Classification form (§1.4): the classifier's columns act as proxies.

  Args:
    features: [B, F] pooled features ``h``.
    kernel: [F, C] classifier weights (column ``w_c``).
    uncertainty: [B, U] uncertainty embedding (e.g. ``relu(W_u h)``).
  Returns:
    ``(logits, introspective)``, both [B, C]: plain ``z_c = w_c·h`` (used at test
    time) and ``zI_c = 1 - (1 - z_c) exp(-(du + a) / (b ||h - w_c||²))`` (trained on).
  """
  logits = features @ kernel
  d_semantic = squared_distances(features, kernel.T)
  d_uncertainty = jnp.sum(jnp.square(uncertainty), axis=-1)[:, None]
  return logits, introspective_similarity(logits, d_semantic, d_uncertainty, a, b)
