"""The main job end to end on tiny configs: devices, resume, methods, validation."""

import json
import os
import threading
import types

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import load_config, tiny

from idml_jax import config as config_lib
from idml_jax import config_files, data, iaa, methods, tasks
from idml_jax.data.transforms import normalize
from idml_jax.evaluation import selective
from idml_jax.models import convert
from idml_jax.tasks.retrieval import RetrievalTask
from idml_jax.train import loop
from idml_jax.train.checkpoint import Checkpoints
from idml_jax.train.state import make_model
from idml_jax.train.steps import Steps, make_mesh, to_global
from idml_jax.train.workdir import Workdir


def test_demo_config_end_to_end_learns(tmp_path):
  """The shipped demo (real glyph images, IDML-PA) for 320 of its 760 steps; the shipped run
  (seed 0) lifts Recall@1 0.43 -> 0.78 and MAP@R 0.08 -> 0.34."""
  c = load_config("demo.py")
  c.num_epochs, c.eval.every_epochs, c.eval.nmi = 8, 8, False
  results = loop.train_and_evaluate(c, str(tmp_path))
  final, untrained = results["final"], results["untrained"]
  assert final["recall@1"] > untrained["recall@1"] + 0.05
  assert final["map@r"] > untrained["map@r"] + 0.03
  ev = results["evaluated"]  # The final evaluation's per-image arrays (not in results.json).
  assert len(ev["labels"]) == len(ev["failed"]) == len(ev["uncertainty_norm"]) == final[
      "images_test"]
  assert 1 - np.mean(ev["failed"]) == pytest.approx(final["recall@1"])
  for f in ("results.json", "metrics.jsonl", "training_curves.png", "retrieval_grid.png",
            "uncertainty_vs_error.png", "risk_coverage.png", "run.json", "untrained.json"):
    assert os.path.exists(tmp_path / f), f
  assert os.listdir(tmp_path / "tensorboard")
  on_disk = json.load(open(tmp_path / "results.json"))
  curves = on_disk["risk_coverage"]  # ||u|| and the trivial confidences, side by side.
  assert {"uncertainty", "nearest", "gap", "combined", "oracle"} <= set(curves)
  assert on_disk["undefined"] == {}
  for score in ("uncertainty", "nearest", "gap", "combined"):
    assert len(curves[score]["recall@1"]) == 10 and curves[score]["recall@1"][-1] == (
        pytest.approx(final["recall@1"]))  # Coverage 1 is the whole test split.
    assert final[f"eaurc_{score}"] >= -1e-9 and 0 <= final[f"aurc_{score}"] <= 1
    assert final[f"rauroc_{score}"] == curves[score]["rauroc"]
  for score, conf in (("uncertainty", -ev["uncertainty_norm"]), ("nearest", ev["nearest_score"]),
                      ("gap", ev["nearest_score"] - ev["second_score"])):
    assert final[f"rauroc_{score}"] == pytest.approx(selective.rauroc(conf, ~ev["failed"]))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert all(0 < r["train/ism_factor_mean"] < 1 for r in rows if "train/ism_factor_mean" in r)


# IAA's synthesis on, at strength 0.8 (what the step is handed after iaa.start_epoch).
SYNTHESIZE = methods.StepPlan((("synthesize", True),), {"strength": 0.8})


def _state_and_steps(config, devices, num_classes=5, steps_per_epoch=10):
  steps = Steps.build(config, num_classes, steps_per_epoch, make_mesh(devices))
  return steps.fresh_state(), steps


def _run_steps(config, devices, num_steps=3):
  """Losses and final params of ``num_steps`` train steps on a mesh of ``devices``."""
  src = data.load_splits(config.data.name, "demo")["train"]
  state, steps = _state_and_steps(config, devices)
  z = np.random.default_rng(0).standard_normal((len(src), config.model.embedding_dim))
  state = state.replace(carry=steps.method.update(state.carry, z.astype(np.float32), src.labels))
  sampler = data.ClassBalancedSampler(src.labels, config.batch_size,
                                      config.data.images_per_class, seed=0)
  losses = []
  for local in data.train_batches(src, sampler, image_size=16, seed=0, start_step=0,
                                  num_steps=num_steps, num_threads=2):
    batch = to_global(steps.mesh, {"image": local["image"], "label": local["label"]})
    state, m = steps.train_step(state, batch, SYNTHESIZE, train_backbone=True)
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


