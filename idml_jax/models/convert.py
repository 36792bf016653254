"""Pretrained weights: PyTorch state dicts and ``.npz`` files -> Flax variable trees.

    python -m idml_jax.models.convert resnet50-0676ba61.pth weights/resnet50 --backbone resnet50
    python -m idml_jax.models.convert model.safetensors weights/dino_vits16 --backbone dino_vits16

reads a torchvision/timm/Cadene state dict (``.pth`` needs torch, an optional extra;
``.safetensors`` and ``.npz`` do not), maps every tensor onto the Flax backbone's parameters
and BatchNorm statistics (conv OIHW -> HWIO, Linear (out, in) -> (in, out), BN weight/bias ->
scale/bias, running mean/var -> batch statistics), validates names and shapes, and writes an
orbax checkpoint ``{"params", "batch_stats"}`` that a config names as ``pretrained``.
Classifier heads (``fc``, ``last_linear``, ``aux1``/``aux2``, ``head``) and
``num_batches_tracked`` are dropped; a leading ``module.`` (DataParallel) is stripped. ViT
layouts (timm, DINO, DINOv2, CLIP, Google's ``.npz``) go through
:mod:`idml_jax.models.vit_weights`; a ViT keeps its file's position grid, resampled to the
training resolution by :func:`load_into`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from idml_jax.models import get_backbone, make_backbone, vit, vit_weights

IGNORED_PREFIXES = ("fc.", "last_linear.", "aux1.", "aux2.", "classifier.")
_INPUT_SIZE = 224
# Training checkpoints that hold the weights one level down: timm/torchvision (state_dict),
# DeiT (model), DINO (teacher).
_NESTED = ("state_dict", "model", "teacher")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads ``.pth``/``.pt`` (via torch), ``.safetensors`` or ``.npz`` into float32 arrays."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"No weight file at {path!r}. Download the backbone's weights "
                            "(see README, 'Pretrained weights') and pass their path.")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    sd = load_file(path)
  elif path.endswith(".npz"):
    with np.load(path) as f:
      sd = {k: f[k] for k in f.files}
  else:
    try:
      import torch
    except ImportError as e:
      raise ImportError("Reading .pth files needs torch: `pip install -e .[torch]`, or convert "
                        "the file to .safetensors elsewhere.") from e
    obj = torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(obj, Mapping) and (inner := next((k for k in _NESTED if k in obj), None)):
      obj = obj[inner]
    sd = {k: v.float().numpy() for k, v in obj.items() if hasattr(v, "numpy")}
  return {k: np.asarray(v, np.float32) for k, v in sd.items()}


def _canonical(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops ``num_batches_tracked`` and a DataParallel ``module.`` prefix."""
  return {k.removeprefix("module."): np.asarray(v) for k, v in state_dict.items()
          if not k.endswith("num_batches_tracked")}


def _torch_name(backbone: str, collection: str, path: tuple[str, ...], ndim: int
                ) -> tuple[str, str]:
  """A Flax variable path -> (PyTorch tensor name, transform)."""
  if get_backbone(backbone).vit:
    return vit_weights.flax_to_timm(path, ndim)
  name, how = _flax_leaf(collection, path[-1], ndim)
  return f"{_torch_module(backbone, path[:-1])}.{name}", how


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


def backbone_shapes(backbone: str, image_size: int = _INPUT_SIZE) -> dict:
  """The Flax backbone's variable tree of ``ShapeDtypeStruct``s (a ViT's position grid is
  ``image_size`` / patch)."""
  model = make_backbone(backbone)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0),
                        jnp.zeros((1, image_size, image_size, 3)))


def convert(state_dict: Mapping[str, np.ndarray], backbone: str) -> dict:
  """Maps a state dict onto the Flax backbone's ``{"params", "batch_stats"}``.

  Raises:
    ValueError: naming every missing key, unexpected key and shape mismatch.
  """
  state_dict = _canonical(state_dict)
  variant = get_backbone(backbone).vit
  size, ignored = _INPUT_SIZE, IGNORED_PREFIXES
  if variant:
    state_dict = vit_weights.to_timm(state_dict, variant)
    size, ignored = vit_weights.image_size_of(state_dict, variant), vit_weights.IGNORED_PREFIXES
  shapes = flax.core.unfreeze(backbone_shapes(backbone, size))
  used, missing, mismatched = set(), [], []
  out = {}
  for collection in ("params", "batch_stats"):
    flat = flax.traverse_util.flatten_dict(shapes.get(collection, {}))
    converted = {}
    for path, spec in flat.items():
      key, how = _torch_name(backbone, collection, path, len(spec.shape))
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
    if flat:  # ViTs have no batch_stats.
      out[collection] = flax.traverse_util.unflatten_dict(converted)
  unexpected = sorted(k for k in state_dict if k not in used and not k.startswith(ignored))
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


def load_weights(path: str, backbone: str) -> dict:
  """Backbone variables from an orbax checkpoint written by :func:`save`, or converted on
  the fly from a ``.pth``/``.safetensors``/``.npz`` file."""
  if os.path.isfile(path):
    return convert(read_state_dict(path), backbone)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"No pretrained weights at {path!r}: convert them first with "
                            "`python -m idml_jax.models.convert FILE "
                            f"{path} --backbone {backbone}`.")
  import orbax.checkpoint as ocp
  ckpt = ocp.StandardCheckpointer()
  size, variant = _INPUT_SIZE, get_backbone(backbone).vit
  if variant:  # The grid the weights were converted at.
    stored = ckpt.metadata(os.path.abspath(path)).item_metadata.tree
    pos = stored.get("params", {}).get("pos_embed")
    size = (variant.weights_image_size if pos is None
            else vit.grid_of(variant, tuple(pos.shape)) * variant.patch)
  target = flax.core.unfreeze(backbone_shapes(backbone, size))
  target = {k: target[k] for k in ("params", "batch_stats") if k in target}
  return ckpt.restore(os.path.abspath(path), target)


def load_into(variables: dict, pretrained: dict, backbone: str | None = None) -> dict:
  """Replaces ``variables[...]["backbone"]`` with pretrained backbone variables, checking
  that every name and shape agrees; a ViT's position embedding is resampled to the model's
  grid (``backbone`` names the ViT)."""
  variables = flax.core.unfreeze(variables)
  variant = get_backbone(backbone).vit if backbone else None
  if variant and "pos_embed" in pretrained.get("params", {}):
    params = dict(pretrained["params"])
    want = variables["params"]["backbone"]["pos_embed"].shape
    if params["pos_embed"].shape != want:
      new_grid = vit.grid_of(variant, want)
      params["pos_embed"] = jnp.asarray(vit.resample_pos_embed(
          np.asarray(params["pos_embed"]), new_grid, variant.pos_prefix_tokens))
    pretrained = {**pretrained, "params": params}
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
