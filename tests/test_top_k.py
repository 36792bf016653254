"""The grouped top-k against lax.top_k / a full sort, ties included."""

import jax
import numpy as np
import pytest

from idml_jax.ops import top_k, top_k_candidates


@pytest.mark.parametrize("n, k, group", [(1000, 5, 32), (1000, 25, 16), (97, 3, 8), (50, 30, 32)])
def test_top_k_matches_sort(n, k, group):
  x = np.random.default_rng(n + k).standard_normal((7, n)).astype(np.float32)
  values, index = jax.jit(lambda x: top_k(x, k, group))(x)
  want = -np.sort(-x, axis=1)[:, :k]
  np.testing.assert_array_equal(values, want)
  np.testing.assert_array_equal(np.take_along_axis(x, np.asarray(index), 1), want)


@pytest.mark.parametrize("axis", [0, 1])
def test_ties_go_to_the_lower_index_as_lax_top_k(axis):
  # Few distinct values: every top-k boundary is a tie spread over many groups, and large
  # values late in the row make later groups rank first.
  rng = np.random.default_rng(3)
  x = rng.integers(0, 2, (6, 640)).astype(np.float32)
  x[np.arange(6)[:, None], rng.integers(320, 640, (6, 4))] = 5.0
  x = x if axis == 1 else x.T
  _, index = jax.jit(lambda x: top_k(x, 9, 8, axis=axis))(x)
  _, want = jax.lax.top_k(x if axis == 1 else x.T, 9)
  np.testing.assert_array_equal(index, want)
  xt = x if axis == 1 else x.T
  stable = np.argsort(-xt, axis=1, kind="stable")[:, :9]  # Ties by index.
  np.testing.assert_array_equal(index, stable)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape, k, group",
                         [((256, 192), 3, 32), ((64, 96), 4, 8), ((40, 40), 9, 8)])
def test_candidates_contain_the_top_k_and_their_positions(axis, shape, k, group):
  x = np.random.default_rng(k).standard_normal(shape).astype(np.float32)
  x[5, 7] = -np.inf  # Masked entries (same-class pairs) stay harmless.
  values, positions = jax.jit(lambda x: top_k_candidates(x, k, axis, group))(x)
  values, positions = np.asarray(values), np.asarray(positions)
  xt = x if axis == 1 else x.T
  assert values.shape[0] == xt.shape[0] and values.shape[1] <= xt.shape[1]
  np.testing.assert_array_equal(-np.sort(-values, axis=1)[:, :k], -np.sort(-xt, axis=1)[:, :k])
  np.testing.assert_array_equal(np.take_along_axis(xt, positions, 1), values)
  assert np.all(np.diff(positions, axis=1) > 0)  # Increasing positions: ties keep index order.


@pytest.mark.parametrize("shape, k, group", [((300, 50), 4, 32), ((97, 20), 3, 8), ((30, 9), 5, 8)])
def test_top_k_down_columns(shape, k, group):
  x = np.random.default_rng(k).standard_normal(shape).astype(np.float32)
  values, index = jax.jit(lambda x: top_k(x, k, group, axis=0))(x)
  want = -np.sort(-x.T, axis=1)[:, :k]
  np.testing.assert_array_equal(values, want)
  np.testing.assert_array_equal(np.take_along_axis(x.T, np.asarray(index), 1), want)