def _batch(mesh, n=16):
  images = np.random.default_rng(0).integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
  return images, to_global(mesh, {"image": images,
                                  "label": np.repeat(np.arange(5), 4)[:n].astype(np.int32)})


def test_uncertainty_head_learns_in_idml_mode():
  """The uncertainty head's gradient is the loss's (a central finite difference along it), and
  the step moves the head against it (Adam's first step: -lr sign(g))."""
  c = tiny(method="idml", loss="proxy_anchor")
  state, steps = _state_and_steps(c, jax.devices()[:1])
  batch = _batch(steps.mesh)[1]
  draws = steps.draws(state.step, 16)
  images, apply_fn = normalize(batch["image"], steps.spec), steps._apply(state.batch_stats, True)
  model = state.params["model"]

  def loss_of(kernel):
    params = {**state.params, "model": {**model, "uncertainty": {**model["uncertainty"],
                                                                 "kernel": kernel}}}
    return steps.task.loss(apply_fn, params, images, batch["label"], draws,
                           methods.MethodStep(state.carry, {}, {}))[0]

  before = model["uncertainty"]["kernel"]
  g = np.asarray(jax.grad(loss_of)(before))
  direction, eps = g / np.linalg.norm(g), 1e-2
  finite_difference = float(loss_of(before + eps * direction) - loss_of(before - eps * direction)
                            ) / (2 * eps)
  assert np.linalg.norm(g) > 1e-4
  assert finite_difference == pytest.approx(np.linalg.norm(g), rel=0.05)
  before = np.asarray(before)
  state, m = steps.train_step(state, batch, steps.method.plan(0), train_backbone=True)
  moved = np.asarray(jax.device_get(state.params["model"]["uncertainty"]["kernel"])) - before
  big = np.abs(g) > 1e-3 * np.abs(g).max()
  np.testing.assert_array_equal(np.sign(moved[big]), -np.sign(g[big]))
  assert float(m["uncertainty_norm"]) > 0 and 0 < float(m["ism_factor_mean"]) < 1


def test_trained_batch_norm_updates_statistics_and_eval_uses_running_ones():
  c = tiny(method="idml", loss="proxy_anchor", model__batch_norm="train")
  state, steps = _state_and_steps(c, jax.devices()[:1])
  images, batch = _batch(steps.mesh)
  before = jax.device_get(state.batch_stats)
  state, _ = steps.train_step(state, batch, steps.method.plan(0), train_backbone=True)
  after = jax.device_get(state.batch_stats)
  assert np.abs(after["backbone"]["bn1"]["mean"] - before["backbone"]["bn1"]["mean"]).max() > 0
  # Evaluation: running statistics, so an image's embedding ignores the rest of its batch.
  alone = steps.embed(state, images[:8])["semantic"]
  mixed = steps.embed(state, np.concatenate([images[:4], images[8:12]]))["semantic"]
  np.testing.assert_allclose(alone[:4], mixed[:4], rtol=1e-5, atol=1e-6)


def test_batch_norm_follows_the_weights_and_a_frozen_from_scratch_run_warns(caplog):
  c = tiny()
  assert config_lib.batch_norm_mode(c) == "train"  # auto, no pretrained weights.
  c.model.pretrained = "weights/resnet50"
  assert config_lib.batch_norm_mode(c) == "frozen"
  c = tiny(model__batch_norm="frozen")
  with caplog.at_level("WARNING"):
    loop._warn_about_weights(c)
  assert "no normalisation" in caplog.text


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
  assert Checkpoints(Workdir(tmp_path / "resumed")).latest_step() == 2
  monkeypatch.setattr(Steps, "train_step", real_step)
  resumed = loop.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert resumed["steps_this_run"] == 2
  assert resumed["final"] == pytest.approx(full["final"], rel=1e-5, abs=1e-6)
  params = [_latest_params(c, tmp_path / d) for d in ("full", "resumed")]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), *params)
  assert "recall@1" in loop.evaluate_only(c, str(tmp_path / "resumed"))


