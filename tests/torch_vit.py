"""A PyTorch Vision Transformer with timm's module names, the reference for models/vit.py.

Written from timm's ``VisionTransformer`` (timm may not import here): the state dict of
``ViT(...)`` has exactly the names and shapes of timm's checkpoints for the same
arguments, and ``forward`` is timm's ``forward_features`` + token / average pooling, with
the position embedding resampled as timm's ``resample_abs_pos_embed`` when the input's
grid differs from the weights' (``dynamic_img_size``).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, t, d = x.shape
    qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # [B, heads, T, head_dim]
    attn = (q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)).softmax(-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class LayerScale(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

  def forward(self, x):
    return x * self.gamma


class QuickGELU(nn.Module):
  def forward(self, x):
    return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
  def __init__(self, dim, hidden, act):
    super().__init__()
    self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), act(), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  def __init__(self, dim, heads, mlp_ratio, layer_scale, act, eps):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=eps)
    self.attn = Attention(dim, heads)
    self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
    self.norm2 = nn.LayerNorm(dim, eps=eps)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), act)
    self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()

  def forward(self, x):
    x = x + self.ls1(self.attn(self.norm1(x)))
    return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
  def __init__(self, patch, dim, bias):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, patch, patch, bias=bias)


class ViT(nn.Module):
  def __init__(self, img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6,
               mlp_ratio=4.0, reg_tokens=0, no_embed_class=False, pre_norm=False,
               init_values=None, act="gelu", eps=1e-6, global_pool="token"):
    super().__init__()
    self.patch, self.no_embed_class, self.global_pool = patch_size, no_embed_class, global_pool
    self.num_prefix_tokens = 1 + reg_tokens
    self.patch_embed = PatchEmbed(patch_size, embed_dim, bias=not pre_norm)
    self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
    self.reg_token = nn.Parameter(torch.randn(1, reg_tokens, embed_dim) * 0.02) \
        if reg_tokens else None
    grid = img_size // patch_size
    n_pos = grid * grid + (0 if no_embed_class else self.num_prefix_tokens)
    self.pos_embed = nn.Parameter(torch.randn(1, n_pos, embed_dim) * 0.02)
    self.norm_pre = nn.LayerNorm(embed_dim, eps=eps) if pre_norm else nn.Identity()
    act_layer = {"gelu": nn.GELU, "quick_gelu": QuickGELU}[act]
    self.blocks = nn.Sequential(*[
        Block(embed_dim, num_heads, mlp_ratio, init_values is not None, act_layer, eps)
        for _ in range(depth)])
    self.norm = nn.LayerNorm(embed_dim, eps=eps)
    self.head = nn.Linear(embed_dim, 10)  # A classifier head, as timm's files carry.

  def _pos_embed(self, x):  # x: [B, D, gh, gw]
    b, d, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2)
    pos = self.pos_embed
    n_prefix = 0 if self.no_embed_class else self.num_prefix_tokens
    old = int(math.isqrt(pos.shape[1] - n_prefix))
    if old != gh:  # timm's resample_abs_pos_embed: bicubic, antialias=True.
      grid = pos[:, n_prefix:].reshape(1, old, old, d).permute(0, 3, 1, 2)
      grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", antialias=True)
      pos = torch.cat([pos[:, :n_prefix], grid.permute(0, 2, 3, 1).reshape(1, -1, d)], 1)
    prefix = [self.cls_token.expand(b, -1, -1)]
    if self.reg_token is not None:
      prefix.append(self.reg_token.expand(b, -1, -1))
    if self.no_embed_class:
      return torch.cat(prefix + [x + pos], dim=1)
    return torch.cat(prefix + [x], dim=1) + pos

  def forward(self, images):  # [B, 3, H, W] -> [B, D]
    x = self.norm(self.blocks(self.norm_pre(self._pos_embed(self.patch_embed.proj(images)))))
    return x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(1)


def randomize(model: ViT, seed: int = 0) -> ViT:
  """Non-trivial LayerNorm affines and LayerScales (1e-5 would hide the blocks)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "norm_pre.weight")):
        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
      elif "norm" in name and name.endswith("bias"):
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
      elif name.endswith("gamma"):
        p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=g))
  return model


