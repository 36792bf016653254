"""Vision Transformers: converted timm / DINO / DINOv2 / CLIP / .npz weights reproduce a
PyTorch ViT with timm's names (tests/torch_vit.py), and the position embedding is resampled
as timm does.

Each family runs at its real patch size and 224 px with a toy width and depth (the real
sizes are in benchmarks/studies/parity.py); the DINOv2 weights carry a 37 × 37 grid (518 px), so
their test also goes through the resampling to 16 × 16.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch_vit = pytest.importorskip("torch_vit")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from idml_jax import models  # noqa: E402
from idml_jax.models import EmbeddingModel, convert, make_backbone, vit  # noqa: E402

TINY = dict(width=64, depth=2, heads=2)
FAMILIES = {  # test backbone -> (variant, torch ViT arguments)
    "test_vit_s16": (vit.ViTVariant(patch=16, **TINY), {}),
    "test_dinov2_reg": (
        vit.ViTVariant(patch=14, reg_tokens=4, no_embed_class=True, layer_scale=True,
                       weights_image_size=518, **TINY),
        dict(img_size=518, reg_tokens=4, no_embed_class=True, init_values=1e-5)),
    "test_dinov2": (vit.ViTVariant(patch=14, layer_scale=True, weights_image_size=518, **TINY),
                    dict(img_size=518, init_values=1e-5)),
    "test_clip": (vit.ViTVariant(patch=16, pre_norm=True, act="quick_gelu", eps=1e-5, **TINY),
                  dict(pre_norm=True, act="quick_gelu", eps=1e-5)),
}


@pytest.fixture(autouse=True)
def test_backbones(monkeypatch):
  """Registers FAMILIES' toy variants as backbones, as BACKBONES registers the real ones."""
  for name, (variant, _) in FAMILIES.items():
    monkeypatch.setitem(vit.VARIANTS, name, variant)
    monkeypatch.setitem(models.BACKBONES, name, models.Backbone(
        functools.partial(vit.make_vit, name), models.IMAGENET, "test", variant))


def _torch_model(name, seed=0, **kw):
  variant, extra = FAMILIES[name]
  torch.manual_seed(seed)
  args = dict(patch_size=variant.patch, embed_dim=variant.width, depth=variant.depth,
              num_heads=variant.heads, **extra, **kw)
  return torch_vit.randomize(torch_vit.ViT(**args), seed).eval()


def _torch_features(model, x_nhwc):
  with torch.no_grad():
    return model(torch.from_numpy(np.transpose(x_nhwc, (0, 3, 1, 2)))).numpy()


_weights = convert.load_weights


def _flax_features(name, variables, x, pool="token", dtype=jnp.float32):
  model = EmbeddingModel(make_backbone(name, pool=pool, dtype=dtype), 8, uncertainty=False)
  init = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *x.shape[1:])))
  merged = convert.load_into(init, variables, name)
  return np.asarray(jax.jit(model.apply)(merged, jnp.asarray(x))["features"])


def _images(size=224, n=2, seed=0):
  return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def _save(sd, path):
  if str(path).endswith(".safetensors"):
    safetensors_numpy.save_file({k: v.detach().numpy().copy() for k, v in sd.items()},
                                str(path))
  elif str(path).endswith(".npz"):
    np.savez(str(path), **sd)
  else:
    torch.save(sd, str(path))
  return str(path)


def _assert_close(got, want, tol=1e-4):
  err = np.abs(got - want).max()
  assert err <= tol, f"max |flax - torch| = {err:.2e}"


@pytest.mark.parametrize("old, new", [(37, 16), (14, 16), (14, 24), (7, 5), (4, 2)])
def test_pos_embed_resampling_is_torch_bicubic_antialiased(old, new):
  import torch.nn.functional as F
  pos = np.random.default_rng(old).standard_normal((1, 1 + old * old, 6)).astype(np.float32)
  grid = torch.from_numpy(pos[:, 1:]).reshape(1, old, old, 6).permute(0, 3, 1, 2)
  want = F.interpolate(grid, size=(new, new), mode="bicubic", antialias=True)
  want = want.permute(0, 2, 3, 1).reshape(1, -1, 6).numpy()
  got = vit.resample_pos_embed(pos, new, num_prefix_tokens=1)
  np.testing.assert_array_equal(got[:, :1], pos[:, :1])
  np.testing.assert_allclose(got[:, 1:], want, atol=2e-6)
  if old != new:  # torch's non-antialiased bicubic (a = -0.75) is another filter.
    plain = F.interpolate(grid, size=(new, new), mode="bicubic", antialias=False)
    assert np.abs(plain.permute(0, 2, 3, 1).reshape(1, -1, 6).numpy() - got[:, 1:]).max() > 1e-2


