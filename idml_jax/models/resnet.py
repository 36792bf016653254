"""ResNet-18/34/50/101 in Flax linen, layer for layer torchvision's (v1.5).

Linen, not NNX: parameters and BatchNorm statistics are plain pytrees, so the
train step stays a pure function that ``jax.jit`` shards over a mesh, and a
torchvision state dict maps onto the trees name for name (``layer1_0/conv1`` is
``layer1.0.conv1``).

v1.5 details that matter for pretrained weights: the bottleneck's stride is on
its 3×3 conv; the stem is a 7×7/2 conv with padding 3 and a 3×3/2 max pool with
padding 1, all symmetric (PyTorch's), never XLA's ``'SAME'``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from idml_jax.models.layers import batch_norm, conv, max_pool


class BasicBlock(nn.Module):
  planes: int
  stride: int = 1
  downsample: bool = False
  train_bn: bool = False
  dtype: jnp.dtype = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x):
    bn = lambda name: batch_norm(self.train_bn, name=name, dtype=self.dtype)
    y = nn.relu(bn("bn1")(conv(self.planes, 3, self.stride, name="conv1", dtype=self.dtype)(x)))
    y = bn("bn2")(conv(self.planes, 3, name="conv2", dtype=self.dtype)(y))
    if self.downsample:
      x = bn("downsample_1")(conv(self.planes, 1, self.stride, 0, name="downsample_0",
                                  dtype=self.dtype)(x))
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  planes: int
  stride: int = 1
  downsample: bool = False
  train_bn: bool = False
  dtype: jnp.dtype = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x):
    bn = lambda name: batch_norm(self.train_bn, name=name, dtype=self.dtype)
    c = lambda f, k, s, name: conv(f, k, s, name=name, dtype=self.dtype)
    y = nn.relu(bn("bn1")(c(self.planes, 1, 1, "conv1")(x)))
    y = nn.relu(bn("bn2")(c(self.planes, 3, self.stride, "conv2")(y)))
    y = bn("bn3")(c(self.planes * 4, 1, 1, "conv3")(y))
    if self.downsample:
      x = bn("downsample_1")(conv(self.planes * 4, 1, self.stride, 0, name="downsample_0",
                                  dtype=self.dtype)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet trunk. [B, H, W, 3] (ImageNet-normalised, NHWC) -> [B, H/32, W/32, C] features.

  Attributes:
    stage_sizes: blocks per stage; block: ``BasicBlock`` or ``Bottleneck``.
    train_bn: update BatchNorm statistics (the papers keep them frozen: False).
    dtype: compute dtype (``jnp.bfloat16`` on accelerators); parameters stay float32.
  """

  stage_sizes: Sequence[int]
  block: type[nn.Module]
  train_bn: bool = False
  dtype: jnp.dtype = jnp.float32
  width: int = 64  # 64 in every torchvision ResNet; smaller only for tests and demos.
  small_images: bool = False  # CIFAR stem: one 3×3/1 conv, no max pool (32 px inputs).

  @property
  def num_features(self) -> int:
    return self.width * 8 * self.block.expansion

  @nn.compact
  def __call__(self, x):
    kernel, stride = (3, 1) if self.small_images else (7, 2)
    x = conv(self.width, kernel, stride, name="conv1", dtype=self.dtype)(x.astype(self.dtype))
    x = nn.relu(batch_norm(self.train_bn, name="bn1", dtype=self.dtype)(x))
    if not self.small_images:
      x = max_pool(x, 3, 2, 1)
    in_planes = self.width
    for stage, num_blocks in enumerate(self.stage_sizes):
      planes = self.width * 2**stage
      for i in range(num_blocks):
        stride = 2 if stage > 0 and i == 0 else 1
        downsample = i == 0 and (stride != 1 or in_planes != planes * self.block.expansion)
        x = self.block(planes, stride, downsample, self.train_bn, self.dtype,
                       name=f"layer{stage + 1}_{i}")(x)
        in_planes = planes * self.block.expansion
    return x


STAGES = {
    "resnet_tiny": ((1, 1, 1, 1), BasicBlock),  # Tests and demos (with a small width).
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet34": ((3, 4, 6, 3), BasicBlock),
    "resnet50": ((3, 4, 6, 3), Bottleneck),
    "resnet101": ((3, 4, 23, 3), Bottleneck),
}


def resnet(name: str, **kwargs) -> ResNet:
  stages, block = STAGES[name]
  return ResNet(stages, block, **kwargs)
