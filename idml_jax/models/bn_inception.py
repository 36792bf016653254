"""BN-Inception (Ioffe & Szegedy 2015) in Flax linen, as the metric-learning literature uses it.

The layout and names are those of Cadene's ``pretrainedmodels`` ``bninception``
(weights ``bn_inception-52deb4733.pth``), used by nearly every DML repository and
by IAA: convs with bias, BatchNorm (eps 1e-5) and ReLU after each conv, ceil-mode
max pools, and branch average pools that count padding. Input: BGR in 0–255 minus
[104, 117, 128] (std 1), NHWC. Output: [B, H/32, W/32, 1024].
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from idml_jax.models.layers import avg_pool, batch_norm, conv, max_pool

# (1x1, 3x3_reduce, 3x3, double_3x3_reduce, double_3x3, pool_proj, pool) of each module;
# 1x1 = 0 marks the stride-2 reduction modules (3c, 4e), whose pool branch is a max pool.
MODULES = (
    ("3a", 64, 64, 64, 64, 96, 32, "avg"),
    ("3b", 64, 64, 96, 64, 96, 64, "avg"),
    ("3c", 0, 128, 160, 64, 96, 0, "max"),
    ("4a", 224, 64, 96, 96, 128, 128, "avg"),
    ("4b", 192, 96, 128, 96, 128, 128, "avg"),
    ("4c", 160, 128, 160, 128, 160, 128, "avg"),
    ("4d", 96, 128, 192, 160, 192, 128, "avg"),
    ("4e", 0, 128, 192, 192, 256, 0, "max"),
    ("5a", 352, 192, 320, 160, 224, 128, "avg"),
    ("5b", 352, 192, 320, 192, 224, 128, "max"),
)


class BNInception(nn.Module):
  """BN-Inception trunk: [B, H, W, 3] -> [B, H/32, W/32, 1024]."""

  train_bn: bool = False
  dtype: jnp.dtype = jnp.float32
  num_features = 1024

  def unit(self, x, features, kernel, name, stride=1):
    """conv (with bias) -> BN -> ReLU, named like the PyTorch file (``name``, ``name_bn``)."""
    x = conv(features, kernel, stride, bias=True, name=name, dtype=self.dtype)(x)
    return nn.relu(batch_norm(self.train_bn, name=f"{name}_bn", dtype=self.dtype)(x))

  @nn.compact
  def __call__(self, x):
    x = self.unit(x.astype(self.dtype), 64, 7, "conv1_7x7_s2", stride=2)
    x = max_pool(x, 3, 2, ceil_mode=True)
    x = self.unit(x, 64, 1, "conv2_3x3_reduce")
    x = self.unit(x, 192, 3, "conv2_3x3")
    x = max_pool(x, 3, 2, ceil_mode=True)
    for name, f1, f3r, f3, fdr, fd, fp, pool in MODULES:
      p = f"inception_{name}"
      stride = 2 if f1 == 0 else 1
      branches = []
      if f1:
        branches.append(self.unit(x, f1, 1, f"{p}_1x1"))
      branches.append(self.unit(self.unit(x, f3r, 1, f"{p}_3x3_reduce"), f3, 3, f"{p}_3x3",
                                stride))
      d = self.unit(x, fdr, 1, f"{p}_double_3x3_reduce")
      d = self.unit(d, fd, 3, f"{p}_double_3x3_1")
      branches.append(self.unit(d, fd, 3, f"{p}_double_3x3_2", stride))
      if stride == 2:
        branches.append(max_pool(x, 3, 2, ceil_mode=True))
      else:
        pooled = avg_pool(x, 3, 1, 1) if pool == "avg" else max_pool(x, 3, 1, 1, ceil_mode=True)
        branches.append(self.unit(pooled, fp, 1, f"{p}_pool_proj"))
      x = jnp.concatenate(branches, axis=-1)
    return x
