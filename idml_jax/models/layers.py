"""Layers shared by the backbones: PyTorch-compatible conv, BatchNorm and pooling.

PyTorch pads symmetrically; XLA's ``'SAME'`` pads (2, 3) for a 7×7/2 conv and (0, 1)
for a 3×3/2 conv on even sizes, which changes the outputs of pretrained networks by
5–36 %. Every padding here is explicit. Ceil-mode pooling (BN-Inception, GoogLeNet)
is emulated with extra high-side padding.
"""

from __future__ import annotations

import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp


def conv(features: int, kernel: int, stride: int = 1, padding: int | None = None,
         bias: bool = False, name: str | None = None, dtype=jnp.float32) -> nn.Conv:
  """A Conv2d with PyTorch's symmetric padding (default ``kernel // 2``)."""
  p = kernel // 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((p, p), (p, p)),
                 use_bias=bias, name=name, dtype=dtype,
                 kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))


def batch_norm(train: bool, eps: float = 1e-5, name: str | None = None,
               dtype=jnp.float32) -> nn.BatchNorm:
  """BatchNorm with PyTorch's eps and momentum; ``train=False`` uses running statistics.

  Batch variances are computed as PyTorch does, from the centred values: Flax's default
  E[x²] - E[x]² cancels catastrophically for channels whose mean dwarfs their spread, which
  made 1- and 8-device gradients differ by 5 % (tests/test_classification.py)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=eps, name=name,
                      dtype=dtype, use_fast_variance=False)


def _ceil_pad(size: int, kernel: int, stride: int, padding: int) -> tuple[int, int]:
  """(low, high) padding giving PyTorch's ``ceil_mode=True`` output size."""
  out = math.ceil((size + 2 * padding - kernel) / stride) + 1
  if (out - 1) * stride >= size + padding:  # PyTorch: last window must start inside.
    out -= 1
  high = (out - 1) * stride + kernel - size - padding
  return padding, max(high, padding)


def max_pool(x: jnp.ndarray, kernel: int, stride: int, padding: int = 0,
             ceil_mode: bool = False) -> jnp.ndarray:
  """NHWC max pool with PyTorch's padding (-inf) and optional ceil mode."""
  if ceil_mode:
    pads = (_ceil_pad(x.shape[1], kernel, stride, padding),
            _ceil_pad(x.shape[2], kernel, stride, padding))
  else:
    pads = ((padding, padding), (padding, padding))
  return nn.max_pool(x, (kernel, kernel), (stride, stride), padding=pads)


def avg_pool(x: jnp.ndarray, kernel: int, stride: int, padding: int = 0) -> jnp.ndarray:
  """NHWC average pool, PyTorch's ``count_include_pad=True`` (zeros counted)."""
  pads = ((padding, padding), (padding, padding))
  return nn.avg_pool(x, (kernel, kernel), (stride, stride), padding=pads, count_include_pad=True)


def torch_conv_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """PyTorch's ``nn.Conv2d`` default, ``kaiming_uniform_(a=sqrt(5))``: U(±1/sqrt(fan_in)),
  for an HWIO kernel (fan_in = H·W·I)."""
  bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
  return jax.random.uniform(key, shape, dtype, -bound, bound)


# ``model.conv_init`` -> how a from-scratch backbone's convolution kernels are drawn: as
# built (Kaiming-normal fan-out, torchvision's ResNet initialisation) or PyTorch's default.
CONV_INITS = {"kaiming_normal": None, "torch": torch_conv_init}


def reinitialize_convolutions(params: dict, key: jax.Array, conv_init: str) -> dict:
  """``params`` with every 4-D ``kernel`` (a convolution) drawn again by ``conv_init``."""
  init = CONV_INITS[conv_init]
  if init is None:
    return params
  flat = flax.traverse_util.flatten_dict(params)
  for i, (path, value) in enumerate(sorted(flat.items())):
    if path[-1] == "kernel" and value.ndim == 4:
      flat[path] = init(jax.random.fold_in(key, i), value.shape, value.dtype)
  return flax.traverse_util.unflatten_dict(flat)
