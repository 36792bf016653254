"""Pretrained-weight conversion: Flax backbones reproduce PyTorch's pooled features.

A randomly initialised PyTorch network with the published layer names is saved as
``.pth`` (and ``.safetensors``), converted, and both forward passes are compared on
random 224×224 and 64×64 inputs (even sizes expose padding mistakes).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch_reference = pytest.importorskip("torch_reference")

from idml_jax.models import convert, make_backbone, pool_features  # noqa: E402

CASES = {
    "resnet18": torch_reference.resnet18,
    "resnet50": torch_reference.resnet50,
    "bn_inception": torch_reference.BNInception,
    "googlenet": torch_reference.GoogLeNet,
    "cnn_small": torch_reference.SmallCNN,  # A PyTorch user's own network, block1.conv1, ...
}


def _torch_features(model, x_nhwc):
  with torch.no_grad():
    f = model.features(torch.from_numpy(np.transpose(x_nhwc, (0, 3, 1, 2))))
  return (f.mean((2, 3)) + f.amax((2, 3))).numpy()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """name -> (torch model, Flax variables loaded from the orbax checkpoint)."""
  out = {}
  for name, make in CASES.items():
    torch.manual_seed(0)
    model = make().eval()
    torch_reference.randomize_batch_norm(model)
    d = tmp_path_factory.mktemp(name)
    path = str(d / f"{name}.pth")
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)  # DataParallel.
    convert.main([path, str(d / "ckpt"), "--backbone", name])
    out[name] = (model, convert.load_weights(str(d / "ckpt"), name))
  return out


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("size", [224, 64])
def test_pooled_features_match_pytorch(converted, name, size):
  model, variables = converted[name]
  x = np.random.default_rng(size).standard_normal((2, size, size, 3)).astype(np.float32)
  flax_model = make_backbone(name)
  got = pool_features(jax.jit(flax_model.apply)(variables, jnp.asarray(x)))
  want = _torch_features(model, x)
  scale = max(1.0, float(np.abs(want).max()))
  assert np.abs(np.asarray(got) - want).max() <= 1e-4 * scale


def test_safetensors_needs_no_torch_and_gives_the_same_tree(tmp_path):
  safetensors_torch = pytest.importorskip("safetensors.torch")
  torch.manual_seed(1)
  model = torch_reference.resnet18().eval()
  safetensors_torch.save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
  torch.save(model.state_dict(), str(tmp_path / "w.pth"))
  a = convert.load_weights(str(tmp_path / "w.safetensors"), "resnet18")
  b = convert.load_weights(str(tmp_path / "w.pth"), "resnet18")
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_wrong_file_names_every_missing_and_unexpected_key(tmp_path):
  torch.save(torch_reference.resnet18().state_dict(), str(tmp_path / "r18.pth"))
  with pytest.raises(ValueError, match=r"missing \(\d+\).*layer1\.0\.conv3\.weight"):
    convert.load_weights(str(tmp_path / "r18.pth"), "resnet50")


def test_load_into_embedding_model(converted):
  from idml_jax.models import EmbeddingModel
  model = EmbeddingModel(make_backbone("resnet18"))
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  merged = convert.load_into(variables, converted["resnet18"][1])
  np.testing.assert_array_equal(merged["params"]["backbone"]["conv1"]["kernel"],
                                converted["resnet18"][1]["params"]["conv1"]["kernel"])
  with pytest.raises(ValueError, match="do not fit"):
    convert.load_into(variables, converted["resnet50"][1])
