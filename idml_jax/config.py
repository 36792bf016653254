"""The configuration schema: every key a config may set, its default, and its valid values.

Configs (``configs/*.py``) start from :func:`default_config` and override values.
:func:`validate` runs before any work: an unknown key, a bad value or an
inconsistent combination fails with the valid choices listed.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from idml_jax import losses
from idml_jax.data import SOURCES
from idml_jax.evaluation import KMEANS_BACKENDS, RETRIEVAL_BACKENDS
from idml_jax.models import BACKBONES

METHODS = ("baseline", "idml", "iaa", "idml+iaa")
TASKS = ("retrieval", "classification")
CLASSIFICATION_METHODS = ("baseline", "idml")  # Plain logits | ISM logits (§1.4).


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
  c.model.train_bn = False  # Retrieval papers freeze BatchNorm; classification trains it.
  c.model.uncertainty_activation = "relu"  # "l2_normalize" = the official IDML code.
  c.model.pooling = "avg+max"

  c.data = ml_collections.ConfigDict()
  c.data.source = "demo"  # demo | folder | tfds
  c.data.name = "patches"
  c.data.data_dir = ""
  c.data.image_size = 224
  c.data.resize_size = 256
  c.data.sampler = "balanced"  # balanced (P×K) | random
  c.data.augment = "random_resized_crop"  # | pad_crop (CIFAR: pad 4, random 32 crop, flip)
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

  c.classification = ml_collections.ConfigDict()  # task="classification" only.
  c.classification.mixing = "none"  # none | mixup | cutmix
  c.classification.alpha = 1.0  # lam ~ Beta(alpha, alpha)
  c.classification.cutmix_prob = 1.0  # CutMix applied to a batch with this probability.
  c.classification.a = 0.0  # ISM logits (§1.4): a = 0, b = 5.
  c.classification.b = 5.0
  c.classification.uncertainty_dim = 512

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
  return c


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
  """Shrinks any config to a seconds-long run (same data, tiny model, 2 × 2 steps)."""
  c.model.backbone = "resnet_tiny"
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


_CHOICES = {
    "task": TASKS,
    "method": METHODS,
    "loss.name": tuple(sorted(losses.ALL_LOSSES)),
    "model.backbone": tuple(sorted(BACKBONES)),
    "model.dtype": ("float32", "bfloat16"),
    "model.uncertainty_activation": ("relu", "softplus", "identity", "l2_normalize"),
    "model.pooling": ("avg+max", "avg", "max"),
    "data.source": SOURCES,
    "data.sampler": ("balanced", "random"),
    "data.augment": ("random_resized_crop", "pad_crop"),
    "optimizer.name": ("adamw", "adam", "sgd"),
    "classification.mixing": ("none", "mixup", "cutmix"),
    "optimizer.schedule": ("step", "multistep"),
    "iaa.correction": ("auto", "on", "off"),
    "eval.backend": RETRIEVAL_BACKENDS,
    "eval.kmeans": tuple(KMEANS_BACKENDS),
}
_FREE = ("loss.kwargs",)  # Sub-dicts whose keys are not fixed by the schema.


def _flatten(c, prefix=""):
  out = {}
  for k, v in c.items():
    key = f"{prefix}{k}"
    if isinstance(v, ml_collections.ConfigDict) and key not in _FREE:
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming every problem, before any work starts."""
  schema, got = _flatten(default_config()), _flatten(config)
  errors = [f"unknown key {k!r} (valid keys: see idml_jax/config.py)"
            for k in sorted(set(got) - set(schema))]
  errors += [f"missing key {k!r}" for k in sorted(set(schema) - set(got))]
  for key, choices in _CHOICES.items():
    if key in got and got[key] not in choices:
      errors.append(f"{key}={got[key]!r}; valid: {', '.join(map(str, choices))}")
  positive = ("batch_size", "num_epochs", "model.embedding_dim", "data.image_size",
              "optimizer.lr", "eval.batch_size", "data.images_per_class", "iaa.update_every")
  errors += [f"{k} must be > 0; got {got[k]}" for k in positive if k in got and not got[k] > 0]
  classify = got.get("task") == "classification"
  if classify and got.get("method") not in CLASSIFICATION_METHODS:
    errors.append(f"task='classification' trains method baseline (plain logits) or idml (ISM "
                  f"logits); got method={got.get('method')!r}")
  if classify and got.get("data.sampler") == "balanced":
    errors.append("task='classification' samples uniformly: set data.sampler='random'")
  if not classify and got.get("classification.mixing", "none") != "none":
    errors.append("classification.mixing applies to task='classification' (retrieval IDML "
                  "uses idml.mixup)")
  if not classify and got.get("method") in ("iaa", "idml+iaa") and \
      got.get("loss.name") in losses.PROXY_LOSSES:
    errors.append(f"method {got['method']!r} synthesises samples for pair losses; loss.name "
                  f"must be one of {sorted(losses.PAIR_LOSSES)}")
  if got.get("data.sampler") == "balanced" and got.get("batch_size", 0) % max(
      got.get("data.images_per_class", 1), 1):
    errors.append(f"batch_size {got['batch_size']} must be a multiple of data.images_per_class "
                  f"{got['data.images_per_class']}")
  if got.get("data.source") == "folder" and not got.get("data.data_dir"):
    errors.append("data.source='folder' needs the folder holding the dataset: add "
                  "--config.data.data_dir=/path/to/datasets")
  if got.get("data.source") == "tfds" and got.get("data.name") == "inshop":
    errors.append("In-Shop has no TFDS builder: use data.source='folder'")
  if errors:
    raise ValueError("Invalid config:\n  " + "\n  ".join(errors))
