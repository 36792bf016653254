"""IDML and IAA on a Vision Transformer: the papers' losses on the backbones ViT DML uses now.

Argument (comma-separated): a dataset ``cub | cars | sop | inshop``; a recipe ``idml_pa``
(default: IDML + Proxy-Anchor, configs/idml_pa.py's schedule) | ``ms_iaa`` (Multi-Similarity
+ IAA, configs/iaa.py's) | ``idml_iaa`` (both); a backbone (default ``dino_vits16``): any ViT
of the README's backbone table; flags ``tfds``, ``runlocal`` (``vit_tiny``, seconds).

    python -m idml_jax.models.convert vit_small_patch16_224.dino/model.safetensors \\
        weights/dino_vits16 --backbone dino_vits16
    python -m idml_jax.main --config=configs/vit.py:cub,idml_pa,dino_vits16 \\
        --workdir=runs/vit_cub_idml_pa --config.data.data_dir=/data \\
        --config.model.pretrained=weights/dino_vits16

What changes from the papers' ResNet recipes, after the published ViT DML code (Hyp-ViT,
htdt/hyp_metric): the class token after the final norm (``model.pooling=token``) into 384-d
heads without bias; AdamW, backbone learning rate 1e-5 (ViT-B: 5e-6) with the heads 10× and
Proxy-Anchor's proxies 100×, weight decay 0.01; random-resized crops of scale 0.2–1 with
bicubic resampling at 224 px; inputs normalised as the weights expect (ImageNet statistics
for DINO/DINOv2/DeiT, 0.5/0.5 for Google's augreg ViTs, CLIP's own); bf16 compute. No
layer-wise learning-rate decay: the recipes above do not use it. DINOv2's 37 × 37 position
grid is resampled to 16 × 16 on loading.

No IDML or IAA result on a ViT has been published. The ViT DML numbers these runs should
be read against (R@1): Hyp-ViT (ViT-S/16 in21k, hyperbolic, 384-d) CUB 85.6, Cars 86.5,
SOP 85.9, In-Shop 92.5; Hyp-DINO (DINO ViT-S/16) CUB 80.9, Cars 89.2, SOP 85.1,
In-Shop 92.4 (Ermolov et al., CVPR 2022); parameter-efficient ViT DML: ViT-S/16 384-d CUB
86.6, SOP 84.4, ViT-B/16 CUB 88.5, SOP 86.8. These recipes are untested at full scale
(no accelerator here): a starting point, not a reproduction.
"""

import os

import ml_collections

from idml_jax import models
from idml_jax.config_files import load_module, parse_arg, runlocal

DATASETS = ("cub", "cars", "sop", "inshop")
RECIPES = ("idml_pa", "ms_iaa", "idml_iaa")
BACKBONES = tuple(name for name, b in models.BACKBONES.items() if b.vit and name != "vit_tiny")
_HERE = os.path.dirname(os.path.abspath(__file__))


def _base(dataset: str, recipe: str, tfds: bool):
  """The papers' config for the dataset and loss (its schedule, sampler, batch, IAA); no
  paper numbers (none were published on a ViT)."""
  if recipe == "idml_pa":
    c = load_module(os.path.join(_HERE, "idml_pa.py")).build(dataset, tfds=tfds)
  else:
    c = load_module(os.path.join(_HERE, "iaa.py")).build(
        dataset, "ms", "resnet50", tfds=tfds, idml=recipe == "idml_iaa")
  c.paper = ml_collections.ConfigDict()
  return c


def get_config(arg: str = "cub"):
  args = parse_arg(arg, dataset=(None, DATASETS), recipe=("idml_pa", RECIPES),
                   backbone=("dino_vits16", BACKBONES), flags=("tfds", "runlocal"))
  c = _base(args.dataset, args.recipe, args.tfds)
  c.model.backbone = args.backbone
  c.model.pooling = "token"
  c.model.head_bias = False
  c.model.embedding_dim = 384
  c.model.dtype = "bfloat16"
  c.data.image_size, c.data.resize_size = 224, 256
  c.data.crop_scale = (0.2, 1.0)
  c.data.interpolation = "bicubic"
  c.data.resize_mode = "shorter_side"
  c.optimizer.name = "adamw"
  c.optimizer.lr = 5e-6 if models.get_backbone(args.backbone).vit.width > 384 else 1e-5
  c.optimizer.weight_decay = 0.01
  c.optimizer.head_lr_mult = 10.0
  c.optimizer.proxy_lr_mult = 100.0
  if args.runlocal:
    runlocal(c)
  return c
