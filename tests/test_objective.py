"""Each method's whole objective (§1.5, §2.3–2.4) against a naive loop, under jax.jit.

A linear "model" stands in for the network, so the test checks the objective itself: the
ISM inputs, synthetic candidates that inherit their source's uncertainty, the masks that
keep an anchor's own copies out of its positives, and the three-term Mixup.
"""

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import naive
import numpy as np
import pytest
from conftest import tiny

from idml_jax import methods, tasks
from idml_jax.tasks import retrieval

B, D, M, C = 8, 5, 2, 4


class _Identity(nn.Module):
  """A backbone whose pooled features are its input: the heads alone."""

  @nn.compact
  def __call__(self, x):
    return x


def _model(with_uncertainty: bool):
  """A linear stand-in for the network: semantic and (IDML) uncertainty heads on pixels."""
  def apply(model_params, images):
    flat = images.reshape(images.shape[0], -1)
    out = {"semantic": flat @ model_params["w_s"]}
    if with_uncertainty:
      out["uncertainty"] = jax.nn.relu(flat @ model_params["w_u"])
    return out
  return apply


def _setup(seed=0):
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((B, 2, 2, 3))
  labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
  params = {"model": {"w_s": rng.standard_normal((12, D)) * 0.5,
                      "w_u": rng.standard_normal((12, D)) * 0.3},
            "proxies": rng.standard_normal((C, D))}
  cov = rng.random((C, D))
  draws = {"lam": np.float64(0.3), "perm": rng.permutation(B),
           "noise": rng.standard_normal((M, B, D))}
  return images, labels, params, cov, draws


def _naive_pair_loss(name, sim, labels, cand_labels, source):
  """One pair loss over anchors i and candidates j (j is i's own copy iff source[j] == i)."""
  pos = lambda i: [j for j in range(len(cand_labels))
                   if cand_labels[j] == labels[i] and source[j] != i]
  neg = lambda i: [j for j in range(len(cand_labels)) if cand_labels[j] != labels[i]]
  if name == "multi_similarity":
    return naive.multi_similarity(sim, labels, cand_labels, len(labels))
  if name == "contrastive":
    total = sum(0.8 - sim[i, j] for i in range(len(labels)) for j in pos(i) if sim[i, j] < 0.8)
    total += sum(sim[i, j] - 0.5 for i in range(len(labels)) for j in neg(i) if sim[i, j] > 0.5)
    return total / len(labels)
  d = np.sqrt(np.maximum(2 - 2 * sim, 1e-12))  # triplet
  terms = [max(d[i, j] - min(d[i, k] for k in neg(i)) + 0.1, 0.0)
           for i in range(len(labels)) if neg(i) for j in pos(i)]
  return float(np.mean(terms)) if terms else 0.0


def _naive_similarity(mu_a, u_a, mu_b, u_b, a=4.0, b=5.0):
  """[Na, Nb] ISM by loops (cosine where u_a is None; proxies where u_b is None)."""
  out = np.zeros((len(mu_a), len(mu_b)))
  for i, j in itertools.product(range(len(mu_a)), range(len(mu_b))):
    s = naive.cosine(mu_a[i], mu_b[j])
    if u_a is None:
      out[i, j] = s
      continue
    du = float(np.sum(u_a[i] ** 2) + (0.0 if u_b is None else np.sum(u_b[j] ** 2)))
    out[i, j] = naive.ism(s, float(np.sum((mu_a[i] - mu_b[j]) ** 2)), du, a, b)
  return out


def _naive_objective(config, images, labels, params, cov, draws, strength, synthesize):
  idml = config.method in ("idml", "idml+iaa")
  p = {k: np.float64(v) for k, v in params["model"].items()}

  def embed(x):
    flat = x.reshape(len(x), -1)
    return flat @ p["w_s"], (np.maximum(flat @ p["w_u"], 0) if idml else None)

  def one_pass(mu, u, y, boost):
    if config.loss.name == "proxy_anchor":  # dmu = ||mu-hat - p||² (raw proxies).
      if config.ism.semantic_distance == "normalized":
        mu = mu / np.linalg.norm(mu, axis=1, keepdims=True)
      return naive.proxy_anchor(_naive_similarity(mu, u, params["proxies"], None), y)
    cand_mu, cand_u, cand_y, source = mu, u, y, list(range(len(y)))
    if boost:  # M copies per original, copy m of sample i at B + m B + i.
      syn = [mu[i] + math.sqrt(strength) * np.sqrt(cov[y[i]]) * draws["noise"][m, i]
             for m in range(M) for i in range(len(y))]
      cand_mu = np.concatenate([mu, np.array(syn)])
      cand_u = None if u is None else np.concatenate([u] + [u] * M)  # Inherited.
      cand_y = np.concatenate([y] * (1 + M))
      source = list(range(len(y))) * (1 + M)
    if config.ism.semantic_distance == "normalized":  # dmu from mu-hat (synthetic too).
      mu, cand_mu = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (mu, cand_mu))
    if config.ism.pair_uncertainty == "anchor":  # du_ij = ||u_i||²: candidates carry none.
      cand_u = None
    sim = _naive_similarity(mu, u, cand_mu, cand_u)
    return _naive_pair_loss(config.loss.name, sim, y, cand_y, source)

  mu, u = embed(images)
  loss = one_pass(mu, u, labels, synthesize)
  if config.mixing.kind == "mixup":
    lam, perm = float(draws["lam"]), draws["perm"]
    mu_x, u_x = embed(lam * images + (1 - lam) * images[perm])
    loss += lam * one_pass(mu_x, u_x, labels, False) + (1 - lam) * one_pass(
        mu_x, u_x, labels[perm], False)
  return loss


