"""The main job end to end on tiny configs: devices, resume, methods, validation."""

import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from idml_jax import config as config_lib
from idml_jax import data, iaa
from idml_jax.train import loop, objective
from idml_jax.train.checkpoint import Checkpoints
from idml_jax.train.state import create, init_state, make_model
from idml_jax.train.steps import Steps, make_mesh, replicate, to_global

ROOT = os.path.dirname(os.path.dirname(__file__))


def load_config(name: str, arg: str) -> ml_collections.ConfigDict:
  return config_lib.from_file(f"{os.path.join(ROOT, 'configs', name)}:{arg}")


def override(c: ml_collections.ConfigDict, **kw) -> ml_collections.ConfigDict:
  """``override(c, iaa__start_epoch=1)`` sets ``c.iaa.start_epoch = 1``."""
  for k, v in kw.items():
    node = c
    *path, last = k.split("__")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def tiny(method="idml+iaa", loss="multi_similarity", **kw) -> ml_collections.ConfigDict:
  c = config_lib.runlocal(config_lib.default_config())
  c.method, c.loss.name = method, loss
  c.data.source, c.data.name = "demo", "digits"
  c.data.image_size = c.data.resize_size = 16
  c.data.num_threads = 2
  c.data.images_per_class = 4  # Digits' train split has 5 classes: 4 × 4 per batch.
  c.model.embedding_dim = 16
  c.eval.batch_size = 64
  c.optimizer.lr = 1e-3
  override(c, **kw)
  return c


def test_demo_config_end_to_end(tmp_path):
  c = load_config("demo.py", "runlocal")
  results = loop.train_and_evaluate(c, str(tmp_path))
  assert 0 <= results["final"]["recall@1"] <= 1
  assert results["untrained"] is not None
  for f in ("results.json", "metrics.jsonl", "training_curves.png", "retrieval_grid.png",
            "uncertainty_vs_error.png"):
    assert os.path.exists(tmp_path / f), f
  assert os.listdir(tmp_path / "tensorboard")


def _run_steps(config, devices, num_steps=3):
  """Losses and final params of ``num_steps`` train steps on a mesh of ``devices``."""
  splits = data.load_splits(config.data.name, "demo")
  src = splits["train"]
  mesh = make_mesh(devices)
  model = make_model(config)
  state, tx = create(config, model, 5, 10)
  state = replicate(mesh, state)
  steps = Steps(config, model, tx, mesh)
  rng = np.random.default_rng(0)
  z = rng.standard_normal((len(src), config.model.embedding_dim)).astype(np.float32)
  stats = steps.update_class_stats(state.class_stats, z, src.labels)
  state = state.replace(class_stats=stats)
  sampler = data.ClassBalancedSampler(src.labels, config.batch_size,
                                      config.data.images_per_class, seed=0)
  losses = []
  for local in data.train_batches(src, sampler, image_size=16, seed=0, start_step=0,
                                  num_steps=num_steps, num_threads=2):
    batch = to_global(mesh, {"image": local["image"], "label": local["label"]})
    state, m = steps.train_step(state, batch, 0.8, synthesize=True, train_backbone=True)
    losses.append(float(m["loss"]))
  return losses, jax.device_get(state.params)


def test_one_device_equals_eight_devices():
  assert jax.device_count() == 8
  c = tiny()
  one_loss, one_params = _run_steps(c, jax.devices()[:1])
  eight_loss, eight_params = _run_steps(c, jax.devices())
  np.testing.assert_allclose(one_loss, eight_loss, rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
               one_params, eight_params)


def test_uncertainty_head_learns_in_idml_mode():
  c = tiny(method="idml", loss="proxy_anchor")
  mesh = make_mesh(jax.devices()[:1])
  model = make_model(c)
  state, tx = create(c, model, 5, 10)
  before = jax.device_get(state.params["model"]["uncertainty"]["kernel"])
  steps = Steps(c, model, tx, mesh)
  batch = to_global(mesh, {"image": np.random.default_rng(0).integers(0, 255, (16, 16, 16, 3),
                                                                     dtype=np.uint8),
                           "label": np.repeat(np.arange(5), 4)[:16].astype(np.int32)})
  state, m = steps.train_step(replicate(mesh, state), batch, 0.0, synthesize=False,
                              train_backbone=True)
  after = jax.device_get(state.params["model"]["uncertainty"]["kernel"])
  assert np.abs(after - before).max() > 1e-6
  assert float(m["uncertainty_norm"]) > 0


