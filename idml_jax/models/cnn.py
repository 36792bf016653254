"""A plain CNN for small images trained from scratch (the kind a PyTorch user writes first).

Blocks of two 3×3 convolutions (no bias), each followed by BatchNorm and ReLU, a 2×2 max-pool
between blocks. ``widths=(8, 16, 32)`` is the network of issue 22's PyTorch comparison;
``tests/torch_reference.py``'s ``SmallCNN`` is its PyTorch twin, layer for layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from idml_jax.models.layers import batch_norm, conv, max_pool


class SmallCNN(nn.Module):
  """[B, H, W, 3] -> [B, H / 2^(n-1), W / 2^(n-1), widths[-1]] features (n = len(widths)).

  Attributes:
    widths: channels of each block.
    train_bn: update BatchNorm statistics.
    dtype: compute dtype; parameters stay float32.
  """

  widths: Sequence[int] = (8, 16, 32)
  train_bn: bool = False
  dtype: jnp.dtype = jnp.float32

  @property
  def num_features(self) -> int:
    return self.widths[-1]

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      if i:
        x = max_pool(x, 2, 2)
      for j in (1, 2):
        x = conv(width, 3, name=f"block{i + 1}_conv{j}", dtype=self.dtype)(x)
        x = nn.relu(batch_norm(self.train_bn, name=f"block{i + 1}_bn{j}", dtype=self.dtype)(x))
    return x
