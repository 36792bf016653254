"""ViT weight layouts -> timm's names and shapes, and timm's names -> the Flax tree.

Every file is first brought to timm's state-dict layout (what timm's own checkpoint filters
do), then mapped name for name onto :mod:`idml_jax.models.vit` by :func:`flax_to_timm`:

- timm (``.safetensors`` from the hub or ``.pth``): as is.
- The original DINO (``dino_deitsmall16_pretrain.pth``, the ``dino_vits16`` hub model): timm's
  names already; a full training checkpoint's ``teacher`` (``backbone.*``) is taken.
- The original DINOv2 (``dinov2_vits14_pretrain.pth``): ``mask_token`` dropped; with
  registers, ``register_tokens`` -> ``reg_token`` and the class position folded into the class
  token (timm's ``no_embed_class`` form: ``cls + pos[0]``, then the patches' positions only).
- OpenAI / open_clip CLIP (``visual.*``): ``conv1``, ``ln_pre``, ``transformer.resblocks``,
  ``in_proj``, ``ln_post`` renamed; the projection ``proj`` dropped.
- Google's ``.npz`` (original ViT / augreg ``Transformer/encoderblock_N/...``, optionally
  under ``opt/target/``; big_vision ``params/...``, per block or scan-stacked
  ``Transformer/encoderblock/...``): q, k, v kernels [D, heads, head_dim] fused into ``qkv``,
  ``out`` [heads, head_dim, D] into ``proj``. big_vision's position embedding has no class
  entry (the class token gets no position): a zero class position is added when the
  variant has one, which is the same function.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from idml_jax.models.vit import ViTVariant, grid_of

IGNORED_PREFIXES = ("head.", "head_drop.", "pre_logits.")


def flax_to_timm(path: tuple[str, ...], ndim: int) -> tuple[str, str]:
  """A Flax parameter path -> (timm tensor name, transform: ``same`` | ``dense`` | ``conv``)."""
  *modules, leaf = path
  if not modules:  # cls_token, reg_token, pos_embed
    return leaf, "same"
  modules = ["patch_embed.proj" if m == "patch_embed" else m.replace("blocks_", "blocks.")
             for m in modules]
  name = ".".join(modules) + "." + {"kernel": "weight", "scale": "weight", "bias": "bias",
                                    "gamma": "gamma"}[leaf]
  how = ("conv" if ndim == 4 else "dense") if leaf == "kernel" else "same"
  return name, how


def image_size_of(state_dict: Mapping[str, np.ndarray], variant: ViTVariant) -> int:
  """The image size a timm-layout state dict's position grid is for."""
  if "pos_embed" not in state_dict:
    return variant.weights_image_size
  return grid_of(variant, state_dict["pos_embed"].shape) * variant.patch


def to_timm(state_dict: Mapping[str, np.ndarray], variant: ViTVariant) -> dict[str, np.ndarray]:
  """Any supported layout (module docstring) -> timm's state-dict layout."""
  sd = dict(state_dict)
  if any("/" in k for k in sd):
    return _from_npz(sd, variant)
  if any(k.startswith("backbone.") for k in sd):  # DINO's training checkpoint (teacher)
    sd = {k.removeprefix("backbone."): v for k, v in sd.items()}
  for prefix in ("module.visual.", "visual."):
    if f"{prefix}class_embedding" in sd:
      return _from_openai_clip(sd, prefix)
  if "mask_token" in sd or "register_tokens" in sd or any(".mlp.w12." in k for k in sd):
    return _from_dinov2(sd)
  return sd


def _from_dinov2(sd: dict) -> dict:
  sd.pop("mask_token", None)
  if "register_tokens" in sd:
    sd["reg_token"] = sd.pop("register_tokens")
    sd["cls_token"] = sd["cls_token"] + sd["pos_embed"][:, :1]
    sd["pos_embed"] = sd["pos_embed"][:, 1:]
  return {re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", k)): v
          for k, v in sd.items()}


_CLIP_SWAPS = (("conv1", "patch_embed.proj"), ("positional_embedding", "pos_embed"),
               ("transformer.resblocks.", "blocks."), ("ln_pre", "norm_pre"),
               ("ln_post", "norm"), ("ln_", "norm"), ("in_proj_", "qkv."),
               ("out_proj", "proj"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))


