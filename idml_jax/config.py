"""The configuration schema, its policies, and the parser of config-file arguments.

Configs (``configs/*.py``) start from :func:`default_config` and override values;
``get_config(arg)`` reads its argument with :func:`parse_arg`. :func:`validate` runs
before any work: an unknown key, a bad value or an inconsistent combination fails with
the valid choices listed — taken from the tables that own them (``names.lookup``).
The policies every module asks about (which method uses the ISM, IAA, the neighbor
correction) are decided here, next to the schema.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence

import ml_collections

from idml_jax import data, evaluation, iaa, losses, mixing, models, names, optim

METHODS = ("baseline", "idml", "iaa", "idml+iaa")
TASKS = ("retrieval", "classification")
CLASSIFICATION_METHODS = ("baseline", "idml")  # Plain logits | ISM logits (§1.4).
BATCH_NORM_MODES = ("auto", "frozen", "frozen_stats", "train")
# Both papers apply the neighbor correction to datasets with more classes than this
# (SOP, In-Shop); the official code switches on the same count.
LARGE_DATASET_CLASSES = 1000


def uses_idml(method: str) -> bool:
  """The method has an uncertainty head and compares with the ISM."""
  return method in ("idml", "idml+iaa")


def uses_iaa(method: str) -> bool:
  """The method carries IAA class statistics and synthesises samples."""
  return method in ("iaa", "idml+iaa")


def neighbor_correction_on(config: ml_collections.ConfigDict, num_classes: int) -> bool:
  """``iaa.correction``: ``on``, ``off``, or ``auto`` (on above ``LARGE_DATASET_CLASSES``)."""
  mode = config.iaa.correction
  return mode == "on" or (mode == "auto" and num_classes > LARGE_DATASET_CLASSES)


def batch_norm_mode(config: ml_collections.ConfigDict) -> str:
  """``model.batch_norm`` with ``auto`` resolved: BatchNorm trains from scratch and stays
  frozen over pretrained weights (whose statistics are meaningful); ``none`` for backbones
  without BatchNorm (ViTs), whatever the setting."""
  if models.get_backbone(config.model.backbone).vit is not None:
    return "none"
  mode = config.model.batch_norm
  if mode == "auto":
    return "frozen" if config.model.pretrained else "train"
  return mode


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "retrieval"  # retrieval (the papers' DML) | classification (IDML §1.4)
  c.method = "idml"  # One of METHODS (classification: baseline | idml).
  c.loss = ml_collections.ConfigDict()
  c.loss.name = "proxy_anchor"
  c.loss.kwargs = ml_collections.ConfigDict()  # e.g. margin, alpha for proxy_anchor.

  c.model = ml_collections.ConfigDict()
  c.model.backbone = "resnet50"
  c.model.embedding_dim = 512
  c.model.pretrained = ""  # Orbax dir or .pth/.safetensors (idml_jax.models.convert).
  c.model.dtype = "float32"  # Compute dtype of the backbone; "bfloat16" on accelerators.
  # auto: train from scratch, frozen over pretrained weights | frozen: running statistics,
  # scale/shift not trained (the papers) | frozen_stats: running statistics, scale/shift
  # trained (the official codes) | train: batch statistics, all trained.
  c.model.batch_norm = "auto"
  # The uncertainty u (BENCHMARKS.md, "On which scale does the ISM's uncertainty act"):
  # relu_bounded: relu(W_u h-hat) with ||u|| = tanh(.) < 1, on the scale of dmu from mu-hat
  # | relu (unbounded) | l2_normalize (||u|| = 1: the official IDML code) | ...
  c.model.uncertainty_activation = "relu_bounded"
  c.model.uncertainty_init = "kaiming"  # kaiming (fan-out) | torch (nn.Linear's) | small
  c.model.uncertainty_input = "normalized_features"  # the head reads h-hat | features (h)
  c.model.pooling = "avg+max"  # CNNs: avg+max | avg | max; ViTs: token | avg
  c.model.head_bias = True  # The heads' bias (the papers' code); ViT DML recipes: False.

  c.data = ml_collections.ConfigDict()
  c.data.source = "demo"  # demo | folder | tfds
  c.data.name = "patches"
  c.data.data_dir = ""
  c.data.image_size = 224
  c.data.resize_size = 256
  c.data.sampler = "balanced"  # balanced (P×K) | random
  c.data.augment = "random_resized_crop"  # | pad_crop (CIFAR: pad 4, random 32 crop, flip)
  c.data.crop_scale = (0.08, 1.0)  # Random-resized crop's area range (official IAA: 0.16–1).
  c.data.interpolation = "bilinear"  # | lanczos (official IAA) | bicubic (ViT recipes)
  c.data.resize_mode = "shorter_side"  # Resize(256) | square: a 256² squash (official IAA)
  c.data.color_jitter = 0.0  # Brightness/contrast/saturation strength (ImageNet: 0.4).
  c.data.lighting = 0.0  # PCA lighting std (ImageNet: 0.1).
  c.data.images_per_class = 4
  c.data.num_threads = 8
  c.data.worker_count = 0

  c.batch_size = 120  # Global batch.
  c.num_epochs = 60
  c.max_steps_per_epoch = 0  # 0: len(train) // batch_size; IAA caps it at 300.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # adamw (decoupled) | adam, sgd (L2 in the gradient, as torch)
  c.optimizer.momentum = 0.9  # sgd
  c.optimizer.nesterov = False  # sgd
  c.optimizer.lr = 6e-4  # Backbone learning rate.
  c.optimizer.weight_decay = 1e-4
  c.optimizer.head_lr_mult = 1.0  # Embedding heads.
  c.optimizer.proxy_lr_mult = 100.0
  c.optimizer.uncertainty_head_group = "head"  # | backbone (official IDML: frozen in warm-up)
  c.optimizer.clip_value = 10.0  # 0 = no clipping.
  c.optimizer.schedule = "step"  # step (× gamma every decay_epochs) | multistep (at boundaries)
  c.optimizer.decay_epochs = 5
  c.optimizer.boundaries = (40, 60)
  c.optimizer.gamma = 0.5
  c.optimizer.warmup_epochs = 5  # Backbone frozen: only heads and proxies train.

  c.idml = ml_collections.ConfigDict()
  c.idml.a = 4.0
  c.idml.b = 5.0
  c.idml.mixup = True
  c.idml.mixup_alpha = 1.0
  c.idml.semantic_distance = "normalized"  # dmu from mu-hat (as the official code) | raw mu

  c.iaa = ml_collections.ConfigDict()
  c.iaa.start_epoch = 30
  c.iaa.update_every = 4
  c.iaa.strength = 0.8
  c.iaa.num_synthetic = 3
  c.iaa.momentum = 0.2
  c.iaa.correction = "auto"  # auto (on for > 1000 classes) | on | off
  c.iaa.num_neighbors = 25
  c.iaa.beta = 0.1
  c.iaa.tau = 40.0
  c.iaa.gamma = 0.1
  c.iaa.synthesis_root = "paper"  # Sigma^(1/2) for every copy | official (Sigma^(1/2^m))
  c.iaa.skip_singletons = False  # Official large-dataset estimate: one-image classes unmerged.
  c.iaa.estimate_augmented = False  # Estimate from training-augmented images (official).

  c.classification = ml_collections.ConfigDict()  # task="classification" only.
  c.classification.mixing = "none"  # none | mixup | cutmix
  c.classification.alpha = 1.0  # lam ~ Beta(alpha, alpha)
  c.classification.cutmix_prob = 1.0  # CutMix applied to a batch with this probability.
  c.classification.a = 0.0  # ISM logits (§1.4): a = 0, b = 5.
  c.classification.b = 5.0
  c.classification.uncertainty_dim = 512
  c.classification.bias = False  # A classifier bias; proxies = weight row + bias (official).

  c.eval = ml_collections.ConfigDict()
  c.eval.every_epochs = 1
  c.eval.ks = (1, 2, 4, 8)
  c.eval.backend = "exact"
  c.eval.nmi = True
  c.eval.kmeans = "jax"  # For NMI/F1: jax (scikit-learn's algorithm), jax_plain, sklearn.
  c.eval.batch_size = 128
  c.eval.at_start = False  # Also evaluate the untrained model (results.json "untrained").

  c.checkpoint_every_epochs = 1
  c.log_every_steps = 20
  c.paper = ml_collections.ConfigDict()  # The paper's numbers for this setting (idml_jax.report).
  return c


# Keys a resumed run (or ``--mode=eval``) may change: how long to train, how to evaluate and
# log, where the data and weights live, and the input pipeline's parallelism. Any other
# change makes a different run, which must start in a new workdir. A key ending in "." is
# a prefix (every key of that sub-config).
RESUMABLE_KEYS = ("num_epochs", "eval.", "log_every_steps", "checkpoint_every_epochs",
                  "data.data_dir", "data.num_threads", "data.worker_count", "model.pretrained")


class ConfigMismatchError(ValueError):
  """A workdir holds a run of another config."""


def _comparable(c) -> dict:
  """Flat config with JSON's value types (tuples -> lists), as run.json stores it."""
  as_dict = c.to_dict() if isinstance(c, ml_collections.ConfigDict) else c
  return flatten(ml_collections.ConfigDict(json.loads(json.dumps(as_dict, default=str))))


