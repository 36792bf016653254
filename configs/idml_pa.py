"""IDML with Proxy-Anchor, ResNet-50, 512-d: the IDML paper's retrieval setting.

Wang et al., "Introspective Deep Metric Learning", TPAMI 2023 (ALGORITHMS.md §1.5).
Argument: ``cub`` | ``cars`` | ``sop``, optionally ``,tfds`` (default: the official
folder layout) and ``,runlocal``.

    python -m idml_jax.models.convert resnet50-0676ba61.pth weights/resnet50 --backbone resnet50
    python -m idml_jax.main --config=configs/idml_pa.py:cub --workdir=runs/idml_cub \\
        --config.data.data_dir=/data --config.model.pretrained=weights/resnet50

Paper (best epoch of 60): CUB R@1/2/4 70.7/80.2/87.9, NMI 73.5, RP 39.3, MAP@R 28.4;
Cars R@1/2/4 90.6/94.5/97.1, NMI 76.9, RP 42.6, MAP@R 33.8; SOP R@1/10 81.5/92.7,
NMI 92.3, RP 54.8, MAP@R 51.3. Differences from the official code: the uncertainty
embedding is not L2-normalised (``--config.model.uncertainty_activation=l2_normalize``
restores it) and the uncertainty head also trains during warm-up.
"""

from idml_jax.config import default_config, runlocal


def get_config(arg: str = "cub"):
  args = arg.split(",")
  dataset = args[0]
  c = default_config()
  c.method = "idml"
  c.loss.name = "proxy_anchor"
  c.loss.kwargs.margin = 0.1
  c.loss.kwargs.alpha = 32.0
  c.model.backbone = "resnet50"
  c.model.embedding_dim = 512
  c.data.source = "tfds" if "tfds" in args else "folder"
  c.data.name = dataset
  c.data.sampler = "random"
  c.batch_size = 120
  c.num_epochs = 60
  c.optimizer.name = "adamw"
  c.optimizer.weight_decay = 1e-4
  c.optimizer.lr = {"cub": 6e-4, "cars": 2.5e-4, "sop": 6e-4}[dataset]
  c.optimizer.schedule = "step"
  c.optimizer.decay_epochs = {"cub": 5, "cars": 10, "sop": 10}[dataset]
  c.optimizer.gamma = 0.25 if dataset == "sop" else 0.5
  c.optimizer.warmup_epochs = 5
  c.optimizer.clip_value = 10.0
  c.optimizer.proxy_lr_mult = 100.0
  c.idml.a, c.idml.b = 4.0, 5.0
  c.idml.mixup = True
  if dataset == "sop":
    c.eval.ks = (1, 10, 100, 1000)
    c.eval.every_epochs = 5  # 60k test images: NMI and retrieval take minutes on CPU hosts.
  if "runlocal" in args:
    runlocal(c)
  return c
