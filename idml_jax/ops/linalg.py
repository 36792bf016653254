"""Normalisation and distances, shared by the ISM, the IAA statistics, evaluation and search."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Floor of a squared norm: x / ||x|| has a finite gradient at x = 0 (the result is 0 there).
NORM_EPS = 1e-12


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """``x / ||x||`` along ``axis`` (JAX), 0 for a zero vector, with a finite gradient there."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, NORM_EPS))


def l2_normalize_np(x: np.ndarray) -> np.ndarray:
  """[N, D] -> float32 unit rows (NumPy); zero rows stay zero.

  Rows are first divided by their largest magnitude, so values whose squares overflow
  float32 (|x| > 1.8e19) still normalise correctly instead of collapsing to zero.
  """
  x = np.asarray(x, np.float32)
  peak = np.max(np.abs(x), axis=1, keepdims=True)
  x = x / np.where(peak > 0, peak, 1.0)  # Every non-zero row now has norm >= 1.
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), NORM_EPS)


def squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
  """[N, D], [M, D] -> [N, M] squared Euclidean distances, clamped at 0."""
  xx = jnp.sum(jnp.square(x), axis=-1)[:, None]
  yy = jnp.sum(jnp.square(y), axis=-1)[None, :]
  return jnp.maximum(xx + yy - 2.0 * x @ y.T, 0.0)
