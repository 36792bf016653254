"""Backbones, the embedding model and pretrained-weight loading.

``BACKBONES`` maps a config name to its constructor and its input convention, so a
config picks ``resnet50`` or ``bn_inception`` and the data pipeline normalises
images the way the pretrained weights expect.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn

from idml_jax import names
from idml_jax.models.bn_inception import BNInception
from idml_jax.models.embedding import (
  POOLINGS,
  UNCERTAINTY_ACTIVATIONS,
  UNCERTAINTY_INITS,
  UNCERTAINTY_INPUTS,
  ClassifierModel,
  EmbeddingModel,
  pool_features,
  uncertainty_embedding,
)
from idml_jax.models.googlenet import GoogLeNet
from idml_jax.models.resnet import resnet


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """How images are normalised for a backbone: ``(x * scale - mean) / std`` per channel."""

  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  scale: float = 1.0 / 255.0  # 1.0 = pixels in 0–255.
  bgr: bool = False


IMAGENET = InputSpec((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# CIFAR's statistics, as the IDML classification code normalises CIFAR-10/100.
CIFAR = InputSpec((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255))
CAFFE_BGR = InputSpec((104.0, 117.0, 128.0), (1.0, 1.0, 1.0), scale=1.0, bgr=True)


@dataclasses.dataclass(frozen=True)
class Backbone:
  make: Callable[..., nn.Module]
  input_spec: InputSpec
  weights: str  # The pretrained file the papers' code uses.


BACKBONES: dict[str, Backbone] = {
    "resnet_tiny": Backbone(functools.partial(resnet, "resnet_tiny", width=8), IMAGENET,
                            "none (tests and demos)"),
    "resnet18": Backbone(functools.partial(resnet, "resnet18"), IMAGENET,
                         "torchvision resnet18-f37072fd.pth"),
    "resnet34": Backbone(functools.partial(resnet, "resnet34"), IMAGENET,
                         "torchvision resnet34-b627a593.pth"),
    "resnet50": Backbone(functools.partial(resnet, "resnet50"), IMAGENET,
                         "torchvision resnet50-0676ba61.pth (IMAGENET1K_V1, official IDML)"),
    "resnet101": Backbone(functools.partial(resnet, "resnet101"), IMAGENET,
                          "torchvision resnet101-63fe2227.pth"),
    # CIFAR stems (3×3/1 conv, no max pool) for 32 px classification; trained from scratch.
    "resnet18_cifar": Backbone(functools.partial(resnet, "resnet18", small_images=True),
                               CIFAR, "none (CIFAR, from scratch)"),
    "resnet50_cifar": Backbone(functools.partial(resnet, "resnet50", small_images=True),
                               CIFAR, "none (CIFAR, from scratch)"),
    "resnet_tiny_cifar": Backbone(
        functools.partial(resnet, "resnet_tiny", width=8, small_images=True), IMAGENET,
        "none (tests and demos)"),
    "bn_inception": Backbone(BNInception, CAFFE_BGR, "Cadene bn_inception-52deb4733.pth"),
    "googlenet": Backbone(GoogLeNet, IMAGENET, "torchvision googlenet-1378be20.pth"),
}


def get_backbone(name: str) -> Backbone:
  return names.lookup(BACKBONES, name, "backbone")


def make_backbone(name: str, **kwargs) -> nn.Module:
  """``make_backbone("resnet50", train_bn=False, dtype=jnp.bfloat16)``."""
  return get_backbone(name).make(**kwargs)


__all__ = [
    "BACKBONES",
    "CAFFE_BGR",
    "CIFAR",
    "IMAGENET",
    "POOLINGS",
    "UNCERTAINTY_ACTIVATIONS",
    "UNCERTAINTY_INITS",
    "UNCERTAINTY_INPUTS",
    "Backbone",
    "ClassifierModel",
    "EmbeddingModel",
    "InputSpec",
    "get_backbone",
    "make_backbone",
    "pool_features",
    "uncertainty_embedding",
]