def test_train_bn_updates_statistics_and_eval_uses_running_ones():
  c = tiny(method="idml", loss="proxy_anchor", model__train_bn=True)
  mesh = make_mesh(jax.devices()[:1])
  model = make_model(c)
  state, tx = create(c, model, 5, 10)
  steps = Steps(c, model, tx, mesh)
  images = np.random.default_rng(0).integers(0, 255, (16, 16, 16, 3), dtype=np.uint8)
  batch = to_global(mesh, {"image": images,
                           "label": np.repeat(np.arange(5), 4)[:16].astype(np.int32)})
  before = jax.device_get(state.batch_stats)
  state, _ = steps.train_step(replicate(mesh, state), batch, 0.0, synthesize=False,
                              train_backbone=True)
  after = jax.device_get(state.batch_stats)
  assert np.abs(after["backbone"]["bn1"]["mean"] - before["backbone"]["bn1"]["mean"]).max() > 0
  # Evaluation: running statistics, so an image's embedding ignores the rest of its batch.
  alone = steps.embed(state, images[:8])["semantic"]
  mixed = steps.embed(state, np.concatenate([images[:4], images[8:12]]))["semantic"]
  np.testing.assert_allclose(alone[:4], mixed[:4], rtol=1e-5, atol=1e-6)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch):
  c = tiny()
  full = loop.train_and_evaluate(c, str(tmp_path / "full"))
  real_step = Steps.train_step

  def crash_at_step_3(self, state, *a, **kw):
    if int(state.step) == 3:
      raise KeyboardInterrupt  # A kill after the epoch-1 checkpoint (step 2).
    return real_step(self, state, *a, **kw)

  monkeypatch.setattr(Steps, "train_step", crash_at_step_3)
  with pytest.raises(KeyboardInterrupt):
    loop.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert Checkpoints(str(tmp_path / "resumed")).latest_step() == 2
  monkeypatch.setattr(Steps, "train_step", real_step)
  resumed = loop.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert resumed["steps_this_run"] == 2
  assert resumed["final"] == pytest.approx(full["final"], rel=1e-5, abs=1e-6)
  params = []
  for d in ("full", "resumed"):
    ck = Checkpoints(str(tmp_path / d))
    params.append(flax.serialization.to_state_dict(ck.restore(
        _template(c), ck.latest_step()))["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), *params)
  metrics = loop.evaluate_only(c, str(tmp_path / "resumed"))
  assert "recall@1" in metrics


def _template(c):
  return create(c, make_model(c), 5, 2)[0]


def test_iaa_synthesis_only_from_start_epoch(tmp_path, monkeypatch):
  calls = []
  real_step = Steps.train_step

  def record(self, state, batch, strength, *, synthesize, train_backbone):
    calls.append((int(state.step), synthesize, strength))
    return real_step(self, state, batch, strength, synthesize=synthesize,
                     train_backbone=train_backbone)

  monkeypatch.setattr(Steps, "train_step", record)
  loop.train_and_evaluate(tiny(method="iaa", iaa__start_epoch=1), str(tmp_path))
  assert [c[1] for c in calls] == [False, False, True, True]
  assert calls[0][2] == 0.0 and calls[2][2] == pytest.approx(0.8 * 0.9)  # Progress 1/2.


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path, monkeypatch):
  real = objective.total_loss
  monkeypatch.setattr(objective, "total_loss",
                      lambda *a, **kw: (real(*a, **kw)[0] * jnp.nan, real(*a, **kw)[1]))
  with pytest.raises(loop.NonFiniteLossError, match="step 1"):
    loop.train_and_evaluate(tiny(method="baseline", loss="contrastive"), str(tmp_path))


@pytest.mark.parametrize("change, match", [
    (lambda c: c.update({"method": "magic"}), "method='magic'; valid: baseline"),
    (lambda c: c.loss.update({"name": "arcface"}), "loss.name='arcface'"),
    (lambda c: c.update({"method": "iaa"}), "pair losses"),
    (lambda c: c.data.update({"source": "folder"}), "--config.data.data_dir"),
    (lambda c: c.model.update({"backbone": "vit"}), "resnet50"),
    (lambda c: c.eval.update({"kmeans": "faiss"}), "eval.kmeans='faiss'; valid: jax, jax_plain"),
    (lambda c: c.update({"task": "classification", "method": "iaa"}), "baseline .plain"),
    (lambda c: c.update({"task": "classification", "method": "idml"}), "data.sampler=.random."),
])
def test_bad_config_rejected_before_work(change, match):
  c = config_lib.default_config()
  change(c)
  with pytest.raises(ValueError, match=match):
    config_lib.validate(c)


def test_unknown_config_key_rejected():
  c = config_lib.default_config()
  c.unlock()
  c.model.embeding_dim = 3
  with pytest.raises(ValueError, match="unknown key 'model.embeding_dim'"):
    config_lib.validate(c)


@pytest.mark.parametrize("name, arg", [("idml_pa.py", "cub"), ("idml_pa.py", "sop,tfds"),
                                       ("iaa.py", "cub,ms"), ("iaa.py", "inshop,triplet,resnet50"),
                                       ("iaa.py", "sop,contrastive,idml"), ("demo.py", "digits")])
def test_paper_configs_validate(name, arg):
  c = load_config(name, arg)
  if c.data.source == "folder":
    c.data.data_dir = "/data"
  config_lib.validate(c)
  if name == "iaa.py":
    assert c.max_steps_per_epoch == 300 and c.iaa.start_epoch == 30


def test_class_stats_only_for_iaa():
  c = tiny(method="idml", loss="proxy_anchor")
  state = init_state(c, make_model(c), 5)
  assert state.class_stats.mean.shape == (1, 16)
  assert isinstance(state.class_stats, iaa.ClassStats)