def to_dinov2_original(state_dict: dict) -> dict:
  """timm's DINOv2-with-registers layout -> the facebookresearch/dinov2 release's: the
  class position back in ``pos_embed`` (here: zero, folded into ``cls_token`` by timm's
  filter, so cls + 0 = cls), ``register_tokens``, and a ``mask_token``."""
  sd = dict(state_dict)
  d = sd["cls_token"].shape[-1]
  sd["register_tokens"] = sd.pop("reg_token")
  sd["pos_embed"] = torch.cat([torch.zeros(1, 1, d), sd["pos_embed"]], 1)
  sd["mask_token"] = torch.zeros(1, d)
  return {k: v for k, v in sd.items() if not k.startswith("head.")}


def to_openai_clip(state_dict: dict) -> dict:
  """timm's CLIP layout -> OpenAI / open_clip's ``visual.*`` (with a text-tower key)."""
  out = {"token_embedding.weight": torch.zeros(4, 2)}
  for k, v in state_dict.items():
    if k.startswith("head."):
      continue
    k = (k.replace("patch_embed.proj", "conv1").replace("pos_embed", "positional_embedding")
         .replace("blocks.", "transformer.resblocks.").replace("norm_pre", "ln_pre")
         .replace("norm1", "ln_1").replace("norm2", "ln_2").replace("attn.qkv.", "attn.in_proj_")
         .replace("attn.proj", "attn.out_proj").replace("mlp.fc1", "mlp.c_fc")
         .replace("mlp.fc2", "mlp.c_proj"))
    if k == "norm.weight" or k == "norm.bias":
      k = k.replace("norm", "ln_post")
    if k == "cls_token":
      k, v = "class_embedding", v.reshape(-1)
    elif k == "positional_embedding":
      v = v[0]
    out[f"visual.{k}"] = v
  out["visual.proj"] = torch.zeros(state_dict["norm.weight"].shape[0], 8)
  return out


def to_npz(state_dict: dict, depth: int, heads: int, big_vision: bool = False,
           stacked: bool = False) -> dict:
  """timm's layout -> Google's ``.npz`` (original ViT, or big_vision's ``params/``; big_vision
  keeps no class position: ``pos_embed[:, 1:]``, exact when the class position is zero)."""
  sd = {k: v.detach().numpy() for k, v in state_dict.items()}
  d = sd["norm.weight"].shape[0]
  hd = d // heads
  p = "params/" if big_vision else ""
  mha, mlp, ln2 = (0, 0, 1) if big_vision else (1, 3, 2)
  out = {f"{p}embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         f"{p}embedding/bias": sd["patch_embed.proj.bias"], f"{p}cls": sd["cls_token"],
         f"{p}Transformer/encoder_norm/scale": sd["norm.weight"],
         f"{p}Transformer/encoder_norm/bias": sd["norm.bias"],
         f"{p}head/kernel": sd["head.weight"].T, f"{p}head/bias": sd["head.bias"]}
  if big_vision:
    out[f"{p}pos_embedding"] = sd["pos_embed"][:, 1:]
  else:
    out["Transformer/posembed_input/pos_embedding"] = sd["pos_embed"]
  blocks = []
  for i in range(depth):
    t = f"blocks.{i}."
    q, k, v = sd[t + "attn.qkv.weight"].reshape(3, d, d)
    qb, kb, vb = sd[t + "attn.qkv.bias"].reshape(3, d)
    att = f"MultiHeadDotProductAttention_{mha}/"
    blk = {"LayerNorm_0/scale": sd[t + "norm1.weight"], "LayerNorm_0/bias": sd[t + "norm1.bias"],
           f"LayerNorm_{ln2}/scale": sd[t + "norm2.weight"],
           f"LayerNorm_{ln2}/bias": sd[t + "norm2.bias"],
           f"{att}out/kernel": sd[t + "attn.proj.weight"].T.reshape(heads, hd, d),
           f"{att}out/bias": sd[t + "attn.proj.bias"]}
    for name, w, b in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
      blk[f"{att}{name}/kernel"] = w.T.reshape(d, heads, hd)
      blk[f"{att}{name}/bias"] = b.reshape(heads, hd)
    for r in range(2):
      blk[f"MlpBlock_{mlp}/Dense_{r}/kernel"] = sd[f"{t}mlp.fc{r + 1}.weight"].T
      blk[f"MlpBlock_{mlp}/Dense_{r}/bias"] = sd[f"{t}mlp.fc{r + 1}.bias"]
    blocks.append(blk)
  if stacked:
    import numpy as np
    for name in blocks[0]:
      out[f"{p}Transformer/encoderblock/{name}"] = np.stack([b[name] for b in blocks])
  else:
    for i, blk in enumerate(blocks):
      out.update({f"{p}Transformer/encoderblock_{i}/{n}": v for n, v in blk.items()})
  return out