def _latest_params(c, workdir):
  ck = Checkpoints(Workdir(workdir))
  state, _ = ck.restore(Steps.build(c, 5, 2, make_mesh()).abstract)
  ck.close()
  return flax.serialization.to_state_dict(state)["params"]


def test_resume_and_eval_need_no_pretrained_file(tmp_path):
  c = tiny(method="idml", loss="proxy_anchor", num_epochs=1)
  model = make_model(tasks.get_task(c), 5)
  backbone = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3)))
  weights = tmp_path / "weights"
  convert.save({k: backbone[k]["backbone"] for k in ("params", "batch_stats")}, str(weights))
  c.model.pretrained = str(weights)
  loop.train_and_evaluate(c, str(tmp_path / "run"))
  for f in weights.rglob("*"):
    if f.is_file():
      f.unlink()
  for d in sorted(weights.rglob("*"), reverse=True):
    d.rmdir()
  weights.rmdir()  # The weight file is gone: resume and eval must not read it.
  c.num_epochs = 2
  resumed = loop.train_and_evaluate(c, str(tmp_path / "run"))
  assert resumed["steps_this_run"] == 2
  assert loop.evaluate_only(c, str(tmp_path / "run"))["step"] == 4


def test_iaa_synthesis_only_from_start_epoch(tmp_path, monkeypatch):
  calls = []
  real_step = Steps.train_step

  def record(self, state, batch, plan, *, train_backbone):
    calls.append((int(state.step), dict(plan.static)["synthesize"], plan.scalars["strength"]))
    return real_step(self, state, batch, plan, train_backbone=train_backbone)

  monkeypatch.setattr(Steps, "train_step", record)
  loop.train_and_evaluate(tiny(method="iaa", iaa__start_epoch=1), str(tmp_path))
  assert [c[1] for c in calls] == [False, False, True, True]
  assert calls[0][2] == 0.0 and calls[2][2] == pytest.approx(0.8 * 0.6)  # 2nd of 2 epochs.


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path, monkeypatch):
  real = RetrievalTask.loss
  monkeypatch.setattr(RetrievalTask, "loss",
                      lambda *a, **kw: (real(*a, **kw)[0] * jnp.nan, real(*a, **kw)[1]))
  with pytest.raises(loop.NonFiniteLossError, match="loss.* by step 1"):
    loop.train_and_evaluate(tiny(method="baseline", loss="contrastive"), str(tmp_path))