def run_changes(recorded: dict, config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """``{key: (recorded value, new value)}`` of every key ``config`` changes from the
  ``recorded`` config (a ``to_dict()``); raises :class:`ConfigMismatchError` listing the
  changes outside ``RESUMABLE_KEYS``."""
  old, new = _comparable(recorded), _comparable(config)
  changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k)}
  allowed = lambda k: any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_KEYS)
  refused = {k: v for k, v in changed.items() if not allowed(k)}
  if refused:
    listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in refused.items())
    may = ", ".join(k + "*" if k.endswith(".") else k for k in RESUMABLE_KEYS)
    raise ConfigMismatchError(
        f"This workdir's run was trained with another config ({listed}), so it cannot be "
        f"resumed or evaluated with this one: use a new --workdir, or drop those overrides. "
        f"A resume may change only {may}.")
  return changed


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


def from_file(spec: str) -> ml_collections.ConfigDict:
  """``"configs/demo.py:runlocal"`` -> that file's ``get_config("runlocal")`` (as ``--config``
  reads it; no argument after the path calls ``get_config()``)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  if module_spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"No config file {path!r}.")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any config to a seconds-long run (same data, tiny model, 2 × 2 steps): a ViT
  becomes ``vit_tiny`` (same pooling, patch 8), anything else ``resnet_tiny``."""
  c.model.backbone = "vit_tiny" if models.get_backbone(c.model.backbone).vit else "resnet_tiny"
  c.model.pretrained = ""
  c.model.embedding_dim = 32
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


