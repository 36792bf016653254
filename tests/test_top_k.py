"""The grouped top-k against lax.top_k / a full sort."""

import jax
import numpy as np
import pytest

from idml_jax.top_k import candidates, top_k


@pytest.mark.parametrize("n, k, group", [(1000, 5, 32), (1000, 25, 16), (97, 3, 8), (50, 30, 32)])
def test_top_k_matches_sort(n, k, group):
  x = np.random.default_rng(n + k).standard_normal((7, n)).astype(np.float32)
  values, index = jax.jit(lambda x: top_k(x, k, group))(x)
  want = -np.sort(-x, axis=1)[:, :k]
  np.testing.assert_array_equal(values, want)
  np.testing.assert_array_equal(np.take_along_axis(x, np.asarray(index), 1), want)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("shape, k, group",
                         [((256, 192), 3, 32), ((64, 96), 4, 8), ((40, 40), 9, 8)])
def test_candidates_contain_the_top_k(axis, shape, k, group):
  x = np.random.default_rng(k).standard_normal(shape).astype(np.float32)
  x[5, 7] = -np.inf  # Masked entries (same-class pairs) stay harmless.
  cand = np.asarray(jax.jit(lambda x: candidates(x, k, axis, group))(x))
  xt = x if axis == 1 else x.T
  assert cand.shape[0] == xt.shape[0] and cand.shape[1] <= xt.shape[1]
  np.testing.assert_array_equal(-np.sort(-cand, axis=1)[:, :k], -np.sort(-xt, axis=1)[:, :k])


@pytest.mark.parametrize("shape, k, group", [((300, 50), 4, 32), ((97, 20), 3, 8), ((30, 9), 5, 8)])
def test_top_k_down_columns(shape, k, group):
  x = np.random.default_rng(k).standard_normal(shape).astype(np.float32)
  values, index = jax.jit(lambda x: top_k(x, k, group, axis=0))(x)
  want = -np.sort(-x.T, axis=1)[:, :k]
  np.testing.assert_array_equal(values, want)
  np.testing.assert_array_equal(np.take_along_axis(x.T, np.asarray(index), 1), want)
