"""Pretrained weights: PyTorch state dicts -> Flax variable trees, and loading them.

    python -m idml_jax.models.convert resnet50-0676ba61.pth weights/resnet50 --backbone resnet50

reads a torchvision/timm/Cadene state dict (``.pth`` needs torch, an optional extra;
``.safetensors`` does not), maps every tensor onto the Flax backbone's parameters and
BatchNorm statistics (conv OIHW -> HWIO, BN weight/bias -> scale/bias, running
mean/var -> batch statistics), validates names and shapes, and writes an orbax
checkpoint ``{"params", "batch_stats"}`` that a config names as ``pretrained``.
Classifier heads (``fc``, ``last_linear``, ``aux1``/``aux2``) and ``num_batches_tracked``
are dropped; a leading ``module.`` (DataParallel) is stripped.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from idml_jax.models import make_backbone

IGNORED_PREFIXES = ("fc.", "last_linear.", "aux1.", "aux2.", "classifier.")
_INPUT_SIZE = 224


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads ``.pth``/``.pt`` (via torch) or ``.safetensors`` into float32 NumPy arrays."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"No weight file at {path!r}. Download the backbone's weights "
                            "(see README, 'Pretrained weights') and pass their path.")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    sd = load_file(path)
  else:
    try:
      import torch
    except ImportError as e:
      raise ImportError("Reading .pth files needs torch: `pip install -e .[torch]`, or convert "
                        "the file to .safetensors elsewhere.") from e
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj:
      obj = obj["state_dict"]
    sd = {k: v.float().numpy() for k, v in obj.items() if hasattr(v, "numpy")}
  return {k: np.asarray(v, np.float32) for k, v in sd.items()}


def _canonical(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops ``num_batches_tracked`` and a DataParallel ``module.`` prefix."""
  return {k.removeprefix("module."): np.asarray(v) for k, v in state_dict.items()
          if not k.endswith("num_batches_tracked")}


def _torch_module(backbone: str, path: tuple[str, ...]) -> str:
  """Flax module path -> PyTorch module name (``layer1_0/conv1`` -> ``layer1.0.conv1``)."""
  if backbone == "bn_inception":  # Flat, underscores are part of the names.
    return ".".join(path)
  return ".".join(p.replace("_", ".") for p in path)


def _flax_leaf(collection: str, leaf: str, ndim: int) -> tuple[str, str]:
  """(collection, Flax leaf name) -> (PyTorch tensor name, transform)."""
  if collection == "batch_stats":
    return {"mean": "running_mean", "var": "running_var"}[leaf], "same"
  if leaf == "kernel":
    return "weight", "conv" if ndim == 4 else "dense"
  return {"scale": "weight", "bias": "bias"}[leaf], "same"


def _transform(x: np.ndarray, how: str, shape: tuple[int, ...]) -> np.ndarray:
  if how == "conv":
    x = np.transpose(x, (2, 3, 1, 0))  # OIHW -> HWIO: a transpose, never a reshape.
  elif how == "dense":
    x = x.T
  elif x.shape != shape and x.size == int(np.prod(shape)) and x.squeeze().shape == shape:
    x = x.reshape(shape)  # Cadene's BN-Inception stores BN tensors as [1, C].
  return x


def backbone_shapes(backbone: str) -> dict:
  """The Flax backbone's variable tree of ``ShapeDtypeStruct``s."""
  model = make_backbone(backbone)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0),
                        jnp.zeros((1, _INPUT_SIZE, _INPUT_SIZE, 3)))


def convert(state_dict: Mapping[str, np.ndarray], backbone: str) -> dict:
  """Maps a PyTorch state dict onto the Flax backbone's ``{"params", "batch_stats"}``.

  Raises:
    ValueError: naming every missing key, unexpected key and shape mismatch.
  """
  state_dict = _canonical(state_dict)
  shapes = flax.core.unfreeze(backbone_shapes(backbone))
  used, missing, mismatched = set(), [], []
  out = {}
  for collection in ("params", "batch_stats"):
    flat = flax.traverse_util.flatten_dict(shapes.get(collection, {}))
    converted = {}
    for path, spec in flat.items():
      name, how = _flax_leaf(collection, path[-1], len(spec.shape))
      key = f"{_torch_module(backbone, path[:-1])}.{name}"
      if key not in state_dict:
        missing.append(key)
        continue
      used.add(key)
      value = _transform(state_dict[key], how, tuple(spec.shape))
      if value.shape != tuple(spec.shape):
        mismatched.append(f"{key}: file {state_dict[key].shape} -> {value.shape}, "
                          f"model expects {tuple(spec.shape)}")
        continue
      converted[path] = jnp.asarray(value)
    out[collection] = flax.traverse_util.unflatten_dict(converted)
  unexpected = sorted(k for k in state_dict if k not in used and not k.startswith(IGNORED_PREFIXES))
  if missing or unexpected or mismatched:
    raise ValueError(
        f"State dict does not match backbone {backbone!r}:\n"
        f"  missing ({len(missing)}): {missing[:20]}\n"
        f"  unexpected ({len(unexpected)}): {unexpected[:20]}\n"
        f"  shape mismatches ({len(mismatched)}): {mismatched[:20]}\n"
        "Is this the right --backbone for this file?")
  return out


def save(variables: dict, directory: str) -> None:
  """Writes ``{"params", "batch_stats"}`` as an orbax checkpoint (overwrites)."""
  import orbax.checkpoint as ocp
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(os.path.abspath(directory), variables, force=True)
  ckpt.wait_until_finished()


def load(path: str, backbone: str) -> dict:
  """Backbone variables from an orbax checkpoint written by :func:`save`, or converted on
  the fly from a ``.pth``/``.safetensors`` file."""
  if os.path.isfile(path):
    return convert(read_state_dict(path), backbone)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"No pretrained weights at {path!r}: convert them first with "
                            "`python -m idml_jax.models.convert FILE "
                            f"{path} --backbone {backbone}`.")
  import orbax.checkpoint as ocp
  target = flax.core.unfreeze(backbone_shapes(backbone))
  target = {k: target[k] for k in ("params", "batch_stats") if k in target}
  return ocp.StandardCheckpointer().restore(os.path.abspath(path), target)


def load_into(variables: dict, pretrained: dict) -> dict:
  """Replaces ``variables[...]["backbone"]`` with pretrained backbone variables, checking
  that every name and shape agrees."""
  variables = flax.core.unfreeze(variables)
  for collection, tree in pretrained.items():
    current = variables[collection]["backbone"]
    a = {k: v.shape for k, v in flax.traverse_util.flatten_dict(current).items()}
    b = {k: v.shape for k, v in flax.traverse_util.flatten_dict(tree).items()}
    if a != b:
      diff = sorted(set(a.items()) ^ set(b.items()))[:10]
      raise ValueError(f"Pretrained {collection} do not fit the model's backbone: {diff}")
    variables[collection]["backbone"] = tree
  return variables


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("input", help=".pth / .pt / .safetensors state dict")
  parser.add_argument("output", help="directory for the orbax checkpoint")
  parser.add_argument("--backbone", required=True, help="resnet18/34/50/101, bn_inception, ...")
  args = parser.parse_args(argv)
  variables = convert(read_state_dict(args.input), args.backbone)
  save(variables, args.output)
  n = sum(x.size for x in jax.tree.leaves(variables))
  print(f"Wrote {args.backbone} ({n:,} values) to {args.output}")


if __name__ == "__main__":
  main()