# key -> the table (or tuple) its value must come from.
_CHOICES = {
    "task": TASKS,
    "method": METHODS,
    "loss.name": losses.ALL_LOSSES,
    "model.backbone": models.BACKBONES,
    "model.dtype": ("float32", "bfloat16"),
    "model.batch_norm": BATCH_NORM_MODES,
    "model.uncertainty_activation": models.UNCERTAINTY_ACTIVATIONS,
    "model.uncertainty_init": models.UNCERTAINTY_INITS,
    "model.uncertainty_input": models.UNCERTAINTY_INPUTS,
    "data.source": data.DATASETS,
    "data.sampler": data.SAMPLERS,
    "data.augment": data.transforms.TRAIN_TRANSFORMS,
    "data.interpolation": data.transforms.INTERPOLATIONS,
    "data.resize_mode": data.transforms.RESIZE_MODES,
    "optimizer.name": optim.OPTIMIZERS,
    "optimizer.schedule": optim.SCHEDULES,
    "optimizer.uncertainty_head_group": ("head", "backbone"),
    "classification.mixing": mixing.MIXINGS,
    "iaa.correction": ("auto", "on", "off"),
    "iaa.synthesis_root": iaa.SYNTHESIS_ROOTS,
    "idml.semantic_distance": ("raw", "normalized"),
    "eval.backend": evaluation.RETRIEVAL_BACKENDS,
    "eval.kmeans": evaluation.KMEANS_BACKENDS,
}
_FREE = ("loss.kwargs", "paper")  # Sub-dicts whose keys are not fixed by the schema.