@pytest.mark.parametrize("name", ["test_vit_s16", "test_dinov2_reg", "test_clip"])
def test_converted_timm_safetensors_match_pytorch_at_224(name, tmp_path):
  model = _torch_model(name)
  path = _save(model.state_dict(), tmp_path / "model.safetensors")
  x = _images()
  _assert_close(_flax_features(name, _weights(path, name), x), _torch_features(model, x))


def test_average_pooling_and_a_written_checkpoint_match_pytorch(tmp_path):
  name = "test_dinov2"
  model = _torch_model(name, global_pool="avg")
  path = _save(model.state_dict(), tmp_path / "w.pth")
  convert.main([path, str(tmp_path / "ckpt"), "--backbone", name])
  variables = convert.load_weights(str(tmp_path / "ckpt"), name)  # Stored at the file's 37 × 37.
  assert variables["params"]["pos_embed"].shape == (1, 1 + 37 * 37, 64)
  x = _images()
  _assert_close(_flax_features(name, variables, x, pool="avg"), _torch_features(model, x))


def test_dinov2_release_layout_folds_the_class_position(tmp_path):
  """facebookresearch/dinov2's file: register_tokens, mask_token, pos_embed with a class
  entry that timm folds into the class token."""
  name = "test_dinov2_reg"
  model = _torch_model(name, seed=3)
  sd = torch_vit.to_dinov2_original(model.state_dict())
  shift = torch.randn(1, 1, 64)
  sd["cls_token"] = sd["cls_token"] - shift  # The release: cls_o + pos_o[0] = timm's cls.
  sd["pos_embed"][:, :1] = shift
  path = _save(sd, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
  x = _images(seed=1)
  _assert_close(_flax_features(name, _weights(path, name), x), _torch_features(model, x))


def test_openai_clip_layout_matches_pytorch(tmp_path):
  name = "test_clip"
  model = _torch_model(name, seed=4)
  path = _save(torch_vit.to_openai_clip(model.state_dict()), tmp_path / "clip.pth")
  x = _images(seed=2)
  _assert_close(_flax_features(name, _weights(path, name), x), _torch_features(model, x))


@pytest.mark.parametrize("big_vision, stacked", [(False, False), (True, False), (True, True)])
def test_google_npz_layouts_match_pytorch(tmp_path, big_vision, stacked):
  name = "test_vit_s16"
  model = _torch_model(name, seed=5)
  if big_vision:  # big_vision gives the class token no position.
    with torch.no_grad():
      model.pos_embed[:, 0] = 0
  w = torch_vit.to_npz(model.state_dict(), depth=2, heads=2, big_vision=big_vision,
                       stacked=stacked)
  if not big_vision:
    w = {f"opt/target/{k}": v for k, v in w.items()} | {"opt/state/step": np.zeros(())}
  path = _save(w, tmp_path / "S_16.npz")
  x = _images(seed=3)
  _assert_close(_flax_features(name, _weights(path, name), x), _torch_features(model, x))


def test_dino_training_checkpoint_takes_the_teacher_backbone(tmp_path):
  name = "test_vit_s16"
  model = _torch_model(name, seed=6)
  teacher = {f"backbone.{k}": v for k, v in model.state_dict().items() if "head" not in k}
  teacher["head.mlp.0.weight"] = torch.zeros(3, 3)
  path = _save({"student": {"backbone.cls_token": torch.zeros(1)}, "teacher": teacher,
                "epoch": 100}, tmp_path / "checkpoint.pth")
  x = _images(seed=4)
  _assert_close(_flax_features(name, _weights(path, name), x), _torch_features(model, x))


def test_bfloat16_compute_keeps_float32_parameters_and_features(tmp_path):
  name = "test_vit_s16"
  model = _torch_model(name)
  variables = convert.load_weights(_save(model.state_dict(), tmp_path / "w.safetensors"), name)
  x = _images()
  want = _torch_features(model, x)
  got = _flax_features(name, variables, x, dtype=jnp.bfloat16)
  assert got.dtype == np.float32
  assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))


def test_a_file_for_another_variant_names_what_does_not_fit(tmp_path):
  plain = _save(_torch_model("test_vit_s16").state_dict(), tmp_path / "vit.safetensors")
  with pytest.raises(ValueError, match=r"missing \(2\): \['norm_pre.bias', 'norm_pre.weight'\]"
                     r"[\s\S]*unexpected \(1\): \['patch_embed.proj.bias'\]"):
    convert.load_weights(plain, "test_clip")
  with pytest.raises(ValueError, match=r"shape mismatches \(\d+\).*pos_embed|square grid"):
    convert.load_weights(plain, "test_dinov2_reg")


