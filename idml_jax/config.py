"""The configuration schema, its validation, and the policies every module asks about.

Configs (``configs/*.py``) start from :func:`default_config` and override values (the
config-file helpers are in :mod:`idml_jax.config_files`). :func:`validate` runs before any
work: an unknown key, a bad value or an inconsistent combination fails with the valid
choices listed — taken from the tables that own them (``names.lookup``); a key of an older
schema is refused with the name that replaced it (``RENAMED``). The method policies are the
methods' own (:mod:`idml_jax.methods`), which tasks train which the tasks' own
(:func:`task_methods`); BatchNorm's mode is decided here, next to the schema. The model's
defaults are the model classes' own (one source).
"""

from __future__ import annotations

import difflib

import ml_collections

from idml_jax import data, evaluation, iaa, losses, methods, mixing, models, names, optim, tasks

BATCH_NORM_MODES = ("auto", "frozen", "frozen_stats", "train")
# Names config files of earlier versions imported from here -> what replaced them.
REMOVED_NAMES = {
    "uses_idml": "idml_jax.methods.METHODS[method].introspective",
    "uses_iaa": "idml_jax.methods.METHODS[method].synthesizes",
    "neighbor_correction_on": "idml_jax.methods.neighbor_correction_on",
    "METHODS": "idml_jax.methods.METHODS", "TASK_METHODS": "idml_jax.config.task_methods(task)",
}
# Keys of earlier schemas -> what replaced them (refused, never aliased).
RENAMED = {
    "idml.a": "ism.a", "idml.b": "ism.b", "idml.semantic_distance": "ism.semantic_distance",
    "idml.mixup": "mixing.kind ('mixup' or 'none')", "idml.mixup_alpha": "mixing.alpha",
    "classification.a": "ism.a", "classification.b": "ism.b",
    "classification.mixing": "mixing.kind", "classification.alpha": "mixing.alpha",
    "classification.cutmix_prob": "mixing.cutmix_prob",
}


