"""Losses (docs/algorithms.md §1.5, §2.4) against naive loops; jit, masks, sharding."""

import math

import jax
import jax.numpy as jnp
import naive
import numpy as np
import pytest

from idml_jax import losses


def _sim(seed, b, n):
  rng = np.random.default_rng(seed)
  return np.tanh(rng.standard_normal((b, n)))


def test_proxy_anchor_matches_naive():
  sim = _sim(0, 7, 5)
  y = np.array([0, 0, 1, 3, 3, 3, 1])  # Class 2 and 4 have no positives.
  got = losses.proxy_anchor(jnp.float32(sim), jnp.asarray(y))
  assert float(got) == pytest.approx(naive.proxy_anchor(sim, y), rel=1e-5)


def test_proxy_anchor_sample_mask_drops_padding():
  sim = _sim(1, 6, 4)
  y = np.array([0, 1, 2, 1, 0, 3])
  mask = np.array([1, 1, 1, 1, 0, 0], bool)
  got = losses.proxy_anchor(jnp.float32(sim), jnp.asarray(y), sample_mask=jnp.asarray(mask))
  assert float(got) == pytest.approx(naive.proxy_anchor(sim[mask], y[mask]), rel=1e-5)


def test_proxy_nca_matches_naive():
  sim = _sim(2, 5, 4)
  y = np.array([0, 1, 2, 3, 1])
  want = 0.0
  for i in range(5):
    logits = [-9.0 * (2 - 2 * s) for s in sim[i]]
    want += -(logits[y[i]] - math.log(sum(math.exp(v) for v in logits)))
  got = losses.proxy_nca(jnp.float32(sim), jnp.asarray(y))
  assert float(got) == pytest.approx(want / 5, rel=1e-5)


def test_pair_masks_exclude_own_synthetic_copies():
  b, m = 4, 2
  y = np.array([0, 1, 0, 1])
  y_all = np.tile(y, 1 + m)
  pos, neg = losses.pair_masks(jnp.asarray(y), jnp.asarray(y_all),
                               candidate_ids=losses.synthetic_source(b, m))
  for i in range(b):
    for j in range(b * (1 + m)):
      assert pos[i, j] == (y_all[j] == y[i] and j % b != i)
      assert neg[i, j] == (y_all[j] != y[i])


@pytest.mark.parametrize("num_synthetic", [0, 2])
def test_multi_similarity_matches_naive(num_synthetic):
  b = 8
  rng = np.random.default_rng(3)
  y = rng.integers(0, 3, b)
  y_all = np.tile(y, 1 + num_synthetic)
  sim = _sim(4, b, b * (1 + num_synthetic)) * 0.6 + 0.3
  sim[0, 0] = 1.0  # Self-similarity is excluded by the mask anyway.
  pos, neg = losses.pair_masks(jnp.asarray(y), jnp.asarray(y_all),
                               candidate_ids=losses.synthetic_source(b, num_synthetic))
  got = losses.multi_similarity(jnp.float32(sim), pos, neg)
  assert float(got) == pytest.approx(naive.multi_similarity(sim, y, y_all, b), rel=1e-4)


def _naive_contrastive(sim, y, pos_margin=0.8, neg_margin=0.5):
  """IAA's contrastive loss by loops over every (anchor, other) pair, per anchor."""
  total = 0.0
  for i in range(len(y)):
    for j in range(len(y)):
      if i != j and y[i] == y[j] and sim[i, j] < pos_margin:
        total += pos_margin - sim[i, j]
      if y[i] != y[j] and sim[i, j] > neg_margin:
        total += sim[i, j] - neg_margin
  return total / len(y)


def test_contrastive_matches_naive():
  b = 6
  y = np.array([0, 0, 1, 1, 2, 2])
  sim = _sim(5, b, b)
  pos, neg = losses.pair_masks(jnp.asarray(y), jnp.asarray(y))
  got = losses.contrastive(jnp.float32(sim), pos, neg)
  assert float(got) == pytest.approx(_naive_contrastive(sim, y), rel=1e-5)


