"""Your own small images (32–64 px), trained from scratch: the recipe measured on real images.

    python -m idml_jax.main --config=configs/small_images.py:idml,pa --workdir=runs/mine \\
        --config.data.data_dir=DIR          # DIR/train/<class>/*, DIR/test/<class>/*

Argument (comma-separated): a method ``baseline | idml | iaa | idml_iaa`` (default ``idml``);
a loss ``pa`` (Proxy-Anchor, default) | ``ms`` (Multi-Similarity) | ``contrastive``; a network
``cnn`` (default) | ``resnet``; ``runlocal`` (seconds). The classes of ``test/`` must not be
those of ``train/``.

The recipe (BENCHMARKS.md, "Real images"): a plain CNN (``cnn_small``: three blocks of two 3×3
convolutions with BatchNorm, 8-16-32 channels) with PyTorch's default convolution
initialisation (``model.conv_init=torch``), or ``resnet``: a CIFAR-stem tiny ResNet with
torchvision's initialisation (3×3 stem, no max-pool: at 32 px the ImageNet stem leaves a 1×1
map); average pooling, pad-4 random crops and horizontal flips, Adam at 1e-3 without weight
decay or clipping, heads at the backbone's rate, proxies at 10×, no warm-up, BatchNorm
trained, P × K = 10 × 4 batches, 1,200 steps; IDML with its Mixup, IAA from step 400.
``benchmarks/studies/realdata/run.py`` measures every method on four real sets, five seeds:
the Multi-Similarity baseline reaches Recall@1 0.912 on ``glyphs`` and 0.375 on ``icons``,
IDML-PA 0.910 and 0.342; the ResNet learns less (MS 0.853 and 0.294, IDML-PA 0.834 and
0.301). The same network in PyTorch, fed the same batches, learns the same, with the official
Multi-Similarity loss or pytorch-metric-learning's (``benchmarks/studies/learning_curves.py``).

**Flips**: where a mirror image is another class or unlike any test image — characters,
icons, text, figures with a direction — train without them (``--config.data.flip=False``):
on three such sets Recall@1 rises by 0.037 (``glyphs``), 0.021 (``icons``) and 0.046
(``fonts``), five seeds each (BENCHMARKS.md). Not tuned beyond these choices.
"""

from idml_jax.config import default_config
from idml_jax.config_files import parse_arg, runlocal

METHODS = {"baseline": "baseline", "idml": "idml", "iaa": "iaa", "idml_iaa": "idml+iaa"}
LOSSES = {"pa": "proxy_anchor", "ms": "multi_similarity", "contrastive": "contrastive"}
# network -> (model.backbone, model.conv_init)
NETWORKS = {"cnn": ("cnn_small", "torch"), "resnet": ("resnet_tiny_cifar", "kaiming_normal")}


def build(method: str = "idml", loss: str = "pa", network: str = "cnn"):
  """The recipe for ``method`` (a key of ``METHODS``), ``loss`` (of ``LOSSES``) and
  ``network`` (of ``NETWORKS``)."""
  c = default_config()
  c.method = METHODS[method]
  c.loss.name = LOSSES[loss]
  if c.method in ("iaa", "idml+iaa") and loss == "pa":
    raise ValueError("IAA synthesises samples for pair losses: use ms or contrastive.")
  c.mixing.kind = "mixup" if c.method in ("idml", "idml+iaa") else "none"
  c.model.backbone, c.model.conv_init = NETWORKS[network]
  c.model.embedding_dim = 64
  c.model.pooling = "avg"
  c.model.batch_norm = "train"
  c.data.source, c.data.name = "folder", "image_folder"
  c.data.image_size = c.data.resize_size = 32
  c.data.augment = "pad_crop"
  c.data.images_per_class = 4
  c.data.num_threads = 4
  c.batch_size = 40
  c.num_epochs = 30
  c.max_steps_per_epoch = 40  # 1,200 steps.
  c.optimizer.name = "adam"
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_value = 0.0
  c.optimizer.head_lr_mult = 1.0
  c.optimizer.proxy_lr_mult = 10.0  # Proxies at 1e-2, Proxy-Anchor's absolute proxy rate.
  c.optimizer.schedule = "multistep"
  c.optimizer.boundaries = ()
  c.optimizer.warmup_epochs = 0
  c.iaa.start_epoch = 10
  c.iaa.update_every = 4
  c.eval.every_epochs = 10
  c.eval.batch_size = 200
  c.eval.at_start = True
  c.log_every_steps = 40
  return c


def get_config(arg: str = "idml,pa"):
  args = parse_arg(arg, method=("idml", tuple(METHODS)), loss=("pa", tuple(LOSSES)),
                   network=("cnn", tuple(NETWORKS)), flags=("runlocal",))
  c = build(args.method, args.loss, args.network)
  if args.runlocal:
    runlocal(c)
  return c