def task_methods(task: str) -> tuple[str, ...]:
  """The methods ``task`` trains (each of ``methods.METHODS`` its ``Task.trains`` accepts)."""
  return tuple(name for name, method in methods.METHODS.items()
               if tasks.TASKS[task].trains(method))


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
  c.method = "idml"  # One of task_methods(task) (idml_jax.methods).
  c.loss = ml_collections.ConfigDict()
  c.loss.name = "proxy_anchor"
  c.loss.kwargs = ml_collections.ConfigDict()  # e.g. margin, alpha for proxy_anchor.

  c.model = ml_collections.ConfigDict()
  c.model.backbone = "resnet50"
  embedding = models.EmbeddingModel  # Its field defaults are the config's (one source).
  c.model.embedding_dim = embedding.embedding_dim
  c.model.pretrained = ""  # Orbax dir or .pth/.safetensors (idml_jax.models.convert).
  # A from-scratch backbone's convolutions: kaiming_normal (torchvision's ResNet init, as
  # built) | torch (nn.Conv2d's default U(±1/sqrt(fan_in)); BENCHMARKS.md, "Real images").
  c.model.conv_init = "kaiming_normal"
  c.model.dtype = "float32"  # Compute dtype of the backbone; "bfloat16" on accelerators.
  # auto: train from scratch, frozen over pretrained weights | frozen: running statistics,
  # scale/shift not trained (the papers) | frozen_stats: running statistics, scale/shift
  # trained (the official codes) | train: batch statistics, all trained.
  c.model.batch_norm = "auto"
  # The uncertainty u (models.UNCERTAINTY_ACTIVATIONS; BENCHMARKS.md, "On which scale does
  # the ISM's uncertainty act"): relu_bounded by default | l2_normalize (the official code).
  c.model.uncertainty_activation = embedding.uncertainty_activation
  c.model.uncertainty_init = embedding.uncertainty_init  # kaiming | torch (nn.Linear's) | small
  c.model.uncertainty_input = embedding.uncertainty_input  # normalized_features (h-hat) | features
  c.model.pooling = embedding.pooling  # CNNs: avg+max | avg | max; ViTs: token | avg
  c.model.head_bias = embedding.head_bias  # The heads' bias (the papers' code); ViT DML: False.

  c.data = ml_collections.ConfigDict()
  c.data.source = "demo"  # demo | folder | tfds
  c.data.name = "patches"
  c.data.data_dir = ""
  c.data.image_size = 224
  c.data.resize_size = 256
  c.data.sampler = "balanced"  # balanced (P×K) | balanced_fill (official IAA) | random
  c.data.augment = "random_resized_crop"  # | pad_crop (CIFAR: pad 4, random 32 crop, flip)
  c.data.crop_scale = (0.08, 1.0)  # Random-resized crop's area range (official IAA: 0.16–1).
  c.data.flip = True  # Horizontal flips in training (off where a mirror image is another class).
  c.data.interpolation = "bilinear"  # | lanczos (official IAA) | bicubic (ViT recipes)
  c.data.resize_mode = "shorter_side"  # Resize(256) | square: a 256² squash (official IAA)
  c.data.color_jitter = 0.0  # Brightness/contrast/saturation strength (ImageNet: 0.4).
  c.data.lighting = 0.0  # PCA lighting std (ImageNet: 0.1).
  c.data.images_per_class = 4
  c.data.num_threads = 8
  c.data.worker_count = 0
  c.data.device_prefetch = 2  # Batches put on the devices ahead of the step (big_vision's).

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

  # The introspective similarity (IDML §1.2, docs/algorithms.md §1.2), both tasks:
  # retrieval a = 4, b = 5; classification's ISM logits (§1.4) a = 0.
  c.ism = ml_collections.ConfigDict()
  c.ism.a = 4.0
  c.ism.b = 5.0
  c.ism.semantic_distance = "normalized"  # dmu from mu-hat (as the official code) | raw mu
  # Pair losses' du_ij: sum = ||u_i||² + ||u_j||² (§1.3) | anchor = ||u_i||² (each row sees
  # the others as it sees proxies; benchmarks/studies/realdata measures both).
  c.ism.pair_uncertainty = "sum"

  # Image mixing inside the step, both tasks: none | mixup | cutmix, lam ~ Beta(alpha, alpha).
  # Retrieval (IDML's Mixup): L(x, y) + lam L(x~, y) + (1 - lam) L(x~, y[pi]);
  # classification: lam CE(out, y) + (1 - lam) CE(out, y[pi]).
  c.mixing = ml_collections.ConfigDict()
  c.mixing.kind = "none"
  c.mixing.alpha = 1.0
  c.mixing.cutmix_prob = 1.0  # CutMix applied to a batch with this probability.

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

  c.classification = ml_collections.ConfigDict()  # The classifier (task="classification").
  c.classification.uncertainty_dim = models.ClassifierModel.uncertainty_dim
  c.classification.bias = models.ClassifierModel.bias  # Proxies = weight row + bias (official).

  c.eval = ml_collections.ConfigDict()
  c.eval.every_epochs = 1
  c.eval.ks = (1, 2, 4, 8)
  c.eval.backend = "rank_count"  # evaluation.RETRIEVAL_BACKENDS
  c.eval.nmi = True
  c.eval.kmeans = "jax"  # For NMI/F1: jax (scikit-learn's algorithm), jax_plain, sklearn.
  c.eval.batch_size = 128
  c.eval.at_start = False  # Also evaluate the untrained model (results.json "untrained").

  c.checkpoint_every_epochs = 1
  c.log_every_steps = 20
  # JAX's persistent compilation cache (a folder): a re-run or resumed job does not
  # recompile ("": off). Shared by jobs of one JAX version; the CLI sets it.
  c.compile_cache_dir = ""
  c.paper = ml_collections.ConfigDict()  # The paper's numbers for this setting (idml_jax.report).
  return c