def test_triplet_matches_naive():
  b = 6
  y = np.array([0, 0, 1, 1, 1, 2])
  sim = _sim(6, b, b)
  d = np.sqrt(np.maximum(2 - 2 * sim, 1e-12))
  terms = []
  for i in range(b):
    negs = [d[i, k] for k in range(b) if y[k] != y[i]]
    for j in range(b):
      if j != i and y[j] == y[i]:
        terms.append(max(d[i, j] - min(negs) + 0.1, 0.0))
  pos, neg = losses.pair_masks(jnp.asarray(y), jnp.asarray(y))
  got = losses.triplet(jnp.float32(sim), pos, neg)
  assert float(got) == pytest.approx(np.mean(terms), rel=1e-5)


@pytest.mark.parametrize("name", sorted(losses.PAIR_LOSSES))
def test_pair_losses_finite_with_empty_positive_sets(name):
  y = jnp.arange(4)  # Every anchor is alone in its class.
  sim = jnp.float32(_sim(7, 4, 4))
  pos, neg = losses.pair_masks(y, y)
  val, grad = jax.value_and_grad(lambda s: losses.get_loss(name)(s, pos, neg))(sim)
  # Without positives MS and triplet have no term; the contrastive loss keeps its negatives'.
  want = _naive_contrastive(np.asarray(sim), np.arange(4)) if name == "contrastive" else 0.0
  assert float(val) == pytest.approx(want, rel=1e-5, abs=1e-7)
  assert name != "contrastive" or want > 0  # The case has negatives above the margin.
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("name", sorted(losses.PAIR_LOSSES))
def test_pair_loss_gradients_match_finite_differences(name):
  b = 6
  y = jnp.array([0, 0, 1, 1, 2, 2])
  sim = _sim(8, b, b) * 0.5 + 0.2
  pos, neg = losses.pair_masks(y, y)
  f = losses.get_loss(name)
  g = jax.grad(lambda s: f(s, pos, neg))(jnp.float32(sim))
  eps = 1e-3
  for idx in [(0, 1), (0, 2), (3, 2), (4, 0)]:
    sp, sm = sim.copy(), sim.copy()
    sp[idx] += eps
    sm[idx] -= eps
    fd = (float(f(jnp.float32(sp), pos, neg)) - float(f(jnp.float32(sm), pos, neg))) / (2 * eps)
    assert float(g[idx]) == pytest.approx(fd, rel=5e-2, abs=5e-3)


def test_losses_jit_once_per_shape():
  traces = []

  @jax.jit
  def f(sim, y):
    traces.append(1)
    pos, neg = losses.pair_masks(y, y)
    return losses.multi_similarity(sim, pos, neg) + losses.proxy_anchor(sim, y)

  for seed in range(3):
    f(jnp.float32(_sim(seed, 5, 5)), jnp.asarray([0, 1, 2, 0, 1]))
  assert len(traces) == 1


def test_unknown_loss_lists_valid_names():
  with pytest.raises(ValueError, match="multi_similarity"):
    losses.get_loss("arcface")


def test_loss_on_sharded_batch_equals_single_device():
  """The ISM losses on a batch sharded over 8 devices (conftest forces them) equal one
  device's, value and gradient."""
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  from idml_jax import similarity
  assert jax.device_count() == 8
  rng = np.random.default_rng(0)
  mu = jnp.float32(rng.standard_normal((32, 16)))
  u = jnp.float32(rng.random((32, 16)))
  proxies = jnp.float32(rng.standard_normal((10, 16)))
  y = jnp.asarray(rng.integers(0, 10, 32))

  def loss(mu, u, proxies, y):
    pa = losses.proxy_anchor(similarity.introspective_similarity(mu, u, proxies), y)
    sim = similarity.introspective_similarity(mu, u, mu, u)
    pos, neg = losses.pair_masks(y, y)
    return pa + losses.multi_similarity(sim, pos, neg) + losses.triplet(sim, pos, neg)

  single = jax.jit(jax.value_and_grad(loss))(mu, u, proxies, y)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  batch, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  args = (jax.device_put(mu, batch), jax.device_put(u, batch), jax.device_put(proxies, rep),
          jax.device_put(y, batch))
  assert len(args[0].sharding.device_set) == 8
  sharded = jax.jit(jax.value_and_grad(loss))(*args)
  np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5)
  np.testing.assert_allclose(sharded[1], single[1], rtol=1e-4, atol=1e-6)
