"""Image classification with the ISM (§1.4): model, Mixup/CutMix, loss, data, training."""

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, override
from PIL import Image

from idml_jax import config as config_lib
from idml_jax import data, mixing
from idml_jax.data import transforms
from idml_jax.models import ClassifierModel, make_backbone
from idml_jax.train import loop
from idml_jax.train.steps import Steps, make_mesh, to_global


def naive_ism_logits(h, w, w_u, b_u, a=0.0, b=5.0, class_bias=None):
  """§1.4 with loops: zI_c = 1 - (1 - z_c) exp(-(du + a) / (b dmu_c)), the proxy of class c
  its weight column plus its bias (the official fc(I))."""
  class_bias = np.zeros(w.shape[1]) if class_bias is None else class_bias
  out_z = np.zeros((h.shape[0], w.shape[1]))
  out_i = np.zeros_like(out_z)
  for i in range(h.shape[0]):
    u = np.maximum(h[i] @ w_u + b_u, 0)
    du = sum(x * x for x in u)
    for c in range(w.shape[1]):
      z = sum(h[i, f] * w[f, c] for f in range(h.shape[1])) + class_bias[c]
      dmu = sum((h[i, f] - w[f, c] - class_bias[c]) ** 2 for f in range(h.shape[1]))
      out_z[i, c] = z
      out_i[i, c] = 1 - (1 - z) * np.exp(-(du + a) / (b * dmu))
  return out_z, out_i


@pytest.mark.parametrize("bias", [False, True])
def test_classifier_model_logits_match_naive(bias):
  model = ClassifierModel(make_backbone("resnet_tiny_cifar"), num_classes=5, uncertainty_dim=6,
                          bias=bias)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 16, 16, 3)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  out = model.apply(variables, x)
  p = jax.device_get(variables["params"])
  b = np.float64(p["classifier_bias"]) if bias else np.zeros(5)
  z, zi = naive_ism_logits(np.float64(out["features"]), np.float64(p["classifier"]),
                           np.float64(p["uncertainty"]["kernel"]),
                           np.float64(p["uncertainty"]["bias"]), class_bias=b)
  np.testing.assert_allclose(out["logits"], z, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["introspective_logits"], zi, rtol=1e-4, atol=1e-5)
  plain = ClassifierModel(make_backbone("resnet_tiny_cifar"), 5, uncertainty=False)
  assert set(plain.apply(plain.init(jax.random.PRNGKey(0), x), x)) == {"features", "logits"}


def naive_mixed_ce(logits, labels, lam, perm):
  total = 0.0
  for i in range(len(labels)):
    logz = np.log(np.sum(np.exp(logits[i])))
    total += lam * (logz - logits[i, labels[i]]) + (1 - lam) * (logz - logits[i, labels[perm[i]]])
  return total / len(labels)


def test_mixed_cross_entropy_matches_naive_and_its_gradient_is_finite():
  rng = np.random.default_rng(1)
  logits, labels = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
  perm = rng.permutation(6)
  got = mixing.mixed_cross_entropy(jnp.float32(logits), jnp.int32(labels), 0.3, perm)
  np.testing.assert_allclose(got, naive_mixed_ce(logits, labels, 0.3, perm), rtol=1e-5)
  g = jax.grad(lambda x: mixing.mixed_cross_entropy(x, jnp.int32(labels), 0.3, perm))(
      jnp.float32(logits) * 1e3)
  assert np.all(np.isfinite(g))


def _mix(key, images, kind, alpha=1.0, prob=1.0):
  draws = mixing.draw(key, kind, images.shape[0], images.shape[1], images.shape[2], alpha=alpha,
                      prob=prob)
  mixed, lam = mixing.mix(images, draws, kind)
  return mixed, lam, draws["perm"]


