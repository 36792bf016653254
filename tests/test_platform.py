"""Accelerator defaults (idml_jax.platform) change speed, never results; bf16 keeps f32 losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny

from idml_jax import data, evaluation, iaa, methods, platform
from idml_jax.index import GalleryIndex
from idml_jax.ops import top_k
from idml_jax.train.steps import Steps, make_mesh, to_global


def test_defaults_are_chosen_by_the_backend():
  assert platform.defaults("cpu").search_backend == "exact_host"
  assert platform.defaults("cpu").top_k_group == 32
  for name in ("gpu", "tpu", "rocm"):  # Unknown accelerators get the GPU's.
    d = platform.defaults(name)
    assert d.top_k_group == 0 and d.search_backend == "exact_device" and d.search_gallery_block
  assert platform.defaults() == platform.DEFAULTS[jax.default_backend()]


@pytest.fixture
def as_gpu(monkeypatch):
  """Every platform default as on a GPU, while running on the CPU."""
  monkeypatch.setattr(platform, "defaults", lambda backend=None: platform.DEFAULTS["gpu"])


def _tied(shape, seed=0):
  return np.round(np.random.default_rng(seed).standard_normal(shape), 1).astype(np.float32)


def test_top_k_of_every_platform_agrees_ties_included(as_gpu):
  x = jnp.asarray(_tied((40, 700)))  # Eager: the defaults are read at every call.
  for axis in (-1, 0):
    want = top_k(x, 6, group=32, axis=axis)  # The CPU path.
    got = top_k(x, 6, axis=axis)  # The GPU default: plain lax.top_k.
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def _metrics_and_search():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 30, 600)
  emb = _tied((600, 12), seed=2) + 2 * _tied((30, 12), seed=3)[labels]
  ranks = evaluation.query_ranks(emb, labels, max_k=8)
  stats = iaa.merge(iaa.init(30, 12), jnp.asarray(emb), jnp.asarray(labels))
  nbr = iaa._tiled_neighbor_covariance(stats.mean, stats.covariance, stats.pass_count,
                                       num_neighbors=5, sigma_mean=1.0, sigma_cov=1.0,
                                       block_size=8)  # The large-C path, which uses top_k.
  index = GalleryIndex(emb[:500], max_k=10)
  return (ranks.metrics((1, 2, 4, 8)), ranks.first_hit_rank, np.asarray(nbr),
          index.backend, index.search(emb[500:], 5))


def test_evaluation_iaa_and_search_equal_on_the_gpu_defaults(monkeypatch):
  jax.clear_caches()  # Defaults are read when a function is traced: trace afresh.
  cpu = _metrics_and_search()
  monkeypatch.setattr(platform, "defaults", lambda backend=None: platform.DEFAULTS["gpu"])
  jax.clear_caches()
  gpu = _metrics_and_search()
  jax.clear_caches()
  assert cpu[0] == gpu[0]
  np.testing.assert_array_equal(cpu[1], gpu[1])
  np.testing.assert_allclose(cpu[2], gpu[2], rtol=1e-6, atol=1e-7)
  assert (cpu[3], gpu[3]) == ("exact_host", "exact_device")
  np.testing.assert_array_equal(cpu[4][1], gpu[4][1])
  np.testing.assert_allclose(cpu[4][0], gpu[4][0], atol=1e-5)


def test_bfloat16_backbone_keeps_float32_embeddings_losses_and_parameters():
  c = tiny(method="idml+iaa", model__dtype="bfloat16")
  steps = Steps.build(c, 5, 10, make_mesh(jax.devices()[:1]))
  state = steps.fresh_state()
  src = data.load_splits(c.data.name, "demo")["train"]
  z = np.random.default_rng(0).standard_normal((len(src), c.model.embedding_dim))
  state = state.replace(carry=steps.method.update(state.carry, z.astype(np.float32), src.labels))
  sampler = data.ClassBalancedSampler(src.labels, c.batch_size, c.data.images_per_class, seed=0)
  local = next(iter(data.train_batches(src, sampler, image_size=16, seed=0, start_step=0,
                                       num_steps=1, num_threads=2)))
  batch = to_global(steps.mesh, {"image": local["image"], "label": local["label"]})
  out = jax.eval_shape(steps.embed, state, batch["image"])  # Traced, not compiled.
  assert out["semantic"].dtype == jnp.float32 and out["uncertainty_norm"].dtype == jnp.float32
  plan = methods.StepPlan((("synthesize", True),), {"strength": 0.8})
  step = lambda s, b: steps.train_step(s, b, plan, train_backbone=True)
  program = str(jax.make_jaxpr(step)(state, batch))
  assert "conv_general_dilated" in program and "bf16[" in program  # The backbone runs in bf16.
  before = jax.device_get(state.params)  # The step donates the state.
  new, m = step(state, batch)
  after, m = jax.device_get(new.params), jax.device_get(m)
  assert m["loss"].dtype == jnp.float32 and np.isfinite(float(m["loss"]))
  assert np.isfinite(float(m["grad_norm"])) and float(m["grad_norm"]) > 0
  for leaf in jax.tree.leaves(after):
    assert leaf.dtype == jnp.float32 and np.all(np.isfinite(leaf))
  moved = [float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(after), jax.tree.leaves(before), strict=True)]
  assert max(moved) > 0