def _from_openai_clip(sd: dict, prefix: str) -> dict:
  out = {}
  for k, v in sd.items():
    if not k.startswith(prefix):
      continue  # The text tower.
    k = k.removeprefix(prefix)
    for a, b in _CLIP_SWAPS:
      k = k.replace(a, b)
    if k == "proj":
      continue  # The image -> joint-space projection: a head.
    if k == "class_embedding":
      k, v = "cls_token", v.reshape(1, 1, -1)
    elif k == "pos_embed":
      v = v[None]
    out[k] = v
  return out


def _from_npz(w: dict, variant: ViTVariant) -> dict:
  """timm's ``_load_weights`` as a state-dict conversion; keys it cannot find are reported
  as missing by the caller, keys it does not use as unexpected."""
  prefix, big_vision = "", False
  if "opt/target/embedding/kernel" in w:
    prefix = "opt/target/"
  elif "params/embedding/kernel" in w:
    prefix, big_vision = "params/", True
  elif "params/img/embedding/kernel" in w:
    prefix, big_vision = "params/img/", True
  used: set[str] = set()
  out: dict[str, np.ndarray] = {}

  def take(key, idx=None):
    key = prefix + key
    if key not in w:
      return None
    used.add(key)
    v = np.asarray(w[key])
    return v[idx] if idx is not None else v

  def put(name, value):
    if value is not None:
      out[name] = value

  kernel = take("embedding/kernel")
  put("patch_embed.proj.weight", None if kernel is None else kernel.transpose(3, 2, 0, 1))
  put("patch_embed.proj.bias", take("embedding/bias"))
  put("cls_token", take("cls"))
  pos = take("pos_embedding") if big_vision else take("Transformer/posembed_input/pos_embedding")
  if pos is not None and big_vision and not variant.no_embed_class:
    pos = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)  # No class position.
  put("pos_embed", pos)
  put("norm.weight", take("Transformer/encoder_norm/scale"))
  put("norm.bias", take("Transformer/encoder_norm/bias"))
  mha, mlp, ln2 = (0, 0, 1) if big_vision else (1, 3, 2)
  stacked = f"{prefix}Transformer/encoderblock/LayerNorm_0/scale" in w
  for i in range(variant.depth):
    block, idx = (("Transformer/encoderblock/", i) if stacked
                  else (f"Transformer/encoderblock_{i}/", None))
    t = f"blocks.{i}."
    att = f"{block}MultiHeadDotProductAttention_{mha}/"
    for src, dst in (("LayerNorm_0", "norm1"), (f"LayerNorm_{ln2}", "norm2")):
      put(f"{t}{dst}.weight", take(f"{block}{src}/scale", idx))
      put(f"{t}{dst}.bias", take(f"{block}{src}/bias", idx))
    qkv = [take(f"{att}{n}/kernel", idx) for n in ("query", "key", "value")]
    if all(q is not None for q in qkv):
      out[f"{t}attn.qkv.weight"] = np.concatenate([q.reshape(q.shape[0], -1).T for q in qkv])
    qkv_b = [take(f"{att}{n}/bias", idx) for n in ("query", "key", "value")]
    if all(b is not None for b in qkv_b):
      out[f"{t}attn.qkv.bias"] = np.concatenate([b.reshape(-1) for b in qkv_b])
    o = take(f"{att}out/kernel", idx)
    put(f"{t}attn.proj.weight", None if o is None else o.reshape(-1, o.shape[-1]).T)
    put(f"{t}attn.proj.bias", take(f"{att}out/bias", idx))
    for r in range(2):
      k = take(f"{block}MlpBlock_{mlp}/Dense_{r}/kernel", idx)
      put(f"{t}mlp.fc{r + 1}.weight", None if k is None else k.T)
      put(f"{t}mlp.fc{r + 1}.bias", take(f"{block}MlpBlock_{mlp}/Dense_{r}/bias", idx))
  if stacked and (depth := w[f"{prefix}Transformer/encoderblock/LayerNorm_0/scale"].shape[0]) \
      != variant.depth:
    out[f"npz:Transformer/encoderblock (scan-stacked, {depth} blocks)"] = np.zeros(depth)
  for key in w:  # Left over under the prefix (not the head): reported as unexpected.
    rest = key.removeprefix(prefix)
    if key.startswith(prefix) and key not in used and not rest.startswith(
        ("head/", "pre_logits/", "MAPHead")):
      if not stacked or not rest.startswith("Transformer/encoderblock/"):
        out[f"npz:{rest}"] = np.asarray(w[key])
  return out
