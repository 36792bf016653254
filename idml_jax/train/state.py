"""The train state pytree and its initialisation."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from idml_jax import iaa, losses
from idml_jax.models import ClassifierModel, EmbeddingModel, convert, make_backbone
from idml_jax.train import objective
from idml_jax.train.optim import make_optimizer


@flax.struct.dataclass
class TrainState:
  """Everything a step changes, carried explicitly (and checkpointed whole).

  Attributes:
    step: global step.
    params: ``{"model": model params, "proxies": [C, D]}`` (proxies only for retrieval
      with proxy losses).
    batch_stats: BatchNorm statistics (frozen unless ``model.train_bn``).
    opt_state: optax state.
    class_stats: IAA per-class statistics (a 1-class placeholder for other methods).
    class_stats_epoch: last epoch at which ``class_stats`` were re-estimated (-1: never).
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  class_stats: iaa.ClassStats
  class_stats_epoch: jax.Array


def make_model(config: ml_collections.ConfigDict, num_classes: int = 0) -> nn.Module:
  """The embedding model (retrieval) or the classifier (``num_classes`` outputs)."""
  backbone = make_backbone(config.model.backbone, train_bn=config.model.train_bn,
                           dtype=jnp.dtype(config.model.dtype))
  if config.task == "classification":
    if num_classes < 2:
      raise ValueError(f"A classifier needs num_classes >= 2; got {num_classes}.")
    cfg = config.classification
    return ClassifierModel(backbone, num_classes, uncertainty=objective.uses_idml(config.method),
                           uncertainty_dim=cfg.uncertainty_dim, a=cfg.a, b=cfg.b)
  return EmbeddingModel(backbone, config.model.embedding_dim,
                        uncertainty=objective.uses_idml(config.method),
                        uncertainty_activation=config.model.uncertainty_activation,
                        pooling=config.model.pooling)


def init_state(config: ml_collections.ConfigDict, model: nn.Module,
               num_classes: int) -> TrainState:
  """Initial state, pretrained backbone loaded if configured; ``opt_state`` is None (see
  :func:`create`: the optimizer's groups are built from these params)."""
  key = jax.random.PRNGKey(config.seed)
  size = config.data.image_size
  variables = model.init(jax.random.fold_in(key, 1), jnp.zeros((1, size, size, 3)))
  if config.model.pretrained:
    variables = convert.load_into(variables,
                                  convert.load(config.model.pretrained, config.model.backbone))
  params = {"model": variables["params"]}
  if config.task == "retrieval" and config.loss.name in losses.PROXY_LOSSES:
    dim = config.model.embedding_dim
    # Kaiming-normal, fan-out: std = sqrt(2 / C) (ALGORITHMS.md §1.5).
    params["proxies"] = jax.random.normal(jax.random.fold_in(key, 2), (num_classes, dim)) * \
        jnp.sqrt(2.0 / num_classes)
  n_stats = num_classes if objective.uses_iaa(config.method) else 1  # Retrieval only.
  stats = iaa.ClassStats.create(n_stats, config.model.embedding_dim)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=None,
                    class_stats=stats, class_stats_epoch=jnp.full((), -1, jnp.int32))


def create(config: ml_collections.ConfigDict, model: nn.Module, num_classes: int,
           steps_per_epoch: int) -> tuple[TrainState, optax.GradientTransformation]:
  """The initial state with its optimizer state, and the optimizer."""
  state = init_state(config, model, num_classes)
  tx = make_optimizer(config, state.params, steps_per_epoch)
  return state.replace(opt_state=tx.init(state.params)), tx
