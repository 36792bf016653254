"""The introspective similarity (docs/algorithms.md §1.2–1.4) against naive loops."""

import jax
import jax.numpy as jnp
import naive
import numpy as np
import pytest

from idml_jax import losses, similarity
from idml_jax.models import uncertainty_embedding


def _data(seed=0, n=6, c=4, d=5):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((n, d)), rng.standard_normal((n, d)) * 0.5,
          rng.standard_normal((c, d)), rng.integers(0, c, n))


def test_proxy_form_matches_naive():
  mu, u, p, _ = _data()
  got = similarity.introspective_similarity(jnp.float32(mu), jnp.float32(u),
                                                  jnp.float32(p))
  np.testing.assert_allclose(got, naive.proxy_ism(mu, u, p), atol=2e-5)


def test_proxy_form_without_uncertainty_is_cosine():
  mu, _, p, _ = _data()
  got = similarity.introspective_similarity(jnp.float32(mu), None, jnp.float32(p))
  want = [[naive.cosine(m, q) for q in p] for m in mu]
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_pairwise_form_matches_naive_and_diagonal_is_one():
  mu, u, _, _ = _data(1)
  mu32, u32 = jnp.float32(mu), jnp.float32(u)
  got = similarity.introspective_similarity(mu32, u32, mu32, u32)
  want = naive.pairwise_ism(mu, u)
  off = ~np.eye(len(mu), dtype=bool)
  np.testing.assert_allclose(np.asarray(got)[off], want[off], atol=2e-5)
  np.testing.assert_allclose(np.diag(got), 1.0, atol=1e-6)


def test_classification_form_matches_naive():
  rng = np.random.default_rng(2)
  h, kernel, unc = rng.standard_normal((3, 4)), rng.standard_normal((4, 5)), rng.random((3, 2))
  bias = rng.standard_normal(5)
  for with_bias in (False, True):
    logits, intro = similarity.introspective_logits(
        jnp.float32(h), jnp.float32(kernel), jnp.float32(unc),
        jnp.float32(bias) if with_bias else None)
    for i in range(3):
      for c in range(5):
        b = bias[c] if with_bias else 0.0
        z = float(h[i] @ kernel[:, c]) + b
        proxy = kernel[:, c] + b  # The official fc(I): the weight row plus the bias.
        assert logits[i, c] == pytest.approx(z, abs=1e-5)
        want = naive.ism(z, float(np.sum((h[i] - proxy) ** 2)), float(np.sum(unc[i] ** 2)),
                         a=0.0, b=5.0)
        assert intro[i, c] == pytest.approx(want, abs=1e-4)


def _fd_grad(f, x, eps=1e-6):
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += eps
    xm[idx] -= eps
    g[idx] = (f(xp) - f(xm)) / (2 * eps)
  return g


