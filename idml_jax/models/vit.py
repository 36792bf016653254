"""Vision Transformers in Flax linen, module for module timm's ``VisionTransformer``.

Images [B, H, W, 3] -> patch embedding (a p×p/p conv) -> [class token, register tokens,
patches] + learned absolute position embeddings -> (CLIP: ``norm_pre``) -> pre-norm blocks
``x + ls1(attn(norm1(x)))``, ``x + ls2(mlp(norm2(x)))`` -> final ``norm`` -> pooled [B, D]
(the class token, or the mean of the patch tokens).

Attention is fused-QKV (one Dense to 3·D, split as q, k, v then heads, as timm's ``qkv``)
through ``jax.nn.dot_product_attention``, which picks cuDNN's fused kernel on GPUs. ``dtype``
is the compute dtype (bf16 on accelerators); parameters stay float32, as in the CNNs.

Position embeddings have the grid of the image size the model is built for. Weights made
for another grid (DINOv2's 37×37 at 518 px) are resampled on loading by
:func:`resample_pos_embed` as timm's ``resample_abs_pos_embed`` does, with
``F.interpolate(mode="bicubic", antialias=True)``: PIL's cubic (a = -0.5), widened by the
scale when shrinking, weights renormalised at the edges. ``jax.image.resize(method="cubic",
antialias=True)`` is that filter (tests/test_vit.py checks it against torch to 1e-6);
torch's ``antialias=False`` bicubic (a = -0.75, edges replicated) is a different one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from idml_jax import names


@dataclasses.dataclass(frozen=True)
class ViTVariant:
  """One architecture, as timm's ``VisionTransformer`` arguments name them.

  Attributes:
    patch, width, depth, heads: patch size, embedding dim D, blocks, attention heads.
    mlp_ratio: MLP hidden size / D.
    reg_tokens: register tokens after the class token (DINOv2 ``reg4``).
    no_embed_class: position embeddings cover only the patches (the prefix tokens get
      none), as timm's DINOv2-with-registers and big_vision's ViTs.
    pre_norm: a LayerNorm before the blocks and a patch conv without bias (CLIP).
    layer_scale: per-channel ``ls1``/``ls2`` ``gamma`` on each residual branch (DINOv2).
    act: the MLP's activation, a key of ``ACTIVATIONS``.
    eps: the LayerNorms' epsilon (timm: 1e-6; CLIP: 1e-5).
    weights_image_size: the image size the released weights' position grid is for.
  """

  patch: int
  width: int
  depth: int
  heads: int
  mlp_ratio: float = 4.0
  reg_tokens: int = 0
  no_embed_class: bool = False
  pre_norm: bool = False
  layer_scale: bool = False
  act: str = "gelu"
  eps: float = 1e-6
  weights_image_size: int = 224

  @property
  def num_prefix_tokens(self) -> int:
    return 1 + self.reg_tokens

  @property
  def pos_prefix_tokens(self) -> int:
    """Prefix tokens that have a position embedding."""
    return 0 if self.no_embed_class else self.num_prefix_tokens


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch's nn.GELU (timm)
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # big_vision's training
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP
}
POOLS = ("token", "avg")

_S16 = dict(patch=16, width=384, depth=12, heads=6)
_B16 = dict(patch=16, width=768, depth=12, heads=12)
_DINOV2 = dict(patch=14, layer_scale=True, weights_image_size=518)
VARIANTS: dict[str, ViTVariant] = {
    "vit_s16": ViTVariant(**_S16),
    "vit_b16": ViTVariant(**_B16),
    "deit_s16": ViTVariant(**_S16),
    "dino_vits16": ViTVariant(**_S16),
    "dino_vitb16": ViTVariant(**_B16),
    "dinov2_vits14": ViTVariant(width=384, depth=12, heads=6, **_DINOV2),
    "dinov2_vitb14": ViTVariant(width=768, depth=12, heads=12, **_DINOV2),
    "dinov2_vits14_reg": ViTVariant(width=384, depth=12, heads=6, reg_tokens=4,
                                    no_embed_class=True, **_DINOV2),
    "dinov2_vitb14_reg": ViTVariant(width=768, depth=12, heads=12, reg_tokens=4,
                                    no_embed_class=True, **_DINOV2),
    "clip_vitb16": ViTVariant(**_B16, pre_norm=True, act="quick_gelu", eps=1e-5),
    # Tests and smoke runs: the same code at toy size (patch 8: a 4×4 grid at 32 px).
    "vit_tiny": ViTVariant(patch=8, width=32, depth=2, heads=2, weights_image_size=32),
}


class LayerScale(nn.Module):
  """``x * gamma`` per channel (timm's ``ls1``/``ls2``; init 1e-5 as DINOv2)."""

  @nn.compact
  def __call__(self, x):
    gamma = self.param("gamma", nn.initializers.constant(1e-5), (x.shape[-1],))
    return x * gamma.astype(x.dtype)


class Attention(nn.Module):
  """Multi-head self-attention with timm's fused ``qkv`` and output ``proj``."""

  heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, T, D] -> [B, T, D]
    b, t, d = x.shape
    qkv = nn.Dense(3 * d, dtype=self.dtype, name="qkv")(x).reshape(b, t, 3, self.heads,
                                                                  d // self.heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, heads, head_dim]
    out = jax.nn.dot_product_attention(q, k, v).reshape(b, t, d)
    return nn.Dense(d, dtype=self.dtype, name="proj")(out)


class Block(nn.Module):
  variant: ViTVariant
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    v = self.variant
    norm = lambda name: nn.LayerNorm(epsilon=v.eps, dtype=self.dtype, name=name)
    scale = (lambda name: LayerScale(name=name)) if v.layer_scale else (lambda name: lambda y: y)
    x = x + scale("ls1")(Attention(v.heads, self.dtype, name="attn")(norm("norm1")(x)))
    mlp = Mlp(int(v.width * v.mlp_ratio), v.act, self.dtype, name="mlp")
    return x + scale("ls2")(mlp(norm("norm2")(x)))


class Mlp(nn.Module):
  hidden: int
  act: str = "gelu"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    act = names.lookup(ACTIVATIONS, self.act, "ViT activation")
    h = act(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(h)


class VisionTransformer(nn.Module):
  """Images [B, H, W, 3] -> pooled features [B, D] (``pool``: ``token`` | ``avg``).

  ``avg`` is the mean of the patch tokens after the final norm (prefix tokens excluded).
  """

  variant: ViTVariant
  pool: str = "token"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    v = self.variant
    if images.shape[1] % v.patch or images.shape[2] % v.patch:
      raise ValueError(f"Image size {images.shape[1]}×{images.shape[2]} is not a multiple of "
                       f"the patch size {v.patch}: set data.image_size to a multiple of it.")
    x = nn.Conv(v.width, (v.patch, v.patch), (v.patch, v.patch), padding="VALID",
                use_bias=not v.pre_norm, dtype=self.dtype, name="patch_embed")(images)
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    init = nn.initializers.normal(0.02)
    prefix = [self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d))]
    if v.reg_tokens:
      prefix.append(self.param("reg_token", nn.initializers.normal(1e-6), (1, v.reg_tokens, d)))
    prefix = [jnp.broadcast_to(p, (b, *p.shape[1:])).astype(x.dtype) for p in prefix]
    pos = self.param("pos_embed", init, (1, gh * gw + v.pos_prefix_tokens, d)).astype(x.dtype)
    if v.no_embed_class:  # The prefix tokens get no position.
      x = jnp.concatenate([*prefix, x + pos], axis=1)
    else:
      x = jnp.concatenate([*prefix, x], axis=1) + pos
    if v.pre_norm:
      x = nn.LayerNorm(epsilon=v.eps, dtype=self.dtype, name="norm_pre")(x)
    for i in range(v.depth):
      x = Block(v, self.dtype, name=f"blocks_{i}")(x)
    x = nn.LayerNorm(epsilon=v.eps, dtype=self.dtype, name="norm")(x)
    if self.pool == "token":
      return x[:, 0]
    if self.pool == "avg":
      return jnp.mean(x[:, v.num_prefix_tokens:], axis=1)
    raise ValueError(f"Unknown ViT pooling {self.pool!r}; valid: {', '.join(POOLS)}.")


