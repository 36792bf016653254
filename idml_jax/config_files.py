"""Helpers of config files (``configs/*.py``), as big_vision's ``configs/common.py``:
:func:`parse_arg` reads a config file's argument, :func:`from_file` loads a config file as
``--config`` does, :func:`runlocal` shrinks any config to a seconds-long smoke run.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

import ml_collections

from idml_jax import models


def parse_arg(arg: str, *, flags: Sequence[str] = (),
              **groups: tuple[str | None, Sequence[str]]) -> ml_collections.ConfigDict:
  """A config file's argument: comma-separated words, each refused unless known.

  Every word is a value of one group (``groups[name] = (default, choices)``; a default of
  None makes the group required), a flag (True when present), or ``name=value``. E.g.
  ``parse_arg("cub,ms,runlocal", dataset=(None, ("cub", "sop")), loss=("ms", ("ms",)),
  flags=("runlocal",))`` -> ``{dataset: "cub", loss: "ms", runlocal: True}``.
  """
  owner = {}
  for group, (_, choices) in groups.items():
    for choice in choices:
      if choice in owner or choice in flags:
        raise ValueError(f"parse_arg: {choice!r} belongs to two groups.")
      owner[choice] = group
  out = ml_collections.ConfigDict({g: d for g, (d, _) in groups.items()})
  out.update({f: False for f in flags})
  valid = "; ".join([f"{g}: {', '.join(c)}" for g, (_, c) in groups.items()]
                    + ([f"flags: {', '.join(flags)}"] if flags else []))
  for word in filter(None, (w.strip() for w in arg.split(","))):
    group, _, value = word.partition("=")
    if value and group in groups and value in groups[group][1]:
      out[group] = value
    elif word in owner:
      out[owner[word]] = word
    elif word in flags:
      out[word] = True
    else:
      raise ValueError(f"Unknown config argument {word!r}; valid words: {valid}.")
  missing = [g for g in groups if out[g] is None]
  if missing:
    raise ValueError(f"The config argument needs a {' and a '.join(missing)}; valid words: "
                     f"{valid}.")
  return out


def load_module(path: str):
  """The config file at ``path`` as a module (a config file may build on another's
  functions: ``configs/vit.py`` on ``idml_pa.build`` and ``iaa.build``)."""
  module_spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  if module_spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"No config file {path!r}.")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def from_file(spec: str) -> ml_collections.ConfigDict:
  """``"configs/demo.py:runlocal"`` -> that file's ``get_config("runlocal")`` (as ``--config``
  reads it; no argument after the path calls ``get_config()``)."""
  path, _, arg = spec.partition(":")
  module = load_module(path)
  return module.get_config(arg) if arg else module.get_config()


def runlocal(c: ml_collections.ConfigDict,
             backbone: str | None = None) -> ml_collections.ConfigDict:
  """Shrinks any config to a seconds-long run (same data, tiny model, 2 × 2 steps): a ViT
  becomes ``vit_tiny`` (same pooling, patch 8), a CIFAR-stem ResNet ``resnet_tiny_cifar``,
  anything else ``resnet_tiny`` (or ``backbone``); the heads 32-d."""
  name = c.model.backbone
  c.model.backbone = backbone or ("vit_tiny" if models.get_backbone(name).vit else
                                  "resnet_tiny_cifar" if name.endswith("_cifar") else
                                  "resnet_tiny")
  c.model.pretrained = ""
  c.model.embedding_dim = 32
  c.classification.uncertainty_dim = 32
  c.model.dtype = "float32"
  c.data.image_size = c.data.resize_size = 32
  c.data.images_per_class = 2
  c.batch_size = 16
  c.eval.batch_size = 32
  c.num_epochs = 2
  c.max_steps_per_epoch = 2
  c.optimizer.warmup_epochs = min(c.optimizer.warmup_epochs, 1)
  c.iaa.start_epoch = min(c.iaa.start_epoch, 1)
  c.iaa.update_every = 1
  c.eval.every_epochs = 1
  c.eval.nmi = False
  c.log_every_steps = 1
  return c
