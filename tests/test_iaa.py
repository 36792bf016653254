"""IAA class statistics, neighbor correction and synthesis (§2.1–2.3) against loops."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idml_jax import iaa


def _naive_merge(mean, cov, count, z, y, momentum, skip_singletons=False):
  mean, cov, count = mean.copy(), cov.copy(), count.copy()
  b_all = np.zeros(len(count))
  for k in range(len(count)):
    zk = z[y == k]
    b = len(zk)
    b_all[k] = b
    if b == 0 or (skip_singletons and b == 1):
      count[k] += b
      continue
    a = zk.mean(0)
    v = ((zk - a) ** 2).mean(0)
    w = max(b / (b + count[k]), 1 - momentum)
    cov[k] = (1 - w) * cov[k] + w * v + w * (1 - w) * (mean[k] - a) ** 2
    mean[k] = (1 - w) * mean[k] + w * a
    count[k] += b
  return mean, cov, count, b_all


@pytest.mark.parametrize("skip_singletons", [False, True])
def test_merge_matches_naive_over_two_passes(skip_singletons):
  rng = np.random.default_rng(0)
  c, d = 6, 3
  stats = iaa.init(c, d)
  mean, cov, count = np.zeros((c, d)), np.zeros((c, d)), np.zeros(c)
  for seed in range(2):
    z = rng.standard_normal((20, d)) + seed
    y = np.concatenate([rng.integers(0, c - 2, 19), [c - 2]])  # c-2: one image; c-1: none.
    stats = iaa.merge(stats, jnp.float32(z), jnp.asarray(y), momentum=0.2,
                      skip_singletons=skip_singletons)
    mean, cov, count, b = _naive_merge(mean, cov, count, z, y, 0.2, skip_singletons)
    np.testing.assert_allclose(stats.pass_count, b)
  np.testing.assert_allclose(stats.mean, mean, atol=1e-5)
  np.testing.assert_allclose(stats.covariance, cov, atol=1e-5)
  np.testing.assert_allclose(stats.count, count)
  np.testing.assert_allclose(stats.synthesis_covariance, cov, atol=1e-5)
  assert np.all(np.asarray(stats.mean[c - 1]) == 0)  # Absent: untouched.
  if skip_singletons:  # The singleton class keeps its (zero) estimate, but counts.
    assert np.all(np.asarray(stats.mean[c - 2]) == 0) and float(stats.count[c - 2]) == 2
  else:
    assert np.any(np.asarray(stats.mean[c - 2]) != 0)


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


def _stats(seed=1, c=30, d=4):
  rng = np.random.default_rng(seed)
  mean, cov = rng.standard_normal((c, d)), rng.random((c, d))
  b = rng.integers(1, 60, c).astype(float)
  b[3] = 1  # A singleton class: corrected, but never anyone's neighbor.
  return mean, cov, b, iaa.ClassStats(jnp.float32(mean), jnp.float32(cov), jnp.float32(b),
                                      jnp.float32(b), jnp.float32(cov))


@pytest.mark.parametrize("k", [5, 25])
def test_dense_neighbor_correction_matches_naive(k):
  mean, cov, b, stats = _stats()
  got = iaa.neighbor_correction(stats, num_neighbors=k)
  np.testing.assert_allclose(got, _naive_correction(mean, cov, b, k_nbr=k), rtol=1e-4, atol=1e-5)


# 1, 3 (from 2), 3, 5, 9 tiles; K = 25 > the 20 columns a block row meets at tile size 4.
@pytest.mark.parametrize("tile, k", [(1024, 5), (15, 5), (10, 5), (7, 5), (4, 5), (4, 25)])
def test_tiled_neighbor_covariance_equals_the_dense_path(tile, k):
  mean, cov, b, stats = _stats(seed=tile)
  args = (stats.mean, stats.covariance, stats.pass_count)
  dense = iaa.neighbor_covariance(*args, num_neighbors=k, dense=True)
  tiled = iaa._tiled_neighbor_covariance(*args, num_neighbors=k, sigma_mean=1.0,
                                         sigma_cov=1.0, block_size=tile)
  np.testing.assert_allclose(tiled, dense, rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(tiled))


def test_neighbor_covariance_picks_the_tiled_path_above_the_threshold(monkeypatch):
  mean, cov, b, stats = _stats(seed=7, c=40)
  want = _naive_correction(mean, cov, b, k_nbr=6)
  monkeypatch.setattr(iaa, "DENSE_MAX_CLASSES", 10)  # 40 classes: now "large".
  calls = []
  real = iaa._tiled_neighbor_covariance
  monkeypatch.setattr(iaa, "_tiled_neighbor_covariance",
                      lambda *a, **kw: calls.append(1) or real(*a, **kw, block_size=8))
  np.testing.assert_allclose(iaa.neighbor_correction(stats, num_neighbors=6), want, rtol=1e-4,
                             atol=1e-5)
  assert calls


def test_update_merges_then_stores_the_correction_for_synthesis():
  rng = np.random.default_rng(5)
  z = rng.standard_normal((60, 4))
  y = rng.integers(0, 10, 60)
  start = iaa.init(10, 4)
  corrected = iaa.update(start, jnp.float32(z), jnp.asarray(y), correct=True, num_neighbors=3)
  mean, cov, _, b = _naive_merge(np.zeros((10, 4)), np.zeros((10, 4)), np.zeros(10), z, y, 0.2)
  np.testing.assert_allclose(corrected.covariance, cov, atol=1e-5)  # Raw estimate untouched.
  np.testing.assert_allclose(corrected.synthesis_covariance,
                             _naive_correction(mean, cov, b, k_nbr=3), rtol=1e-4, atol=1e-5)
  plain = iaa.update(start, jnp.float32(z), jnp.asarray(y))
  np.testing.assert_allclose(plain.synthesis_covariance, cov, atol=1e-5)


def test_class_weight_values():
  b = jnp.float32([1, 2, 39, 40, 100])
  want = [1.0, 1 / (1 + math.log(1.1)), 1 / (1 + math.log(1 + 0.1 * 38)), 0.0, 0.0]
  np.testing.assert_allclose(iaa.class_weight(b), want, rtol=1e-6)


@pytest.mark.parametrize("root", ["paper", "official"])
def test_synthesis_matches_the_formula_and_layout(root):
  c, d, b, m = 3, 4, 6, 3
  cov = np.arange(1, c * d + 1).reshape(c, d) / 10
  z = np.random.default_rng(2).standard_normal((b, d))
  y = np.array([0, 1, 2, 0, 1, 2])
  noise = np.random.default_rng(3).standard_normal((m, b, d))
  zs, ys = iaa.synthesize(jnp.float32(noise), jnp.float32(z), jnp.asarray(y), jnp.float32(cov),
                          lam=0.8, root=root)
  assert zs.shape == (m * b, d)
  np.testing.assert_array_equal(ys, np.tile(y, m))
  for copy in range(m):
    std = np.sqrt(cov[y])
    if root == "official":  # The official loop takes the square root again for each copy.
      for _ in range(copy):
        std = np.sqrt(std)
    want = z + np.sqrt(0.8) * std * noise[copy]
    np.testing.assert_allclose(zs[copy * b:(copy + 1) * b], want, rtol=1e-5, atol=1e-6)


def test_synthesis_noise_is_standard_normal_and_keyed():
  noise = iaa.synthesis_noise(jax.random.PRNGKey(1), 4, 500, 8)
  assert noise.shape == (4, 500, 8)
  assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1) < 0.05
  np.testing.assert_array_equal(noise, iaa.synthesis_noise(jax.random.PRNGKey(1), 4, 500, 8))


def test_strength_schedule_counts_epochs_from_one_as_the_paper():
  # Epoch index 39 is the 40th epoch: progress 0.4, still 1.0 x lambda (official lamda_epoch).
  got = [float(iaa.strength_schedule(0.8, e, 100)) for e in (0, 39, 40, 59, 60, 79, 80, 99)]
  np.testing.assert_allclose(got, [0.8, 0.8, 0.72, 0.72, 0.6, 0.6, 0.48, 0.48], rtol=1e-6)