@pytest.mark.parametrize("change, match", [
    (lambda c: c.update({"method": "magic"}), "method: Unknown value 'magic'; valid: baseline"),
    (lambda c: c.loss.update({"name": "arcface"}), "loss.name: Unknown value 'arcface'"),
    (lambda c: c.update({"method": "iaa"}), "pair losses"),
    (lambda c: c.data.update({"source": "folder", "name": "cub"}), "--config.data.data_dir"),
    (lambda c: c.model.update({"backbone": "vit"}), "resnet50"),
    (lambda c: c.optimizer.update({"name": "lamb"}), "optimizer.name: Unknown value 'lamb'; "
                                                     "valid: adam, adamw, sgd"),
    (lambda c: c.data.update({"name": "mnist"}), "data.name: Unknown demo dataset 'mnist'"),
    (lambda c: c.eval.update({"kmeans": "faiss"}), "eval.kmeans: Unknown value 'faiss'; valid: "
                                                   "jax, jax_plain"),
    (lambda c: c.update({"task": "classification", "method": "iaa"}),
     "trains method baseline or idml"),
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
  with pytest.raises(ValueError, match="model.embeding_dim: no such key .did you mean "
                                       "model.embedding_dim"):
    config_lib.validate(c)


@pytest.mark.parametrize("old, new", [("idml.a", "ism.a"), ("idml.mixup", "mixing.kind"),
                                      ("classification.mixing", "mixing.kind"),
                                      ("classification.cutmix_prob", "mixing.cutmix_prob")])
def test_old_config_keys_refused_with_the_new_name(old, new):
  c = config_lib.default_config()
  c.unlock()
  group, key = old.split(".")
  if group not in c:
    c[group] = ml_collections.ConfigDict()
  c[group][key] = 1.0
  with pytest.raises(ValueError, match=f"{old} was renamed: use {new}"):
    config_lib.validate(c)


@pytest.mark.parametrize("old, new", [("exact", "rank_count"), ("jax", "exact_device"),
                                      ("scann", "exact_host"), ("scann_ah", "approximate")])
def test_old_back_end_names_are_refused_with_the_new_one_and_read_from_a_run(old, new):
  c = config_lib.default_config()
  c.eval.backend = old
  with pytest.raises(ValueError, match=f"eval.backend: '{old}' was renamed: use '{new}'"):
    config_lib.validate(c)
  from idml_jax.evaluation import retrieval_metrics
  with pytest.raises(ValueError, match=f"'{old}' was renamed: use '{new}'"):
    retrieval_metrics(np.eye(4), np.arange(4) % 2, recall_ks=(1,), backend=old)
  from idml_jax.train.run_record import read_config
  recorded = config_lib.default_config().to_dict()
  recorded["eval"]["backend"] = old  # A run.json of an earlier version: translated.
  assert read_config(recorded).eval.backend == new


@pytest.mark.parametrize("name, arg", [
    ("idml_pa.py", "cub"), ("idml_pa.py", "sop,tfds"), ("idml_pa.py", "cars,official"),
    ("iaa.py", "cub,ms"), ("iaa.py", "inshop,triplet,resnet50"), ("iaa.py", "sop,contrastive,idml"),
    ("iaa.py", "cars,ms,official"), ("iaa.py", "sop,ms,official"), ("demo.py", "digits")])
def test_paper_configs_validate(name, arg):
  c = load_config(name, arg)
  if c.data.source == "folder":
    c.data.data_dir = "/data"
  config_lib.validate(c)
  if name == "iaa.py":
    assert c.max_steps_per_epoch == 300 and c.iaa.start_epoch == 30


@pytest.mark.parametrize("name, arg, match", [
    ("iaa.py", "cub,resnet-50", "Unknown config argument 'resnet-50'; valid words: dataset: cub"),
    ("iaa.py", "ms", "needs a dataset"),
    ("idml_pa.py", "cub200", "Unknown config argument 'cub200'; valid words: dataset: cub, cars"),
    ("demo.py", "digit", "Unknown config argument 'digit'; valid words: dataset: glyphs"),
    ("classification.py", "cifar10,idml_cutmx", "Unknown config argument 'idml_cutmx'"),
])
def test_config_arguments_refuse_unknown_words(name, arg, match):
  with pytest.raises(ValueError, match=match):
    load_config(name, arg)


def test_parse_arg_groups_flags_and_explicit_values():
  got = config_files.parse_arg("sop, loss=contrastive,tfds", dataset=(None, ("cub", "sop")),
                             loss=("ms", ("ms", "contrastive")), flags=("tfds", "official"))
  assert got.to_dict() == {"dataset": "sop", "loss": "contrastive", "tfds": True,
                           "official": False}


def test_only_iaa_carries_class_statistics():
  state, _ = _state_and_steps(tiny(method="idml", loss="proxy_anchor"), jax.devices()[:1])
  assert state.carry == {}
  state, _ = _state_and_steps(tiny(method="iaa"), jax.devices()[:1])
  assert isinstance(state.carry["class_stats"], iaa.ClassStats)
  assert state.carry["class_stats"].mean.shape == (5, 16) and int(state.carry["epoch"]) == -1


@pytest.mark.parametrize("arg", ["", "digits", "runlocal", "digits,runlocal"])
def test_demo_configs_sample_their_own_data(arg):
  """Every shipped demo variant builds its sampler on the data it names."""
  c = load_config("demo.py", arg)
  labels = data.load_splits(c.data.name, c.data.source)["train"].labels
  sampler = data.SAMPLERS[c.data.sampler](labels, c.batch_size, c.data.images_per_class, 0)
  assert sampler.steps_per_epoch(c.max_steps_per_epoch or None) >= 1


def test_a_relative_workdir_trains_and_resumes(tmp_path, monkeypatch):
  """The README's command uses ``--workdir=runs/demo``; orbax needs absolute paths."""
  monkeypatch.chdir(tmp_path)
  c = tiny(method="baseline")
  loop.train_and_evaluate(c, "runs/demo")
  assert Checkpoints(Workdir("runs/demo")).latest_step() is not None
  c.num_epochs += 1  # An allowed change: resumes from the relative path too.
  loop.train_and_evaluate(c, "runs/demo")
  assert os.path.exists(tmp_path / "runs" / "demo" / "results.json")


def test_warmup_freezes_and_stops_gradients_on_one_clock_across_a_resume(tmp_path, monkeypatch):
  """The backbone's stop-gradient and its optimiser freeze switch off at the same global step,
  also when a run is resumed in the middle of the warm-up (2 epochs × 2 steps here)."""
  calls = []
  real_step = Steps.train_step

  def record(self, state, batch, plan, *, train_backbone):
    before = jax.device_get(state.params["model"]["backbone"])
    step = int(state.step)
    state, metrics = real_step(self, state, batch, plan, train_backbone=train_backbone)
    after = jax.device_get(state.params["model"]["backbone"])
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(
        jax.tree.leaves(after), jax.tree.leaves(before), strict=True))
    calls.append((step, train_backbone, moved > 0))
    return state, metrics

  monkeypatch.setattr(Steps, "train_step", record)
  c = tiny(method="baseline", loss="contrastive", optimizer__warmup_epochs=2,
           optimizer__weight_decay=0.1, num_epochs=1)
  loop.train_and_evaluate(c, str(tmp_path))  # Stops after step 2, inside the warm-up.
  c.num_epochs = 3
  loop.train_and_evaluate(c, str(tmp_path))  # Resumes at step 2.
  assert [s for s, _, _ in calls] == list(range(6))
  # (train_backbone, backbone moved): frozen both ways for 4 steps, then both on.
  assert [(t, m) for _, t, m in calls] == [(False, False)] * 4 + [(True, True)] * 2


@pytest.mark.parametrize("backbone, size, warns", [
    ("resnet_tiny", 32, True), ("resnet_tiny", 64, True), ("resnet_tiny", 96, False),
    ("resnet_tiny_cifar", 32, False)])
def test_an_imagenet_stem_on_small_images_from_scratch_warns(caplog, backbone, size, warns):
  c = tiny(model__backbone=backbone, data__image_size=size)
  with caplog.at_level("WARNING"):
    loop._warn_about_weights(c)
  assert ("ImageNet stem" in caplog.text) == warns
  assert not warns or "configs/small_images.py" in caplog.text


@pytest.mark.parametrize("arg", ["idml,pa", "baseline,ms", "iaa,ms", "idml_iaa,contrastive",
                                 "idml,pa,resnet"])
def test_small_images_recipe_validates(arg):
  c = load_config("small_images.py", arg)
  c.data.data_dir = "/data"
  config_lib.validate(c)
  want = ("resnet_tiny_cifar", "kaiming_normal") if "resnet" in arg else ("cnn_small", "torch")
  assert (c.model.backbone, c.model.conv_init) == want and c.data.augment == "pad_crop"
  assert (c.mixing.kind == "mixup") == ("idml" in arg)
  with pytest.raises(ValueError, match="pair losses"):
    load_config("small_images.py", "iaa,pa")


def test_conv_init_torch_draws_each_convolution_as_pytorch_does():
  import flax.traverse_util
  import torch

  from idml_jax.train.state import _variables, make_model
  flat = lambda c: flax.traverse_util.flatten_dict(
      _variables(c, make_model(tasks.get_task(c), 5))["params"])
  default = flat(tiny(method="idml", loss="proxy_anchor"))
  drawn = flat(tiny(method="idml", loss="proxy_anchor", model__conv_init="torch"))
  convs = [p for p, v in drawn.items() if p[-1] == "kernel" and v.ndim == 4]
  assert len(convs) >= 10 and all(p[0] == "backbone" for p in convs)
  for path, value in drawn.items():
    if path in convs:  # U(±1/sqrt(fan_in)), fan_in = H·W·I of the HWIO kernel.
      bound = 1 / np.sqrt(np.prod(value.shape[:-1]))
      assert np.abs(value).max() <= bound and not np.array_equal(value, default[path])
      if value.size >= 2000:
        assert np.var(value) == pytest.approx(bound**2 / 3, rel=0.15)
    else:  # Heads, BatchNorm: as built.
      np.testing.assert_array_equal(value, default[path])
  w = torch.nn.Conv2d(8, 16, 3).weight.detach().numpy()  # PyTorch's own draw: the same law.
  bound = 1 / np.sqrt(8 * 9)
  assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
  assert np.var(w) == pytest.approx(bound**2 / 3, rel=0.15)


def _classification_config():
  c = load_config("classification.py", "demo,idml_cutmix,runlocal")
  c.data.num_threads = 2
  return c


@pytest.mark.parametrize("method", ["baseline", "idml", "iaa", "idml+iaa", "classification"])
def test_steps_between_logs_read_nothing_back_from_the_device(tmp_path, monkeypatch, method):
  """A read-back (float(), np.asarray, .item(), device_get ...) on the loop's thread waits for
  the device queue: the host could not run ahead. Only logging steps and epoch ends may read
  (the saving thread's reads of its state copy wait on that thread only)."""
  from jax._src import array

  from idml_jax.train import steps as steps_lib
  c = (_classification_config() if method == "classification" else
       tiny(method=method, iaa__start_epoch=0, iaa__update_every=1))
  c.num_epochs, c.max_steps_per_epoch, c.log_every_steps = 2, 4, 3
  c.eval.every_epochs, c.eval.at_start, c.eval.nmi = 2, False, False
  done, reads, loop_thread = [0], {}, threading.current_thread()

  def counted(fn):
    def wrapper(*args, **kwargs):
      if threading.current_thread() is loop_thread:
        reads[done[0]] = reads.get(done[0], 0) + 1
      return fn(*args, **kwargs)
    return wrapper

  for name in ("__float__", "__int__", "__bool__", "__index__", "__array__", "item", "tolist"):
    monkeypatch.setattr(array.ArrayImpl, name, counted(getattr(array.ArrayImpl, name)))
  monkeypatch.setattr(jax, "device_get", counted(jax.device_get))
  real_step = steps_lib.Steps.train_step

  def train_step(self, *args, **kwargs):
    out = real_step(self, *args, **kwargs)
    done[0] += 1  # Reads from here to the next step belong to this step.
    return out

  monkeypatch.setattr(steps_lib.Steps, "train_step", train_step)
  loop.train_and_evaluate(c, str(tmp_path))
  total = c.num_epochs * c.max_steps_per_epoch
  assert done[0] == total
  quiet = [s for s in range(1, total + 1) if s % c.log_every_steps and s % c.max_steps_per_epoch]
  assert quiet == [1, 2, 5, 7]
  assert {s: reads[s] for s in quiet if reads.get(s)} == {}
  assert reads.get(3) and reads.get(4)  # Logging and epoch ends do read (the test can see).


@pytest.mark.parametrize("size", [0, 2])
def test_prefetch_keeps_batches_on_the_device_ahead_of_the_step(size):
  from idml_jax.train.steps import prefetch_to_device
  read = []

  def local_batches():
    for i in range(5):
      read.append(i)
      yield {"image": np.full((8, 4, 4, 3), i, np.uint8), "label": np.full(8, i),
             "index": np.arange(8)}

  out = prefetch_to_device(local_batches(), make_mesh(), size)
  first = next(out)
  assert read == list(range(size + 1))  # `size` more batches already put on the device.
  assert isinstance(first["image"], jax.Array) and set(first) == {"image", "label"}
  got = [int(first["label"][0])] + [int(b["label"][0]) for b in out]
  assert got == list(range(5))  # Every batch once, in order.


def test_the_eta_leaves_out_compilation_and_adds_the_passes_to_come(monkeypatch, caplog):
  from idml_jax.train import reporting
  clock = [0.0]
  monkeypatch.setattr(reporting.time, "perf_counter", lambda: clock[0])
  progress = reporting.Progress(total_steps=100, batch_size=8, every=10)
  assert progress(10, {}) == {}  # The first log starts the clock.
  clock[0] += 4.0  # 10 steps in 4 s ...
  with progress.excluded("compile"):
    clock[0] += 60.0  # ... and a minute compiling the IAA step.
  assert progress(20, {})["steps_per_sec"] == pytest.approx(2.5)
  with progress.excluded("eval"):
    clock[0] += 8.0
  with progress.excluded("method"):
    clock[0] += 3.0
  clock[0] += 4.0
  with caplog.at_level("INFO"):
    assert progress(30, {}, {"eval": 2, "method": 5})["steps_per_sec"] == pytest.approx(2.5)
  assert "ETA 0m59s" in caplog.text  # 70 steps at 2.5 steps/s, 2 evaluations of 8 s, 5 × 3 s.


@pytest.mark.parametrize("every, start, epochs", [(1, 0, 5), (2, 1, 6), (3, 2, 7)])
def test_the_passes_left_count_each_evaluation_and_estimate_still_to_run(every, start, epochs):
  c = tiny(method="iaa", num_epochs=epochs, eval__every_epochs=2, iaa__update_every=every,
           iaa__start_epoch=start)
  run = types.SimpleNamespace(config=c, steps_per_epoch=3,
                              steps=types.SimpleNamespace(method=methods.get_method(c)))
  for done in range(epochs * 3 + 1):
    evals = [e for e in range(1, epochs + 1) if e % 2 == 0 or e == epochs]
    estimates = [e for e in range(start, epochs) if (e - start) % every == 0]
    # An evaluation ends epoch e (after step 3e); an estimate starts it (before step 3e).
    assert loop._passes_left(run, done) == {"eval": sum(3 * e >= done for e in evals),
                                            "method": sum(3 * e >= done for e in estimates)}


@pytest.mark.parametrize("recipe", ["pa", "idml_pa", "ms", "iaa_ms", "idml_iaa_ms"])
@pytest.mark.parametrize("official", [False, True])
def test_the_miniature_is_the_paper_recipe_scaled_and_nothing_else(recipe, official):
  mini = load_config("miniature.py", recipe + (",official" if official else ""))
  if recipe in ("pa", "idml_pa"):
    paper = load_config("idml_pa.py", "cub" + (",official" if official else "") +
                        (",baseline" if recipe == "pa" else ""))
  else:
    paper = load_config("iaa.py", "cub,ms,resnet50" + (",official" if official else "") +
                        (",idml" if recipe == "idml_iaa_ms" else ""))
    if recipe == "ms":
      paper.method = "baseline"
  mini.data.data_dir = paper.data.data_dir = "/data"
  config_lib.validate(mini)
  a, b = config_lib.flatten(mini), config_lib.flatten(paper)
  changed = {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
  scaled = {"model.backbone", "model.embedding_dim", "data.name", "data.image_size",
            "data.resize_size", "num_epochs", "optimizer.warmup_epochs",
            "optimizer.decay_epochs", "optimizer.boundaries", "iaa.start_epoch",
            "iaa.update_every", "max_steps_per_epoch", "eval.every_epochs", "eval.nmi",
            "eval.batch_size", "eval.at_start", "checkpoint_every_epochs", "log_every_steps",
            "eval.ks", "data.data_dir", "paper"} | {k for k in a if k.startswith("paper.")} | {
                k for k in b if k.startswith("paper.")}
  assert changed <= scaled, changed - scaled
  assert mini.num_epochs == paper.num_epochs // 10
  assert mini.iaa.start_epoch == paper.iaa.start_epoch // 10
  assert tuple(mini.optimizer.boundaries) == tuple(b // 10 for b in paper.optimizer.boundaries)