def flatten(c: ml_collections.ConfigDict, prefix: str = "") -> dict:
  """``{"model.backbone": "resnet50", ...}`` (``loss.kwargs`` kept whole)."""
  out = {}
  for k, v in c.items():
    key = f"{prefix}{k}"
    if isinstance(v, ml_collections.ConfigDict) and key not in _FREE:
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming every problem, before any work starts."""
  schema, got = flatten(default_config()), flatten(config)
  errors = [f"unknown key {k!r} (valid keys: see idml_jax/config.py)"
            for k in sorted(set(got) - set(schema))]
  errors += [f"missing key {k!r}" for k in sorted(set(schema) - set(got))]
  for key, table in _CHOICES.items():
    if key in got and got[key] not in table:
      errors.append(f"{key}: " + names.unknown("value", got[key], table))
  backbone = models.BACKBONES.get(got.get("model.backbone"))
  if backbone is not None:
    pools = models.VIT_POOLS if backbone.vit else models.POOLINGS
    if got.get("model.pooling") not in pools:
      errors.append(f"model.pooling: {names.unknown('value', got.get('model.pooling'), pools)}"
                    f" ({'ViT' if backbone.vit else 'CNN'} backbone {got['model.backbone']!r})")
    if backbone.vit and got.get("data.image_size", 0) % backbone.vit.patch:
      errors.append(f"data.image_size {got['data.image_size']} must be a multiple of "
                    f"{got['model.backbone']}'s patch size {backbone.vit.patch}")
  source = got.get("data.source")
  if source in data.DATASETS and got.get("data.name") not in data.DATASETS[source]:
    errors.append("data.name: " + names.unknown(f"{source} dataset", got.get("data.name"),
                                                 data.DATASETS[source]))
  positive = ("batch_size", "num_epochs", "model.embedding_dim", "data.image_size",
              "optimizer.lr", "eval.batch_size", "data.images_per_class", "iaa.update_every")
  errors += [f"{k} must be > 0; got {got[k]}" for k in positive if k in got and not got[k] > 0]
  ks = got.get("eval.ks")
  if ks is not None and not (len(ks) and all(isinstance(k, int) and k > 0 for k in ks)):
    errors.append(f"eval.ks must be positive integers, e.g. (1, 2, 4, 8); got {ks!r}")
  classify = got.get("task") == "classification"
  if classify and got.get("method") not in CLASSIFICATION_METHODS:
    errors.append(f"task='classification' trains method baseline (plain logits) or idml (ISM "
                  f"logits); got method={got.get('method')!r}")
  if classify and got.get("data.sampler") == "balanced":
    errors.append("task='classification' samples uniformly: set data.sampler='random'")
  if not classify and got.get("classification.mixing", "none") != "none":
    errors.append("classification.mixing applies to task='classification' (retrieval IDML "
                  "uses idml.mixup)")
  if not classify and uses_iaa(got.get("method", "")) and \
      got.get("loss.name") in losses.PROXY_LOSSES:
    errors.append(f"method {got['method']!r} synthesises samples for pair losses; loss.name "
                  f"must be one of {sorted(losses.PAIR_LOSSES)}")
  if got.get("data.sampler") == "balanced" and got.get("batch_size", 0) % max(
      got.get("data.images_per_class", 1), 1):
    errors.append(f"batch_size {got['batch_size']} must be a multiple of data.images_per_class "
                  f"{got['data.images_per_class']}")
  if source == "folder" and not got.get("data.data_dir"):
    errors.append("data.source='folder' needs the folder holding the dataset: add "
                  "--config.data.data_dir=/path/to/datasets")
  if errors:
    raise ValueError("Invalid config:\n  " + "\n  ".join(errors))
