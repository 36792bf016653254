"""IAA: intra-class adaptive augmentation with neighbor correction, on pair losses.

Fu et al., TMM 2022 (ALGORITHMS.md §2.5). Argument: ``DATASET,LOSS[,BACKBONE][,tfds]
[,idml][,runlocal]`` with DATASET ``cub|cars|sop|inshop``, LOSS ``ms|contrastive|triplet``,
BACKBONE ``googlenet`` (default; the paper's main tables) or ``resnet50``/``bn_inception``;
``idml`` turns on the introspective similarity as well (method ``idml+iaa``).

    python -m idml_jax.main --config=configs/iaa.py:cub,ms --workdir=runs/iaa_cub_ms \\
        --config.data.data_dir=/data --config.model.pretrained=weights/googlenet

Paper R@1 (GoogLeNet 512-d, baseline → +IAA): CUB Triplet 54.4 → 58.9, Contrastive
57.3 → 61.7, MS 56.2 → 62.1; Cars MS 77.0 → 84.2; SOP MS 75.9 → 78.6; In-Shop MS
87.0 → 89.3. MS+IAA with ResNet-50: CUB 68.5, Cars 88.6, SOP 82.8, In-Shop 93.3.
Neighbor correction is on for > 1000 classes (SOP, In-Shop) and applied when sampling,
as in the paper (the official code computes it but samples from the raw covariance).
"""

from idml_jax.config import default_config, runlocal

LOSSES = {"ms": "multi_similarity", "contrastive": "contrastive", "triplet": "triplet"}


def get_config(arg: str = "cub,ms"):
  args = arg.split(",")
  dataset, loss = args[0], LOSSES[args[1]]
  backbone = next((a for a in args[2:] if a in ("googlenet", "resnet50", "bn_inception")),
                  "googlenet")
  large = dataset in ("sop", "inshop")
  c = default_config()
  c.method = "idml+iaa" if "idml" in args else "iaa"
  c.loss.name = loss
  c.model.backbone = backbone
  c.model.embedding_dim = 512
  c.data.source = "tfds" if "tfds" in args else "folder"
  c.data.name = dataset
  c.data.sampler = "balanced"
  c.data.images_per_class = 3 if large else 4
  c.batch_size = 180 if large else 128
  c.num_epochs = 100
  c.max_steps_per_epoch = 300
  c.optimizer.name = "adam"
  c.optimizer.lr = {"multi_similarity": 1e-4, "contrastive": 5e-5, "triplet": 3e-5}[loss]
  c.optimizer.weight_decay = 1e-5
  c.optimizer.head_lr_mult = 10.0
  c.optimizer.proxy_lr_mult = 1.0
  c.optimizer.schedule = "multistep"
  c.optimizer.boundaries = (40, 60, 80) if large else (40, 60)
  c.optimizer.gamma = 0.2
  c.optimizer.warmup_epochs = 0
  c.optimizer.clip_value = 0.0
  c.iaa.start_epoch = 30
  c.iaa.update_every = 4
  c.iaa.strength = 0.5 if (large and backbone != "googlenet") else (0.6 if large else 0.8)
  c.iaa.num_synthetic = 3
  c.iaa.correction = "auto"
  if dataset == "sop":
    c.eval.ks = (1, 10, 100, 1000)
    c.eval.every_epochs = 5
  if dataset == "inshop":
    c.eval.ks = (1, 10, 20, 30)
    c.eval.every_epochs = 5
  if "runlocal" in args:
    runlocal(c)
  return c
