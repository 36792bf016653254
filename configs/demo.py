"""The embedded default: IDML + IAA on the shipped demo data, a few minutes on a 2-core CPU.

    python -m idml_jax.main --config=configs/demo.py --workdir=/tmp/idml_demo

Patch-identity retrieval on scikit-image's bundled photographs (10 train / 10 test
classes, 40 crops each, 64 px), a tiny ResNet from scratch (BatchNorm trains), the
Multi-Similarity loss on the introspective similarity with Mixup, and IAA synthesis from
epoch 4. Expect test Recall@1 well above the untrained network's (BENCHMARKS.md has the
measured values).

Argument (comma-separated): ``digits`` (scikit-learn's digits instead), ``runlocal`` (a
seconds-long smoke run).
"""

from idml_jax.config import default_config
from idml_jax.config_files import parse_arg, runlocal


def get_config(arg: str = ""):
  args = parse_arg(arg, flags=("digits", "runlocal"))
  c = default_config()
  c.method = "idml+iaa"
  c.loss.name = "multi_similarity"
  c.mixing.kind = "mixup"  # IDML's Mixup.
  c.model.backbone = "resnet_tiny"
  c.model.embedding_dim = 64
  c.data.source = "demo"
  c.data.name = "digits" if args.digits else "patches"
  c.data.image_size = c.data.resize_size = 32 if args.digits else 64
  c.data.images_per_class = 8 if args.digits else 4  # digits: 5 train classes per batch
  c.data.num_threads = 4
  c.batch_size = 40
  c.num_epochs = 12
  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-3
  c.optimizer.head_lr_mult = 10.0
  c.optimizer.schedule = "multistep"
  c.optimizer.boundaries = (8,)
  c.optimizer.gamma = 0.2
  c.optimizer.warmup_epochs = 0  # Trained from scratch: nothing to protect.
  c.iaa.start_epoch = 4
  c.iaa.update_every = 2
  c.iaa.strength = 0.8
  c.eval.every_epochs = 4
  c.eval.batch_size = 80
  c.eval.at_start = True  # results.json["untrained"]: the same network before training.
  c.log_every_steps = 10
  if args.runlocal:
    runlocal(c)
    if args.digits:  # 5 train classes: 4 per batch of 16.
      c.data.images_per_class = 4
  return c