@pytest.mark.parametrize("method, loss, synthesize", [
    ("baseline", "multi_similarity", False), ("baseline", "contrastive", False),
    ("idml", "proxy_anchor", False), ("idml", "multi_similarity", False),
    ("iaa", "multi_similarity", True), ("iaa", "contrastive", True), ("iaa", "triplet", True),
    ("idml+iaa", "multi_similarity", True), ("idml+iaa", "contrastive", True),
    ("idml", "proxy_anchor:raw", False), ("idml+iaa", "multi_similarity:raw", True),
    ("idml", "multi_similarity:anchor", False), ("idml+iaa", "contrastive:anchor", True)])
def test_total_loss_matches_a_naive_loop(method, loss, synthesize):
  loss, _, switch = loss.partition(":")  # ":raw": dmu from the raw mu; ":anchor": du = ||u_i||².
  config = tiny(method=method, loss=loss, iaa__num_synthetic=M, model__embedding_dim=D,
                ism__semantic_distance="raw" if switch == "raw" else "normalized",
                ism__pair_uncertainty="anchor" if switch == "anchor" else "sum")
  images, labels, params, cov, draws = _setup()
  stats = type("Stats", (), {"synthesis_covariance": jnp.float32(cov)})()
  as32 = lambda t: jax.tree.map(jnp.float32, t)

  @jax.jit
  def total(params, images, labels, draws):
    step = methods.MethodStep({"class_stats": stats}, {"synthesize": synthesize},
                              {"strength": jnp.float32(0.72)})
    return tasks.get_task(config).loss(
        _model(method in ("idml", "idml+iaa")), params, images, labels,
        {**draws, "perm": draws["perm"].astype(jnp.int32)}, step)[0]

  got = float(total(as32(params), jnp.float32(images), jnp.asarray(labels), as32(draws)))
  want = _naive_objective(config, images, labels, params, cov, draws, 0.72, synthesize)
  assert got == pytest.approx(want, rel=2e-4, abs=1e-5)
  assert want > 0


def test_step_draws_are_keyed_and_shaped():
  config = tiny(method="idml+iaa")
  draws = tasks.step_draws(tasks.get_task(config), jax.random.PRNGKey(3), 16)
  assert set(draws) == {"lam", "perm", "noise"}
  assert draws["noise"].shape == (config.iaa.num_synthetic, 16, config.model.embedding_dim)
  assert sorted(np.asarray(draws["perm"]).tolist()) == list(range(16))
  again = tasks.step_draws(tasks.get_task(config), jax.random.PRNGKey(3), 16)
  jax.tree.map(np.testing.assert_array_equal, draws, again)
  baseline = tasks.get_task(tiny(method="baseline"))
  assert set(tasks.step_draws(baseline, jax.random.PRNGKey(3), 16)) == set()
  # Mixing is the config's, whatever the method: a baseline with Mixup draws it too.
  assert set(tasks.step_draws(tasks.get_task(tiny(method="baseline", mixing__kind="mixup")),
                              jax.random.PRNGKey(3), 16)) == {"lam", "perm"}


@pytest.mark.parametrize("variant", ["default", "official"])
def test_the_ism_gets_what_the_difference_table_says(variant):
  """Default: dmu from mu-hat and u = relu(W_u h-hat) with ||u|| < 1 (it learns); official
  (configs/idml_pa.py:cub,official): dmu from mu-hat and ||u|| = 1 whatever h is."""
  import jax
  from conftest import load_config

  from idml_jax.train.state import make_model
  c = load_config("idml_pa.py", "cub,runlocal" + (",official" if variant == "official" else ""))
  model = make_model(tasks.get_task(c))
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 3)) * 255
  variables = model.init(jax.random.PRNGKey(1), x)
  out = model.apply(variables, x)
  mu = out["semantic"]
  np.testing.assert_allclose(retrieval.ism_inputs(c, mu),
                             mu / np.linalg.norm(mu, axis=1, keepdims=True), rtol=1e-5)
  norms = np.linalg.norm(out["uncertainty"], axis=1)
  if variant == "official":
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
  else:
    assert np.all(out["uncertainty"] >= 0) and np.all(norms < 1) and np.ptp(norms) > 0
  # The real model on pooled features h and 7h (an identity backbone, the trained heads): the
  # default head reads h-hat, so u is the same; the official one reads h, so it is not.
  heads = tasks.get_task(c).make_model(_Identity(), 0)
  h = np.random.default_rng(0).standard_normal((2, out["features"].shape[-1])).astype(np.float32)
  head_vars = heads.init(jax.random.PRNGKey(1), h)
  u_h, u_7h = (np.asarray(heads.apply(head_vars, x)["uncertainty"]) for x in (h, 7 * h))
  assert np.ptp(u_h) > 0
  if variant == "official":
    assert np.max(np.abs(u_h - u_7h)) > 1e-3
  else:
    np.testing.assert_allclose(u_h, u_7h, rtol=1e-5, atol=1e-7)
  from idml_jax import similarity

  m = retrieval.ism_inputs(c, jax.random.normal(jax.random.PRNGKey(2), mu.shape))  # Apart.

  def ism_sum(params):
    u = model.apply({**variables, "params": params}, x)["uncertainty"]
    return jnp.sum(similarity.introspective_similarity(m, u, m, u))

  g = jax.grad(ism_sum)(variables["params"])["uncertainty"]["kernel"]
  if variant == "official":  # ||u|| = 1 for every image: du is constant, no gradient.
    assert float(jnp.max(jnp.abs(g))) < 1e-6
  else:
    assert float(jnp.max(jnp.abs(g))) > 1e-4
