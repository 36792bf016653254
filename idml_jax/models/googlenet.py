"""GoogLeNet (Inception v1) in Flax linen, layer for layer torchvision's ``googlenet``.

Matches ``googlenet-1378be20.pth``: convs without bias followed by BatchNorm with
eps **1e-3**; ceil-mode max pools; the "5×5" branch is a 3×3 conv (as the weights
expect); ``transform_input`` re-maps ImageNet-normalised input the way torchvision
does for these weights. The auxiliary classifiers are not built.
Output: [B, H/32, W/32, 1024].
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from idml_jax.models.layers import batch_norm, conv, max_pool

# name, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5" (a 3x3 conv), pool proj; "pool" = max pool.
LAYOUT = (
    ("inception3a", 64, 96, 128, 16, 32, 32),
    ("inception3b", 128, 128, 192, 32, 96, 64),
    ("pool", 3),
    ("inception4a", 192, 96, 208, 16, 48, 64),
    ("inception4b", 160, 112, 224, 24, 64, 64),
    ("inception4c", 128, 128, 256, 24, 64, 64),
    ("inception4d", 112, 144, 288, 32, 64, 64),
    ("inception4e", 256, 160, 320, 32, 128, 128),
    ("pool", 2),
    ("inception5a", 256, 160, 320, 32, 128, 128),
    ("inception5b", 384, 192, 384, 48, 128, 128),
)


class BasicConv(nn.Module):
  """conv (no bias) -> BN (eps 1e-3) -> ReLU; torchvision's ``BasicConv2d``."""

  features: int
  kernel: int
  stride: int = 1
  train_bn: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = conv(self.features, self.kernel, self.stride, name="conv", dtype=self.dtype)(x)
    return nn.relu(batch_norm(self.train_bn, eps=1e-3, name="bn", dtype=self.dtype)(x))


class GoogLeNet(nn.Module):
  """GoogLeNet trunk: [B, H, W, 3] (ImageNet-normalised) -> [B, H/32, W/32, 1024]."""

  train_bn: bool = False
  transform_input: bool = True
  dtype: jnp.dtype = jnp.float32
  num_features = 1024

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    if self.transform_input:
      std = jnp.array([0.229, 0.224, 0.225], self.dtype)
      mean = jnp.array([0.485, 0.456, 0.406], self.dtype)
      x = x * (std / 0.5) + (mean - 0.5) / 0.5
    unit = lambda f, k, name, s=1: BasicConv(f, k, s, self.train_bn, self.dtype, name=name)
    x = unit(64, 7, "conv1", 2)(x)
    x = max_pool(x, 3, 2, ceil_mode=True)
    x = unit(192, 3, "conv3")(unit(64, 1, "conv2")(x))
    x = max_pool(x, 3, 2, ceil_mode=True)
    for spec in LAYOUT:
      if spec[0] == "pool":
        x = max_pool(x, spec[1], 2, ceil_mode=True)
        continue
      name, f1, f3r, f3, f5r, f5, fp = spec
      b1 = unit(f1, 1, f"{name}_branch1")(x)
      b2 = unit(f3, 3, f"{name}_branch2_1")(unit(f3r, 1, f"{name}_branch2_0")(x))
      b3 = unit(f5, 3, f"{name}_branch3_1")(unit(f5r, 1, f"{name}_branch3_0")(x))
      b4 = unit(fp, 1, f"{name}_branch4_1")(max_pool(x, 3, 1, 1, ceil_mode=True))
      x = jnp.concatenate([b1, b2, b3, b4], axis=-1)
    return x
