"""IDML with Proxy-Anchor, ResNet-50, 512-d: the IDML paper's retrieval setting.

Wang et al., "Introspective Deep Metric Learning", TPAMI 2023 (docs/algorithms.md §1.5).
Argument (comma-separated): ``cub`` | ``cars`` | ``sop`` (``inshop``: SOP's schedule; the
paper has no In-Shop row); ``tfds`` (read TFDS instead of the official folder layout);
``official`` (the official code's behaviour, quirks included: README, "Where we differ from
the official code"); ``baseline`` (the paper's baseline row: Proxy-Anchor on the cosine,
no uncertainty, no Mixup); ``runlocal`` (seconds-long smoke run).

    python -m idml_jax.models.convert resnet50-0676ba61.pth weights/resnet50 --backbone resnet50
    python -m idml_jax.main --config=configs/idml_pa.py:cub --workdir=runs/idml_cub \\
        --config.data.data_dir=/data --config.model.pretrained=weights/resnet50

Meant for one GPU (or a v4-8 TPU slice): 60 epochs of 50 (CUB), 67 (Cars) or 496 (SOP)
steps of 120 images, two forward passes each. Paper (best epoch of 60; ``config.paper``):
CUB R@1/2/4 70.7/80.2/87.9, NMI 73.5, RP 39.3, MAP@R 28.4; Cars R@1/2/4 90.6/94.5/97.1,
NMI 76.9, RP 42.6, MAP@R 33.8; SOP R@1/10 81.5/92.7, NMI 92.3, RP 54.8, MAP@R 51.3.
"""

import ml_collections

from idml_jax.config import default_config
from idml_jax.config_files import parse_arg, runlocal

DATASETS = ("cub", "cars", "sop", "inshop")
PAPER = {  # IDML-PA, ResNet-50, 512-d (the paper's table, as fractions).
    "cub": {"recall@1": 0.707, "recall@2": 0.802, "recall@4": 0.879, "nmi": 0.735,
            "r_precision": 0.393, "map@r": 0.284},
    "cars": {"recall@1": 0.906, "recall@2": 0.945, "recall@4": 0.971, "nmi": 0.769,
             "r_precision": 0.426, "map@r": 0.338},
    "sop": {"recall@1": 0.815, "recall@10": 0.927, "nmi": 0.923, "r_precision": 0.548,
            "map@r": 0.513},
}


def official(c):
  """The official code's step (wzzheng/IDML image_retrieval/code): both embeddings
  L2-normalised before the loss (the ISM's dmu from mu-hat, ||u|| = 1), the uncertainty head
  PyTorch-initialised, in the backbone's parameter group (frozen during warm-up), BatchNorm
  scale/shift trained after the warm-up (statistics frozen)."""
  c.model.uncertainty_activation = "l2_normalize"
  c.model.uncertainty_init = "torch"
  c.model.uncertainty_input = "features"
  c.ism.semantic_distance = "normalized"
  c.optimizer.uncertainty_head_group = "backbone"
  c.model.batch_norm = "frozen_stats"
  return c


def build(dataset: str, *, tfds: bool = False, official_code: bool = False,
          baseline: bool = False):
  """The config of ``dataset`` (default: the paper's method; ``official_code``: the official
  code's behaviour; ``baseline``: plain Proxy-Anchor, the same schedule)."""
  large = dataset in ("sop", "inshop")
  c = default_config()
  c.method = "idml"
  c.loss.name = "proxy_anchor"
  c.loss.kwargs.margin = 0.1
  c.loss.kwargs.alpha = 32.0
  c.model.backbone = "resnet50"
  c.model.embedding_dim = 512
  c.model.batch_norm = "frozen"  # The paper: statistics and scale/shift frozen.
  c.data.source = "tfds" if tfds else "folder"
  c.data.name = dataset
  c.data.sampler = "random"
  c.batch_size = 120
  c.num_epochs = 60
  c.optimizer.name = "adamw"
  c.optimizer.weight_decay = 1e-4
  c.optimizer.lr = 2.5e-4 if dataset == "cars" else 6e-4
  c.optimizer.schedule = "step"
  c.optimizer.decay_epochs = 5 if dataset == "cub" else 10
  c.optimizer.gamma = 0.25 if large else 0.5
  c.optimizer.warmup_epochs = 5
  c.optimizer.clip_value = 10.0
  c.optimizer.proxy_lr_mult = 100.0
  c.ism.a, c.ism.b = 4.0, 5.0
  c.mixing.kind = "mixup"  # IDML's Mixup: L(x, y) + lam L(x~, y) + (1 - lam) L(x~, y[pi]).
  c.mixing.alpha = 1.0
  if large:
    c.eval.ks = (1, 10, 100, 1000) if dataset == "sop" else (1, 10, 20, 30)
    c.eval.every_epochs = 5  # 60k test images: NMI and retrieval take minutes on CPU hosts.
  c.paper = ml_collections.ConfigDict(PAPER.get(dataset, {}))
  if official_code:
    official(c)
  if baseline:
    c.method, c.mixing.kind = "baseline", "none"
    c.paper = ml_collections.ConfigDict()
  return c


def get_config(arg: str = "cub"):
  args = parse_arg(arg, dataset=(None, DATASETS),
                   flags=("tfds", "official", "baseline", "runlocal"))
  c = build(args.dataset, tfds=args.tfds, official_code=args.official, baseline=args.baseline)
  if args.runlocal:
    runlocal(c)
  return c
