"""A top-k that is fast on CPU for k much smaller than the row.

``lax.top_k`` on XLA:CPU costs about as much per row as a full matmul block does.
Splitting each row into groups of ``group`` columns, the k largest values all lie in
the k groups with the largest maxima; the final ``top_k`` then runs over ``k·group``
candidates instead of the whole row. Along axis 0 of a matrix the same works without
transposing it: only the ``k·group`` candidates per column are transposed.

Ties are broken as ``lax.top_k`` breaks them, lower index first: the chosen groups are
gathered in index order, so equal candidates keep the order of their positions.

``group=None`` takes the platform's default (``idml_jax.platform``: 32 on CPU; 0, plain
``lax.top_k``, on GPUs and TPUs, which have fast top-k kernels). Every group gives the same
result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from idml_jax import platform


def _group(group: int | None) -> int:
  return platform.defaults().top_k_group if group is None else group


def _grouped_candidates(x: jax.Array, k: int, axis: int,
                        group: int) -> tuple[jax.Array, jax.Array] | None:
  """Members of the k groups with the largest maxima along ``axis`` of a 2-D ``x``.

  Returns ``(values, positions)``, both [other, k·group] in increasing position order
  (positions index ``axis``), or None where grouping would not shrink the problem.
  """
  n = x.shape[axis]
  if group <= 1 or k * group * 2 > n:
    return None
  if n % group:
    pad = [(0, 0), (0, 0)]
    pad[axis] = (0, (-n) % group)
    x = jnp.pad(x, pad, constant_values=-jnp.inf)
  if axis == 1:
    g = x.reshape(x.shape[0], -1, group)
    best = jnp.sort(jax.lax.top_k(jnp.max(g, axis=2), k)[1], axis=1)  # [rows, k] group ids.
    values = jnp.take_along_axis(g, best[:, :, None], axis=1).reshape(x.shape[0], k * group)
  else:
    g = x.reshape(-1, group, x.shape[1])
    best = jnp.sort(jax.lax.top_k(jnp.max(g, axis=1).T, k)[1], axis=1)  # [cols, k] group ids.
    values = jnp.take_along_axis(g, best.T[:, None, :], axis=0)  # [k, group, cols]
    values = values.reshape(k * group, x.shape[1]).T
  positions = (best[:, :, None] * group + jnp.arange(group)).reshape(best.shape[0], k * group)
  return values, jnp.minimum(positions, n - 1)  # Padding (-inf) points at a real index.


def top_k(x: jax.Array, k: int, group: int | None = None,
          axis: int = -1) -> tuple[jax.Array, jax.Array]:
  """Largest k values along ``axis`` and their indices (ties: lower index first).

  [..., n] -> [..., k] ×2 for ``axis=-1``; [n, m] -> [m, k] ×2 for ``axis=0`` (one row
  per column of x).
  """
  if axis == -1 and x.ndim > 2:
    lead = x.shape[:-1]
    values, index = top_k(x.reshape(-1, x.shape[-1]), k, group)
    return values.reshape(lead + (k,)), index.reshape(lead + (k,))
  group = _group(group)
  axis = axis % x.ndim
  if axis != x.ndim - 1 and x.ndim != 2:
    raise ValueError(f"top_k along axis {axis} needs a 2-D array; got shape {x.shape}.")
  grouped = _grouped_candidates(x, k, axis, group) if x.ndim == 2 else None
  if grouped is None:
    return jax.lax.top_k(x if axis == x.ndim - 1 else x.T, k)
  values, positions = grouped
  values, pos = jax.lax.top_k(values, k)
  return values, jnp.take_along_axis(positions, pos, axis=1)


def top_k_candidates(x: jax.Array, k: int, axis: int,
                     group: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Values of a 2-D ``x`` that include its k largest along ``axis``, and their positions.

  Returns ``(values, positions)``, each [other, k·group] in increasing position order (or
  the whole of x, moved to the last axis, when that is not smaller): a ``lax.top_k`` over
  the values gives the exact top k, ties to the lower position.
  """
  grouped = _grouped_candidates(x, k, axis, _group(group))
  if grouped is None:
    values = x if axis == 1 else x.T
    return values, jnp.broadcast_to(jnp.arange(values.shape[1]), values.shape)
  return grouped
