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
from idml_jax.models.cnn import SmallCNN
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
from idml_jax.models.layers import CONV_INITS
from idml_jax.models.resnet import resnet
from idml_jax.models.vit import POOLS as VIT_POOLS
from idml_jax.models.vit import VARIANTS as VIT_VARIANTS
from idml_jax.models.vit import ViTVariant, make_vit


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
HALF = InputSpec((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # Google's ViTs (augreg): [-1, 1]
CLIP = InputSpec((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@dataclasses.dataclass(frozen=True)
class Backbone:
  make: Callable[..., nn.Module]
  input_spec: InputSpec
  weights: str  # The pretrained file(s) it converts (the papers' code's, for the CNNs).
  vit: ViTVariant | None = None  # Vision Transformers: the architecture (pooled [B, D]).
  # ImageNet stem (7×7/2 conv + max-pool: /4 before the first block) or a CIFAR stem (3×3/1).
  imagenet_stem: bool = True


def _vit(name: str, input_spec: InputSpec, weights: str) -> Backbone:
  return Backbone(functools.partial(make_vit, name), input_spec, weights, VIT_VARIANTS[name])


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
                               CIFAR, "none (CIFAR, from scratch)", imagenet_stem=False),
    "resnet50_cifar": Backbone(functools.partial(resnet, "resnet50", small_images=True),
                               CIFAR, "none (CIFAR, from scratch)", imagenet_stem=False),
    "resnet_tiny_cifar": Backbone(
        functools.partial(resnet, "resnet_tiny", width=8, small_images=True), IMAGENET,
        "none (tests and demos)", imagenet_stem=False),
    # A plain 3-block CNN (models/cnn.py), the PyTorch comparison's network; from scratch.
    "cnn_small": Backbone(SmallCNN, IMAGENET, "none (from scratch)", imagenet_stem=False),
    "bn_inception": Backbone(BNInception, CAFFE_BGR, "Cadene bn_inception-52deb4733.pth"),
    "googlenet": Backbone(GoogLeNet, IMAGENET, "torchvision googlenet-1378be20.pth"),
    # Vision Transformers (models/vit.py): timm's files, the original releases' and .npz.
    "vit_s16": _vit("vit_s16", HALF, "timm vit_small_patch16_224.augreg_in21k_ft_in1k, "
                    "vit_small_patch16_224.augreg_in21k; S_16-i21k-300ep-...-res_224.npz"),
    "vit_b16": _vit("vit_b16", HALF, "timm vit_base_patch16_224.augreg2_in21k_ft_in1k, "
                    "vit_base_patch16_224.augreg_in21k; B_16-i21k-300ep-...-res_224.npz"),
    "deit_s16": _vit("deit_s16", IMAGENET, "timm deit_small_patch16_224.fb_in1k; "
                     "deit_small_patch16_224-cd65a155.pth"),
    "dino_vits16": _vit("dino_vits16", IMAGENET, "timm vit_small_patch16_224.dino; "
                        "dino_deitsmall16_pretrain.pth"),
    "dino_vitb16": _vit("dino_vitb16", IMAGENET, "timm vit_base_patch16_224.dino; "
                        "dino_vitbase16_pretrain.pth"),
    "dinov2_vits14": _vit("dinov2_vits14", IMAGENET, "timm vit_small_patch14_dinov2.lvd142m; "
                          "dinov2_vits14_pretrain.pth"),
    "dinov2_vitb14": _vit("dinov2_vitb14", IMAGENET, "timm vit_base_patch14_dinov2.lvd142m; "
                          "dinov2_vitb14_pretrain.pth"),
    "dinov2_vits14_reg": _vit("dinov2_vits14_reg", IMAGENET,
                              "timm vit_small_patch14_reg4_dinov2.lvd142m; "
                              "dinov2_vits14_reg4_pretrain.pth"),
    "dinov2_vitb14_reg": _vit("dinov2_vitb14_reg", IMAGENET,
                              "timm vit_base_patch14_reg4_dinov2.lvd142m; "
                              "dinov2_vitb14_reg4_pretrain.pth"),
    "clip_vitb16": _vit("clip_vitb16", CLIP, "timm vit_base_patch16_clip_224.openai; "
                        "OpenAI ViT-B-16.pt (visual.*)"),
    "vit_tiny": _vit("vit_tiny", IMAGENET, "none (tests and demos)"),
}


def get_backbone(name: str) -> Backbone:
  return names.lookup(BACKBONES, name, "backbone")


def make_backbone(name: str, **kwargs) -> nn.Module:
  """``make_backbone("resnet50", train_bn=False, dtype=jnp.bfloat16)``; ViTs also take
  ``pool`` (``token`` | ``avg``)."""
  return get_backbone(name).make(**kwargs)


__all__ = [
    "BACKBONES",
    "CONV_INITS",
    "CAFFE_BGR",
    "CIFAR",
    "CLIP",
    "HALF",
    "IMAGENET",
    "POOLINGS",
    "UNCERTAINTY_ACTIVATIONS",
    "UNCERTAINTY_INITS",
    "UNCERTAINTY_INPUTS",
    "VIT_POOLS",
    "Backbone",
    "ClassifierModel",
    "EmbeddingModel",
    "InputSpec",
    "ViTVariant",
    "get_backbone",
    "make_backbone",
    "pool_features",
    "uncertainty_embedding",
]