def test_image_size_must_be_a_multiple_of_the_patch():
  model = make_backbone("test_vit_s16")
  with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 40, 40, 3)))


def test_every_registered_vit_builds_with_its_published_parameter_count():
  """Parameter counts of timm's models without their heads (timm's model cards)."""
  published = {"vit_s16": 21.67e6, "dino_vitb16": 85.80e6, "dinov2_vits14": 22.06e6,
               "dinov2_vitb14_reg": 86.58e6, "clip_vitb16": 85.80e6}
  for name, count in published.items():
    size = models.get_backbone(name).vit.weights_image_size
    shapes = jax.eval_shape(make_backbone(name).init, jax.random.PRNGKey(0),
                            jnp.zeros((1, size, size, 3)))
    n = sum(x.size for x in jax.tree.leaves(shapes))
    assert abs(n - count) / count < 0.005, (name, n)


def test_variants_are_distinct_where_the_weights_differ():
  v = vit.VARIANTS
  assert v["dinov2_vits14_reg"] == dataclasses.replace(v["dinov2_vits14"], reg_tokens=4,
                                                        no_embed_class=True)
  assert v["clip_vitb16"].act == "quick_gelu" and v["clip_vitb16"].pre_norm
  assert v["vit_s16"] == v["deit_s16"] == v["dino_vits16"]


def test_vit_recipe_trains_and_evaluates_on_a_converted_timm_checkpoint(tmp_path):
  """``configs/vit.py:cub,idml_pa,dino_vits16,runlocal`` (-> ``vit_tiny``) on a miniature
  CUB folder, from a random timm-layout file whose 8 × 8 grid (64 px) is resampled to the
  run's 4 × 4 (32 px)."""
  from conftest import load_config, write_cub

  from idml_jax.train import loop, state
  torch.manual_seed(0)
  v = vit.VARIANTS["vit_tiny"]
  model = torch_vit.randomize(torch_vit.ViT(img_size=64, patch_size=v.patch, embed_dim=v.width,
                                            depth=v.depth, num_heads=v.heads))
  weights = _save(model.state_dict(), tmp_path / "model.safetensors")
  convert.main([weights, str(tmp_path / "vit_tiny"), "--backbone", "vit_tiny"])
  c = load_config("vit.py", "cub,idml_pa,dino_vits16,runlocal")
  c.data.data_dir = write_cub(tmp_path / "data")
  c.model.pretrained = str(tmp_path / "vit_tiny")
  assert (c.model.backbone, c.model.pooling, c.model.head_bias) == ("vit_tiny", "token", False)
  from idml_jax import tasks
  task = tasks.get_task(c)
  flax_model = state.make_model(task)
  import optax
  init = state.init_state(task, flax_model, optax.identity(), num_classes=8)
  want = vit.resample_pos_embed(model.pos_embed.detach().numpy(), 4, 1)
  np.testing.assert_allclose(init.params["model"]["backbone"]["pos_embed"], want, atol=1e-6)
  assert "bias" not in init.params["model"]["semantic"]
  results = loop.train_and_evaluate(c, str(tmp_path / "run"))
  assert 0.0 <= results["final"]["recall@1"] <= 1.0 and np.isfinite(results["final"]["map@r"])
  assert results["final"]["uncertainty_mean"] > 0


def test_a_vit_from_scratch_trains_and_warns_about_no_batch_norm_mode(caplog):
  """ViTs have no BatchNorm: ``model.batch_norm`` (auto -> train without weights) must
  neither reach the backbone nor warn about frozen statistics."""
  import jax
  from conftest import tiny

  from idml_jax import config as config_lib
  from idml_jax.train.steps import Steps, make_mesh, to_global
  c = tiny(method="idml", loss="proxy_anchor", model__backbone="vit_tiny",
           model__pooling="token")
  assert config_lib.batch_norm_mode(c) == "none"
  steps = Steps.build(c, 5, 10, make_mesh(jax.devices()[:1]))
  images = np.random.default_rng(0).integers(0, 255, (16, 16, 16, 3), dtype=np.uint8)
  batch = to_global(steps.mesh, {"image": images,
                                 "label": np.repeat(np.arange(4), 4).astype(np.int32)})
  _, m = steps.train_step(steps.fresh_state(), batch, steps.method.plan(0),
                          train_backbone=True)
  assert np.isfinite(float(m["loss"]))
  from idml_jax.train import loop
  with caplog.at_level("WARNING"):
    loop._warn_about_weights(c)
  assert "BatchNorm" not in caplog.text
