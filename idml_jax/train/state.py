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
from idml_jax.models import convert, get_backbone, make_backbone
from idml_jax.models.layers import reinitialize_convolutions
from idml_jax.optim import make_optimizer
from idml_jax.tasks import Task


@flax.struct.dataclass
class TrainState:
  """Everything a step changes, carried explicitly (and checkpointed whole).

  Attributes:
    step: global step.
    params: ``{"model": model params, **the task's}`` (retrieval with a proxy loss:
      ``proxies`` [C, D]).
    batch_stats: BatchNorm statistics (updated only with ``model.batch_norm="train"``).
    opt_state: optax state.
    carry: what the method carries between steps (:meth:`idml_jax.methods.Method.init_carry`;
      empty for most).
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  carry: Any


def make_model(task: Task, num_classes: int = 0) -> nn.Module:
  """The task's model (:meth:`Task.make_model`) on its config's backbone."""
  config = task.config
  kwargs = {"pool": config.model.pooling} if get_backbone(config.model.backbone).vit else {}
  backbone = make_backbone(config.model.backbone,
                           train_bn=config_lib.batch_norm_mode(config) == "train",
                           dtype=jnp.dtype(config.model.dtype), **kwargs)
  return task.make_model(backbone, num_classes)


def _task_params(task: Task, num_classes: int) -> dict:
  """The task's parameters beside the model's (Proxy-Anchor's proxies)."""
  key = jax.random.fold_in(jax.random.PRNGKey(task.config.seed), 2)
  return task.init_params(key, num_classes)


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


def init_variables(task: Task, model: nn.Module, num_classes: int, *,
                   pretrained: bool = True) -> dict:
  """``{"params": {"model": ..., **the task's}, "batch_stats": ...}`` of a fresh model (the
  backbone's pretrained weights loaded if configured and ``pretrained``)."""
  config = task.config
  variables = _variables(config, model)
  if pretrained and config.model.pretrained:
    variables = convert.load_into(
        variables, convert.load_weights(config.model.pretrained, config.model.backbone),
        config.model.backbone)
  return {"params": {"model": variables["params"], **_task_params(task, num_classes)},
          "batch_stats": variables.get("batch_stats", {})}


def init_state(task: Task, model: nn.Module, tx: optax.GradientTransformation,
               num_classes: int, *, pretrained: bool = True) -> TrainState:
  """A fresh state (the backbone's pretrained weights loaded if configured and
  ``pretrained``)."""
  variables = init_variables(task, model, num_classes, pretrained=pretrained)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables["batch_stats"], opt_state=tx.init(params),
                    carry=task.method.init_carry(num_classes))


def _placed(abstract, sharding: Sharding | None):
  if sharding is None:
    return abstract
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                      abstract)


def abstract_variables(task: Task, model: nn.Module, num_classes: int,
                       sharding: Sharding | None = None) -> dict:
  """:func:`init_variables`' structure (``ShapeDtypeStruct`` leaves, with ``sharding``), from
  shapes alone: what embedding a trained model restores."""
  return _placed(jax.eval_shape(
      lambda: init_variables(task, model, num_classes, pretrained=False)), sharding)


def abstract_state(task: Task, model: nn.Module, num_classes: int, steps_per_epoch: int,
                   sharding: Sharding | None = None
                   ) -> tuple[TrainState, optax.GradientTransformation]:
  """The state's structure (``ShapeDtypeStruct`` leaves, with ``sharding``) and the
  optimiser, computed from shapes alone."""
  config = task.config
  params = abstract_variables(task, model, num_classes)["params"]
  tx = make_optimizer(config, params, steps_per_epoch,
                      batch_norm=config_lib.batch_norm_mode(config))
  abstract = jax.eval_shape(lambda: init_state(task, model, tx, num_classes, pretrained=False))
  return _placed(abstract, sharding), tx