def test_mixup_is_a_convex_combination_with_beta_lam():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((8, 4, 4, 3)), jnp.float32)
  mixed, lam, perm = _mix(jax.random.PRNGKey(0), x, "mixup")
  assert sorted(np.asarray(perm).tolist()) == list(range(8))
  np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[perm], rtol=1e-6)
  lams = jax.vmap(lambda k: _mix(k, x, "mixup", 0.4)[1])(jax.random.split(jax.random.PRNGKey(1),
                                                                           4000))
  # Beta(0.4, 0.4): mean 1/2, variance 1/(4 (2 alpha + 1)) = 0.1389.
  assert abs(float(jnp.mean(lams)) - 0.5) < 0.02
  assert abs(float(jnp.var(lams)) - 0.25 / 1.8) < 0.01


def naive_box(lam, cy, cx, h, w):
  cut = np.sqrt(1 - lam)
  ch, cw = int(cut * h), int(cut * w)
  clip = lambda v, hi: min(max(v, 0), hi)
  return clip(cy - ch // 2, h), clip(cy + ch // 2, h), clip(cx - cw // 2, w), clip(cx + cw // 2, w)


def test_cutmix_box_matches_rand_bbox():
  for seed in range(20):
    key = jax.random.PRNGKey(seed)
    lam = float(jax.random.uniform(jax.random.fold_in(key, 9)))
    k_y, k_x = jax.random.split(key)
    cy, cx = int(jax.random.randint(k_y, (), 0, 24)), int(jax.random.randint(k_x, (), 0, 20))
    got = tuple(int(v) for v in mixing.cutmix_box(key, jnp.float32(lam), 24, 20))
    assert got == naive_box(lam, cy, cx, 24, 20)


def test_cutmix_pastes_the_box_and_corrects_lam():
  x = jnp.asarray(np.random.default_rng(3).standard_normal((6, 16, 12, 3)), jnp.float32)
  applied, lams = 0, []
  for seed in range(200):
    mixed, lam, perm = _mix(jax.random.PRNGKey(seed), x, "cutmix", prob=0.5)
    changed = np.any(np.asarray(mixed) != np.asarray(x), axis=(0, 3))  # [H, W] pasted pixels
    pasted = np.asarray(mixed)[:, changed]
    np.testing.assert_array_equal(pasted, np.asarray(x)[np.asarray(perm)][:, changed])
    np.testing.assert_allclose(float(lam), 1 - changed.sum() / (16 * 12), atol=1e-6)
    if changed.any():
      rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
      assert changed[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # One rectangle.
      applied += 1
    lams.append(float(lam))
  assert 70 < applied < 130  # prob = 0.5 per batch.
  assert 0.6 < np.mean(lams) < 0.9  # 1/2 unmixed (lam 1) + 1/2 ~ E[corrected lam] >= 1/2.


def test_pad_crop_flip_is_a_shifted_window():
  img = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
  for seed in range(10):
    out = transforms.pad_crop_flip(img, 8, np.random.default_rng(seed))
    padded = np.pad(img, ((4, 4), (4, 4), (0, 0)))
    windows = [padded[t:t + 8, s:s + 8] for t in range(9) for s in range(9)]
    assert any(np.array_equal(out, w) or np.array_equal(out, w[:, ::-1]) for w in windows)


@pytest.mark.parametrize("size, pad", [(8, 4), (5, 2), (3, 4)])
def test_pad_crop_flip_equals_numpy_pad_with_the_same_draws(size, pad):
  img = np.random.default_rng(0).integers(1, 255, (size, size, 3), dtype=np.uint8)
  for seed in range(60):
    rng = np.random.default_rng(seed)
    top, left = rng.integers(0, 2 * pad + 1, size=2)
    want = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))[top:top + size, left:left + size]
    want = want[:, ::-1] if rng.random() < 0.5 else want
    np.testing.assert_array_equal(
        transforms.pad_crop_flip(img, size, np.random.default_rng(seed), pad=pad), want)


def tiny_classification(row="idml_cutmix", **overrides):
  c = load_config("classification.py", f"demo,{row},runlocal")
  c.data.num_threads = 2
  override(c, **overrides)
  config_lib.validate(c)
  return c