def test_proxy_anchor_on_ism_gradients_match_finite_differences():
  mu, u, p, y = _data(3, n=5, c=3, d=4)

  def loss_jax(mu, u, p):
    sim = similarity.introspective_similarity(mu, u, p)
    return losses.proxy_anchor(sim, jnp.asarray(y))

  grads = jax.grad(loss_jax, argnums=(0, 1, 2))(jnp.float32(mu), jnp.float32(u), jnp.float32(p))
  refs = [
      _fd_grad(lambda m: naive.proxy_anchor(naive.proxy_ism(m, u, p), y), mu),
      _fd_grad(lambda v: naive.proxy_anchor(naive.proxy_ism(mu, v, p), y), u),
      _fd_grad(lambda q: naive.proxy_anchor(naive.proxy_ism(mu, u, q), y), p),
  ]
  for g, ref in zip(grads, refs, strict=True):
    np.testing.assert_allclose(g, ref, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("case", ["zero_embeddings", "identical", "proxy_equals_sample"])
def test_finite_values_and_gradients_at_degenerate_points(case):
  d = 4
  mu = jnp.ones((3, d))
  u = jnp.zeros((3, d))
  p = jnp.ones((2, d)) * 2
  if case == "zero_embeddings":
    mu = jnp.zeros((3, d))
  if case == "proxy_equals_sample":
    p = p.at[0].set(mu[0])
  y = jnp.array([0, 1, 0])

  def f(mu, u, p):
    prox = losses.proxy_anchor(similarity.introspective_similarity(mu, u, p), y)
    pair = similarity.introspective_similarity(mu, u, mu, u)
    pos, neg = losses.pair_masks(y, y)
    return prox + losses.multi_similarity(pair, pos, neg) + jnp.sum(pair)

  val, grads = jax.value_and_grad(f, argnums=(0, 1, 2))(mu, u, p)
  assert np.isfinite(val)
  for g in grads:
    assert np.all(np.isfinite(g))


def test_uncertainty_head_gets_gradient_by_default_and_none_when_normalised():
  rng = np.random.default_rng(4)
  feats = jnp.float32(rng.standard_normal((8, 6)))
  w_sem = jnp.float32(rng.standard_normal((6, 5)))
  w_unc = jnp.float32(rng.standard_normal((6, 5)) * 0.3)
  proxies = jnp.float32(rng.standard_normal((3, 5)))
  y = jnp.asarray(rng.integers(0, 3, 8))

  def loss(w_unc, activation):
    u = uncertainty_embedding(feats @ w_unc, activation)
    sim = similarity.introspective_similarity(feats @ w_sem, u, proxies)
    return losses.proxy_anchor(sim, y)

  g_default = jax.grad(loss)(w_unc, "relu")
  g_official = jax.grad(loss)(w_unc, "l2_normalize")
  assert float(jnp.max(jnp.abs(g_default))) > 1e-3
  assert float(jnp.max(jnp.abs(g_official))) < 1e-5


def test_larger_uncertainty_moves_similarity_towards_one():
  mu, _, p, _ = _data(5)
  small = similarity.introspective_similarity(jnp.float32(mu), jnp.zeros(mu.shape),
                                                    jnp.float32(p))
  large = similarity.introspective_similarity(jnp.float32(mu), jnp.ones(mu.shape) * 3,
                                                    jnp.float32(p))
  assert np.all(np.asarray(large) >= np.asarray(small) - 1e-7)


def test_unknown_activation_lists_valid_ones():
  with pytest.raises(ValueError, match="relu"):
    uncertainty_embedding(jnp.zeros(3), "tanh")


def test_public_api_both_forms_match_naive_and_refuses_bad_shapes():
  mu, u, p, _ = _data(3)
  got = similarity.introspective_similarity(jnp.float32(mu), jnp.float32(u), jnp.float32(p))
  np.testing.assert_allclose(got, naive.proxy_ism(mu, u, p), atol=2e-5)
  got = similarity.introspective_similarity(jnp.float32(mu), jnp.float32(u), jnp.float32(mu),
                                            jnp.float32(u), a=1.0, b=3.0)
  want = naive.pairwise_ism(mu, u, a=1.0, b=3.0)
  off = ~np.eye(len(mu), dtype=bool)
  np.testing.assert_allclose(np.asarray(got)[off], want[off], atol=2e-5)
  with pytest.raises(ValueError, match="must share D"):
    similarity.introspective_similarity(jnp.zeros((2, 3)), None, jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="uncertainty_b given without"):
    similarity.introspective_similarity(jnp.zeros((2, 3)), None, jnp.zeros((2, 3)),
                                        jnp.zeros((2, 3)))


def test_introspective_factor_is_the_shrinkage_of_one_minus_cosine():
  mu, u, p, _ = _data(6)
  mu, u, p = jnp.float32(mu), jnp.float32(u), jnp.float32(p)
  factor = similarity.introspective_factor(mu, u, p)
  cos = similarity.introspective_similarity(mu, None, p)
  ism = similarity.introspective_similarity(mu, u, p)
  np.testing.assert_allclose(1 - ism, (1 - cos) * factor, rtol=1e-5, atol=1e-6)
  for i in range(len(mu)):
    for c in range(len(p)):
      want = np.exp(-(float(jnp.sum(u[i] ** 2)) + 4) / (5 * float(jnp.sum((mu[i] - p[c]) ** 2))))
      assert float(factor[i, c]) == pytest.approx(want, rel=1e-4)


def test_softplus_bounded_is_smooth_positive_and_below_one():
  """||u|| = tanh(||softplus(x)||) in (0, 1), direction of softplus(x); unlike relu_bounded
  a unit whose input is negative still passes a gradient (no dead head)."""
  from idml_jax.models.embedding import relu_bounded, softplus_bounded
  x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 7)) * 3, jnp.float32)
  u = np.asarray(softplus_bounded(x))
  sp = np.log1p(np.exp(np.asarray(x, np.float64)))
  norm = np.linalg.norm(sp, axis=1)
  np.testing.assert_allclose(u, sp * (np.tanh(norm) / norm)[:, None], rtol=1e-5)
  assert np.all(u > 0) and np.all(np.linalg.norm(u, axis=1) < 1)
  dead = -jnp.ones((1, 7))  # Every unit's input negative.
  grad = lambda f: jax.grad(lambda z: jnp.sum(jnp.square(f(z))))(dead)
  assert float(jnp.max(jnp.abs(grad(relu_bounded)))) == 0.0
  assert float(jnp.min(jnp.abs(grad(softplus_bounded)))) > 0.0
