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
from idml_jax import iaa
from idml_jax.models import convert, get_backbone, make_backbone
from idml_jax.models.layers import reinitialize_convolutions
from idml_jax.optim import make_optimizer
from idml_jax.tasks import get_task


@flax.struct.dataclass
class TrainState:
  """Everything a step changes, carried explicitly (and checkpointed whole).

  Attributes:
    step: global step.
    params: ``{"model": model params, **the task's}`` (retrieval with a proxy loss:
      ``proxies`` [C, D]).
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
  """The task's model (:meth:`Task.make_model`) on the configured backbone."""
  kwargs = {"pool": config.model.pooling} if get_backbone(config.model.backbone).vit else {}
  backbone = make_backbone(config.model.backbone,
                           train_bn=config_lib.batch_norm_mode(config) == "train",
                           dtype=jnp.dtype(config.model.dtype), **kwargs)
  return get_task(config).make_model(config, backbone, num_classes)


def _task_params(config: ml_collections.ConfigDict, num_classes: int) -> dict:
  """The task's parameters beside the model's (Proxy-Anchor's proxies)."""
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
  return get_task(config).init_params(config, key, num_classes)


def _variables(config: ml_collections.ConfigDict, model: nn.Module) -> dict:
  size = config.data.image_size
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
  variables = model.init(key, jnp.zeros((1, size, size, 3)))
  if config.model.conv_init != "kaiming_normal":  # model.conv_init: the backbone's convs.
    params = dict(variables["params"])
    params["backbone"] = reinitialize_convolutions(params["backbone"],
                                                   jax.random.fold_in(key, 1),
                                                   config.model.conv_init)
    variables = {**variables, "params": params}
  return variables


def init_state(config: ml_collections.ConfigDict, model: nn.Module,
               tx: optax.GradientTransformation, num_classes: int, *,
               pretrained: bool = True) -> TrainState:
  """A fresh state (the backbone's pretrained weights loaded if configured and
  ``pretrained``)."""
  variables = _variables(config, model)
  if pretrained and config.model.pretrained:
    variables = convert.load_into(
        variables, convert.load_weights(config.model.pretrained, config.model.backbone),
        config.model.backbone)
  params = {"model": variables["params"], **_task_params(config, num_classes)}
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
  params = {"model": shapes["params"],
            **jax.eval_shape(lambda: _task_params(config, num_classes))}
  tx = make_optimizer(config, params, steps_per_epoch,
                      batch_norm=config_lib.batch_norm_mode(config))
  abstract = jax.eval_shape(lambda: init_state(config, model, tx, num_classes, pretrained=False))
  if sharding is not None:
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                            abstract)
  return abstract, tx