# key -> the table (or tuple) its value must come from.
_CHOICES = {
    "task": tasks.TASKS,
    "method": methods.METHODS,
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
    "mixing.kind": mixing.MIXINGS,
    "iaa.correction": ("auto", "on", "off"),
    "iaa.synthesis_root": iaa.SYNTHESIS_ROOTS,
    "ism.semantic_distance": ("raw", "normalized"),
    "ism.pair_uncertainty": ("sum", "anchor"),
    "model.conv_init": models.CONV_INITS,
    "eval.backend": evaluation.RETRIEVAL_BACKENDS,
    "eval.kmeans": evaluation.KMEANS_BACKENDS,
}
FREE_KEYS = ("loss.kwargs", "paper")  # Sub-dicts whose keys are not fixed by the schema.


def flatten(c: ml_collections.ConfigDict, prefix: str = "") -> dict:
  """``{"model.backbone": "resnet50", ...}`` (``loss.kwargs`` kept whole)."""
  out = {}
  for k, v in c.items():
    key = f"{prefix}{k}"
    if isinstance(v, ml_collections.ConfigDict) and key not in FREE_KEYS:
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def unknown_key(key: str) -> str:
  """Why ``key`` is not in the schema, in one line: the key that replaced it
  (``RENAMED``), or the closest valid keys."""
  if key in RENAMED:
    return f"{key} was renamed: use {RENAMED[key]}"
  close = difflib.get_close_matches(key, list(flatten(default_config())), n=3, cutoff=0.8)
  return (f"{key}: no such key" + (f" (did you mean {', '.join(close)}?)" if close else
                                    " (the valid keys are default_config's in idml_jax/config.py)"))


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming every problem, before any work starts."""
  schema, got = flatten(default_config()), flatten(config)
  errors = [unknown_key(k) for k in sorted(set(got) - set(schema))]
  errors += [f"missing key {k!r}" for k in sorted(set(schema) - set(got))]
  for key, table in _CHOICES.items():
    if key in got and got[key] not in table:
      renamed = evaluation.RENAMED_BACKENDS.get(got[key]) if key == "eval.backend" else None
      errors.append(f"{key}: " + (f"{got[key]!r} was renamed: use {renamed!r}" if renamed else
                                  names.unknown("value", got[key], table)))
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
  if got.get("data.device_prefetch", 0) < 0:
    errors.append(f"data.device_prefetch must be >= 0; got {got['data.device_prefetch']}")
  ks = got.get("eval.ks")
  if ks is not None and not (len(ks) and all(isinstance(k, int) and k > 0 for k in ks)):
    errors.append(f"eval.ks must be positive integers, e.g. (1, 2, 4, 8); got {ks!r}")
  task, method = got.get("task"), got.get("method", "")
  if task in tasks.TASKS and method in methods.METHODS and method not in task_methods(task):
    errors.append(f"task={task!r} trains method {' or '.join(task_methods(task))}; got "
                  f"method={method!r}")
  if task == "classification" and got.get("data.sampler") == "balanced":
    errors.append("task='classification' samples uniformly: set data.sampler='random'")
  if (method in methods.METHODS and methods.METHODS[method].synthesizes
      and got.get("loss.name") in losses.PROXY_LOSSES):
    errors.append(f"method {method!r} synthesises samples for pair losses; loss.name "
                  f"must be one of {sorted(losses.PAIR_LOSSES)}")
  if not 0 < got.get("mixing.alpha", 1.0):
    errors.append(f"mixing.alpha must be > 0 (lam ~ Beta(alpha, alpha)); got {got['mixing.alpha']}")
  if got.get("data.sampler") == "balanced" and got.get("batch_size", 0) % max(
      got.get("data.images_per_class", 1), 1):
    errors.append(f"batch_size {got['batch_size']} must be a multiple of data.images_per_class "
                  f"{got['data.images_per_class']}")
  if source == "folder" and not got.get("data.data_dir"):
    errors.append("data.source='folder' needs the folder holding the dataset: add "
                  "--config.data.data_dir=/path/to/datasets")
  if errors:
    raise ValueError("Invalid config:\n  " + "\n  ".join(errors))