def _steps(c, devices, n=3):
  src = data.load_splits(c.data.name, "demo")["train"]
  steps = Steps.build(c, 20, 10, make_mesh(devices))
  state = steps.fresh_state()
  sampler = data.RandomSampler(len(src), c.batch_size, seed=0)
  out = []
  for local in data.train_batches(src, sampler, image_size=32, seed=0, start_step=0, num_steps=n,
                                  num_threads=2, transform=transforms.pad_crop_flip):
    batch = to_global(steps.mesh, {"image": local["image"], "label": local["label"]})
    state, m = steps.train_step(state, batch, steps.method.plan(0), train_backbone=True)
    out.append({k: float(v) for k, v in m.items()})
  return out, jax.device_get(state)


@pytest.mark.parametrize("row", ["baseline", "ism", "mixup", "idml_mixup", "cutmix",
                                 "idml_cutmix", "idml_cutmix,official"])
def test_every_row_trains(row):
  c = tiny_classification(row)
  metrics, state = _steps(c, jax.devices()[:1], n=2)
  assert all(np.isfinite(v) for m in metrics for v in m.values())
  assert ("uncertainty_norm" in metrics[0]) == row.startswith(("ism", "idml"))
  if row in ("baseline", "ism"):
    assert all(m["lam"] == 1.0 for m in metrics)
  bn = state.batch_stats["backbone"]["bn1"]["mean"]
  assert np.abs(bn).max() > 0  # BatchNorm statistics train (they start at 0).


def test_one_device_equals_eight_devices():
  # lr 1e-3: at the demo's 0.1 this tiny BatchNorm-trained net amplifies float rounding
  # chaotically within three steps, whatever the device count. Mixup: with CutMix the
  # gradients differ by ~4e-4 (relative) in this chaotic net on jax 0.10.2's CPU backend
  # although the mixed batch is bitwise equal (the next test), so CutMix is checked there.
  c = tiny_classification("idml_mixup", optimizer__lr=1e-3)
  one_m, one = _steps(c, jax.devices()[:1])
  eight_m, eight = _steps(c, jax.devices())
  np.testing.assert_allclose([m["loss"] for m in one_m], [m["loss"] for m in eight_m], rtol=1e-4)
  assert one_m[0]["grad_norm"] == pytest.approx(eight_m[0]["grad_norm"], rel=1e-5)
  assert [m["lam"] for m in one_m] == pytest.approx([m["lam"] for m in eight_m])
  # (A 5 % gradient mismatch, Flax's fast E[x²] - E[x]² variance, is what this test caught.)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               (one.params, one.batch_stats), (eight.params, eight.batch_stats))


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixing_a_sharded_batch_equals_one_device(kind):
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P
  images = np.random.default_rng(0).standard_normal((16, 32, 32, 3)).astype(np.float32)
  draws = mixing.draw(jax.random.PRNGKey(0), kind, 16, 32, 32, alpha=1.0, prob=1.0)
  mix = jax.jit(lambda x, d: mixing.mix(x, d, kind))
  sharded = jax.device_put(images, NamedSharding(Mesh(np.array(jax.devices()), ("data",)),
                                                 P("data")))
  (one, lam_one), (eight, lam_eight) = mix(images, draws), mix(sharded, draws)
  assert len(eight.sharding.device_set) == 8 and 0 < float(lam_one) < 1
  np.testing.assert_array_equal(np.asarray(one), np.asarray(eight))
  assert float(lam_one) == float(lam_eight)


