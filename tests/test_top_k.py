"""The grouped top-k against lax.top_k / a full sort."""

import jax
import numpy as np
import pytest

from idml_jax.top_k import top_k


@pytest.mark.parametrize("n, k, group", [(1000, 5, 32), (1000, 25, 16), (97, 3, 8), (50, 30, 32)])
def test_top_k_matches_sort(n, k, group):
  x = np.random.default_rng(n + k).standard_normal((7, n)).astype(np.float32)
  values, index = jax.jit(lambda x: top_k(x, k, group))(x)
  want = -np.sort(-x, axis=1)[:, :k]
  np.testing.assert_array_equal(values, want)
  np.testing.assert_array_equal(np.take_along_axis(x, np.asarray(index), 1), want)