def make_vit(name: str, pool: str = "token", dtype=jnp.float32, train_bn: bool = False
        ) -> VisionTransformer:
  """The ViT variant ``name`` (``train_bn`` is accepted and unused: ViTs have no BatchNorm)."""
  del train_bn
  return VisionTransformer(names.lookup(VARIANTS, name, "ViT variant"), pool, dtype)


def grid_of(variant: ViTVariant, pos_embed_shape: tuple[int, ...]) -> int:
  """The square patch grid side of a position embedding [1, T, D] for ``variant``."""
  n = pos_embed_shape[1] - variant.pos_prefix_tokens
  side = math.isqrt(n)
  if side * side != n:
    raise ValueError(f"pos_embed of {pos_embed_shape[1]} tokens is not {variant.pos_prefix_tokens}"
                     " prefix position(s) plus a square grid: is this the right backbone?")
  return side


def resample_pos_embed(pos_embed: np.ndarray, new_grid: int, num_prefix_tokens: int) -> np.ndarray:
  """[1, prefix + g², D] -> [1, prefix + new_grid², D]: the prefix rows kept, the grid
  resampled as timm's ``resample_abs_pos_embed`` (bicubic, antialiased)."""
  pos = np.asarray(pos_embed, np.float32)
  prefix, grid = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
  g = math.isqrt(grid.shape[1])
  if g * g != grid.shape[1]:
    raise ValueError(f"A position grid of {grid.shape[1]} tokens is not square.")
  if g == new_grid:
    return pos
  grid = jax.image.resize(grid.reshape(g, g, -1), (new_grid, new_grid, grid.shape[-1]),
                          "cubic", antialias=True)
  return np.concatenate([prefix, np.asarray(grid).reshape(1, new_grid * new_grid, -1)], axis=1)