def test_end_to_end_on_shipped_data(tmp_path):
  c = tiny_classification("idml_mixup")
  results = loop.train_and_evaluate(c, str(tmp_path))
  final = results["final"]
  assert 0 <= final["top1"] <= final["top5"] <= 1 and "uncertainty_mean" in final
  assert results["best"]["top1"] == max(results["best"]["top1"], final["top1"])
  for f in ("training_curves.png", "uncertainty_vs_error.png", "results.json", "run.json",
            "risk_coverage.png", "reliability.png"):
    assert os.path.exists(tmp_path / f), f
  assert 0 <= final["ece_softmax"] <= 1 and 0 <= final["ece_ism"] <= 1
  assert {"softmax", "ism"} <= set(json.load(open(tmp_path / "results.json"))["calibration"])
  again = loop.evaluate_only(c, str(tmp_path))
  assert again["top1"] == pytest.approx(results["best"]["top1"])


def test_collapsed_classifier_is_not_right_by_ties():
  from idml_jax.evaluation import classification_metrics
  logits = np.zeros((12, 4), np.float32)  # Every class scores the same.
  labels = np.arange(12) % 4
  got = classification_metrics(logits, labels, ks=(1, 2))
  assert got == {"top1": 0.25, "top2": 0.5}  # argmax's order (class 0 first): chance.


def test_tfds_classification_keeps_labels(tmp_path):
  import tensorflow_datasets as tfds

  from idml_jax.data.tfds_source import load_tfds_classification

  class TinyCifar(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(4, 4, 3), encoding_format="png"),
          "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(range(10)),
              "test": self._generate_examples([2, 7])}

    def _generate_examples(self, labels):
      for i, label in enumerate(labels):
        buf = io.BytesIO()
        Image.fromarray(np.full((4, 4, 3), 20 * label, np.uint8)).save(buf, format="PNG")
        yield i, {"image": buf.getvalue(), "label": label}

  TinyCifar(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  splits = load_tfds_classification("cifar10", str(tmp_path), tfds_name="tiny_cifar")
  assert sorted(splits["train"].labels.tolist()) == list(range(10))
  assert sorted(splits["test"].labels.tolist()) == [2, 7]  # Not renumbered.
  for i in range(2):
    assert splits["test"].load(i)[0, 0, 0] == 20 * splits["test"].labels[i]
  with pytest.raises(FileNotFoundError, match="downloads/manual"):
    data.load_splits("imagenet", "tfds", str(tmp_path / "empty"))


@pytest.mark.parametrize("arg", ["imagenet,baseline", "imagenet,ism", "imagenet,mixup",
                                 "imagenet,idml_mixup", "imagenet,cutmix",
                                 "imagenet,idml_cutmix", "imagenet,idml_cutmix,official",
                                 "cifar10,idml_cutmix", "cifar100,cutmix,official", "demo,ism"])
def test_paper_rows_validate(arg):
  c = load_config("classification.py", arg)
  config_lib.validate(c)
  assert c.task == "classification" and c.model.batch_norm == "train" and c.optimizer.nesterov
  assert ("imagenet" in arg) == (c.data.color_jitter == 0.4 and c.data.lighting == 0.1)


def test_bad_classification_argument_rejected():
  with pytest.raises(ValueError, match="row: baseline"):
    load_config("classification.py", "cifar10,idml_cutmx")


def test_without_flips_the_crops_are_the_same_windows_never_mirrored():
  img = np.random.default_rng(1).integers(1, 255, (8, 8, 3), dtype=np.uint8)
  flipped = 0
  for seed in range(40):
    rng = np.random.default_rng(seed)
    top, left = rng.integers(0, 9, size=2)
    want = np.pad(img, ((4, 4), (4, 4), (0, 0)))[top:top + 8, left:left + 8]
    flipped += rng.random() < 0.5  # What the flipping transform would have drawn.
    np.testing.assert_array_equal(
        transforms.pad_crop_flip(img, 8, np.random.default_rng(seed), flip=False), want)
    rr = transforms.train_transform(img, 8, np.random.default_rng(seed), scale=(1.0, 1.0),
                                    flip=False)
    np.testing.assert_array_equal(rr, transforms.random_resized_crop(
        img, 8, np.random.default_rng(seed), scale=(1.0, 1.0)))
  assert 10 < flipped < 30  # The flipping version would have mirrored about half.
