"""The embedded default: IDML + Proxy-Anchor on real images that ``pip install`` brings,
about 2 minutes on a 2-core CPU.

    python -m idml_jax.main --config=configs/demo.py --workdir=runs/demo

Glyph retrieval (``idml_jax.data.glyphs``): a class is a character, its images are that
character as the fonts bundled with matplotlib draw it (DejaVu, STIX, Computer Modern);
79 characters train, 61 others test, 32 px. The recipe is ``configs/small_images.py``'s
with its ``resnet`` network (CIFAR-stem tiny ResNet from scratch, Adam,
pad-and-crop), IDML with Proxy-Anchor and
Mixup, for 760 steps; the untrained network is evaluated too. BENCHMARKS.md ("Real images",
"The demo") has the measured values and what the uncertainty does on it.

Argument (comma-separated): a dataset ``glyphs`` (default) | ``patches`` (crops of
scikit-image's photographs, 64 px) | ``digits`` (scikit-learn's 8×8 digits, the fastest);
``runlocal`` (a seconds-long smoke run).
"""

import os

from idml_jax.config_files import load_module, parse_arg, runlocal

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str = ""):
  args = parse_arg(arg, dataset=("glyphs", ("glyphs", "patches", "digits")),
                   flags=("runlocal",))
  # The network the demo's figures were measured with (README, BENCHMARKS.md "The demo").
  c = load_module(os.path.join(_HERE, "small_images.py")).build("idml", "pa", "resnet")
  c.data.source, c.data.name = "demo", args.dataset
  if args.dataset == "patches":
    c.data.image_size = c.data.resize_size = 64
  if args.dataset == "digits":
    c.data.images_per_class = 8  # 5 train classes: all of them in every batch.
  c.num_epochs = 20  # 20 × 38 = 760 steps of 40 images.
  c.eval.every_epochs = 10
  c.eval.at_start = True  # results.json["untrained"]: the same network before training.
  if args.runlocal:
    runlocal(c)
    if args.dataset == "digits":  # 5 train classes: 4 per batch of 16.
      c.data.images_per_class = 4
  return c
