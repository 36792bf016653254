"""IAA class statistics, neighbor correction and synthesis (§2.1–2.3) against loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idml_jax import iaa


def _naive_merge(mean, cov, count, z, y, momentum):
  mean, cov, count = mean.copy(), cov.copy(), count.copy()
  b_all = np.zeros(len(count))
  for k in range(len(count)):
    zk = z[y == k]
    b = len(zk)
    b_all[k] = b
    if b == 0:
      continue
    a = zk.mean(0)
    v = ((zk - a) ** 2).mean(0)
    w = max(b / (b + count[k]), 1 - momentum)
    cov[k] = (1 - w) * cov[k] + w * v + w * (1 - w) * (mean[k] - a) ** 2
    mean[k] = (1 - w) * mean[k] + w * a
    count[k] += b
  return mean, cov, count, b_all


def test_update_matches_naive_over_two_passes():
  rng = np.random.default_rng(0)
  c, d = 5, 3
  stats = iaa.ClassStats.create(c, d)
  mean, cov, count = np.zeros((c, d)), np.zeros((c, d)), np.zeros(c)
  for seed in range(2):
    z = rng.standard_normal((20, d)) + seed
    y = rng.integers(0, c - 1, 20)  # The last class stays absent.
    stats = iaa.update(stats, jnp.float32(z), jnp.asarray(y), momentum=0.2)
    mean, cov, count, _ = _naive_merge(mean, cov, count, z, y, 0.2)
  np.testing.assert_allclose(stats.mean, mean, atol=1e-5)
  np.testing.assert_allclose(stats.covariance, cov, atol=1e-5)
  np.testing.assert_allclose(stats.count, count)
  np.testing.assert_allclose(stats.synthesis_covariance, cov, atol=1e-5)


def test_padding_mask_ignored_in_moments():
  z = jnp.float32([[1.0], [3.0], [100.0]])
  b, a, v = iaa.class_moments(z, jnp.asarray([0, 0, 0]), 1, mask=jnp.asarray([1, 1, 0], bool))
  assert float(b[0]) == 2 and float(a[0, 0]) == 2.0 and float(v[0, 0]) == 1.0


def _naive_correction(mean, cov, b, k_nbr=25, beta=0.1, tau=40, gamma=0.1):
  c = len(b)
  alpha = np.array([1 / (1 + math.log(1 + beta * (max(bk, 1) - 1))) if bk < tau else 0.0
                    for bk in b])
  elig = [j for j in range(c) if b[j] > 1]
  g = sum(b[j] * cov[j] for j in elig) / sum(b[j] for j in elig)
  out = np.zeros_like(cov)
  for k in range(c):
    valid = [j for j in elig if j != k]
    dm = {j: np.linalg.norm(mean[k] ** 2 - mean[j] ** 2) for j in valid}
    dc = {j: np.linalg.norm(cov[k] - cov[j]) for j in valid}
    norm = lambda dd, j: (dd[j] - min(dd.values())) / (max(dd.values()) - min(dd.values()))
    nbrs = sorted(valid, key=lambda j: dm[j])[:k_nbr]
    w = np.array([b[j] * math.exp(-norm(dm, j) ** 2 / 2 - norm(dc, j) ** 2 / 2) for j in nbrs])
    nb = sum(wj * cov[j] for wj, j in zip(w, nbrs, strict=True)) / w.sum()
    out[k] = (1 - alpha[k]) * cov[k] + alpha[k] * ((1 - gamma) * nb + gamma * g)
  return out


# 1, 3 (from 2), 3, 5, 9 blocks; K = 25 > the 20 columns a block row meets at block size 4.
@pytest.mark.parametrize("block_size, k", [(1024, 5), (15, 5), (10, 5), (7, 5), (4, 5), (4, 25)])
def test_neighbor_correction_matches_naive(block_size, k, monkeypatch):
  rng = np.random.default_rng(1)
  c, d = 30, 4
  mean = rng.standard_normal((c, d))
  cov = rng.random((c, d))
  b = rng.integers(1, 60, c).astype(float)
  b[3] = 1  # A singleton class: corrected, but never anyone's neighbour.
  stats = iaa.ClassStats(jnp.float32(mean), jnp.float32(cov), jnp.float32(b), jnp.float32(cov))
  orig = iaa.neighbor_covariance
  monkeypatch.setattr(iaa, "neighbor_covariance",
                      lambda *a, **kw: orig(*a, **kw, block_size=block_size))
  got = iaa.neighbor_correction(stats, jnp.float32(b), num_neighbors=k)
  want = _naive_correction(mean, cov, b, k_nbr=k)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert np.all(np.isfinite(got))


def test_update_merges_and_stores_the_correction_for_synthesis():
  rng = np.random.default_rng(5)
  z = jnp.float32(rng.standard_normal((60, 4)))
  y = jnp.asarray(rng.integers(0, 10, 60))
  start = iaa.init(10, 4)
  plain = iaa.update(start, z, y)
  jax.tree.map(np.testing.assert_array_equal, plain, iaa.merge(start, z, y))
  np.testing.assert_array_equal(plain.synthesis_covariance, plain.covariance)
  corrected = iaa.update(start, z, y, correct=True, num_neighbors=3)
  np.testing.assert_allclose(corrected.covariance, plain.covariance)  # Raw estimate untouched.
  counts = jnp.float32(np.bincount(np.asarray(y), minlength=10))
  np.testing.assert_allclose(corrected.synthesis_covariance,
                             iaa.neighbor_correction(plain, counts, num_neighbors=3), rtol=1e-6)


def test_class_weight_values():
  b = jnp.float32([1, 2, 39, 40, 100])
  want = [1.0, 1 / (1 + math.log(1.1)), 1 / (1 + math.log(1 + 0.1 * 38)), 0.0, 0.0]
  np.testing.assert_allclose(iaa.class_weight(b), want, rtol=1e-6)


def test_synthesis_distribution_and_layout():
  c, d, b, m = 3, 4, 6, 2
  cov = jnp.float32(np.arange(1, c * d + 1).reshape(c, d) / 10)
  z = jnp.float32(np.random.default_rng(2).standard_normal((b, d)))
  y = jnp.asarray([0, 1, 2, 0, 1, 2])
  zs, ys = iaa.synthesize(jax.random.PRNGKey(0), z, y, cov, lam=0.8, num=m)
  assert zs.shape == (m * b, d)
  np.testing.assert_array_equal(ys, np.tile(y, m))
  # Deterministic for a key, different for another.
  np.testing.assert_array_equal(zs, iaa.synthesize(jax.random.PRNGKey(0), z, y, cov, lam=0.8,
                                                   num=m)[0])
  # Many draws: mean z_i and variance lambda * Sigma_{y_i}.
  zs, _ = iaa.synthesize(jax.random.PRNGKey(1), z, y, cov, lam=0.8, num=20000)
  zs = np.asarray(zs).reshape(20000, b, d)
  np.testing.assert_allclose(zs.mean(0), z, atol=0.03)
  np.testing.assert_allclose(zs.var(0), 0.8 * np.asarray(cov)[np.asarray(y)], rtol=0.05)


def test_strength_schedule():
  got = [float(iaa.strength_schedule(0.8, e, 100)) for e in (0, 40, 41, 60, 61, 80, 81, 100)]
  np.testing.assert_allclose(got, [0.8, 0.8, 0.72, 0.72, 0.6, 0.6, 0.48, 0.48], rtol=1e-6)
