"""The train state pytree: its model, its abstract shape, and a fresh initialisation.

As in big_vision, the state's structure comes from ``jax.eval_shape`` (no computation, no
file read): a resumed run or ``--mode=eval`` restores the checkpoint into that abstract
state, and only a fresh start initialises parameters and loads pretrained weights.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Sharding

from idml_jax import config as config_lib
from idml_jax import iaa, losses
from idml_jax.models import ClassifierModel, EmbeddingModel, convert, get_backbone, make_backbone
from idml_jax.optim import make_optimizer


@flax.struct.dataclass
class TrainState:
  """Everything a step changes, carried explicitly (and checkpointed whole).

  Attributes:
    step: global step.
    params: ``{"model": model params, "proxies": [C, D]}`` (proxies only for retrieval
      with proxy losses).
    batch_stats: BatchNorm statistics (updated only with ``model.batch_norm="train"``).
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
  kwargs = {"pool": config.model.pooling} if get_backbone(config.model.backbone).vit else {}
  backbone = make_backbone(config.model.backbone,
                           train_bn=config_lib.batch_norm_mode(config) == "train",
                           dtype=jnp.dtype(config.model.dtype), **kwargs)
  idml = config_lib.uses_idml(config.method)
  if config.task == "classification":
    if num_classes < 2:
      raise ValueError(f"A classifier needs num_classes >= 2; got {num_classes}.")
    cfg = config.classification
    return ClassifierModel(backbone, num_classes, uncertainty=idml,
                           uncertainty_dim=cfg.uncertainty_dim,
                           uncertainty_init=config.model.uncertainty_init, bias=cfg.bias,
                           a=cfg.a, b=cfg.b)
  return EmbeddingModel(backbone, config.model.embedding_dim, uncertainty=idml,
                        uncertainty_activation=config.model.uncertainty_activation,
                        uncertainty_init=config.model.uncertainty_init,
                        uncertainty_input=config.model.uncertainty_input,
                        pooling=config.model.pooling, head_bias=config.model.head_bias)


def _variables(config: ml_collections.ConfigDict, model: nn.Module) -> dict:
  size = config.data.image_size
  return model.init(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1),
                    jnp.zeros((1, size, size, 3)))


def init_state(config: ml_collections.ConfigDict, model: nn.Module,
               tx: optax.GradientTransformation, num_classes: int, *,
               pretrained: bool = True) -> TrainState:
  """A fresh state (the backbone's pretrained weights loaded if configured and
  ``pretrained``)."""
  key = jax.random.PRNGKey(config.seed)
  variables = _variables(config, model)
  if pretrained and config.model.pretrained:
    variables = convert.load_into(
        variables, convert.load_weights(config.model.pretrained, config.model.backbone),
        config.model.backbone)
  params = {"model": variables["params"]}
  if config.task == "retrieval" and config.loss.name in losses.PROXY_LOSSES:
    dim = config.model.embedding_dim
    # Kaiming-normal, fan-out: std = sqrt(2 / C) (docs/algorithms.md §1.5).
    params["proxies"] = jax.random.normal(jax.random.fold_in(key, 2), (num_classes, dim)) * \
        jnp.sqrt(2.0 / num_classes)
  n_stats = num_classes if config_lib.uses_iaa(config.method) else 1
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    class_stats=iaa.init(n_stats, config.model.embedding_dim),
                    class_stats_epoch=jnp.full((), -1, jnp.int32))


def abstract_state(config: ml_collections.ConfigDict, model: nn.Module, num_classes: int,
                   steps_per_epoch: int, sharding: Sharding | None = None
                   ) -> tuple[TrainState, optax.GradientTransformation]:
  """The state's structure (``ShapeDtypeStruct`` leaves, with ``sharding``) and the
  optimiser, computed from shapes alone."""
  shapes = jax.eval_shape(lambda: _variables(config, model))
  params = {"model": shapes["params"]}
  if config.task == "retrieval" and config.loss.name in losses.PROXY_LOSSES:
    params["proxies"] = jax.ShapeDtypeStruct((num_classes, config.model.embedding_dim),
                                             jnp.float32)
  tx = make_optimizer(config, params, steps_per_epoch,
                      batch_norm=config_lib.batch_norm_mode(config))
  abstract = jax.eval_shape(lambda: init_state(config, model, tx, num_classes, pretrained=False))
  if sharding is not None:
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                            abstract)
  return abstract, tx
