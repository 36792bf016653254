"""The papers' optimisers as PyTorch runs them: parameter groups, schedules, warm-up, clipping.

Groups (``optax.multi_transform``): ``backbone`` (lr), ``head`` (lr × head_lr_mult),
``proxies`` (lr × proxy_lr_mult) and ``frozen`` (never updated: BatchNorm scale/shift when
``model.batch_norm="frozen"``). Each group: clip by value, then the optimiser of
``OPTIMIZERS`` (AdamW's decoupled decay; Adam and SGD with L2 added to the gradient, as
``torch.optim.Adam`` / ``SGD``), then the learning rate of the global step.

Warm-up: the backbone group is frozen for its first ``warmup_epochs`` (``--warm`` of the
official IDML code, which sets ``requires_grad=False``). torch's optimisers then skip the
parameters entirely — no moments, no step count, no weight decay — so their first unfrozen
step is a fresh step 1. :func:`frozen_until` does the same: while frozen, the group's
updates are zero and its optimiser state does not advance. One clock decides the warm-up,
:func:`in_warmup` of the global step: the optimiser's freeze and the train step's
``stop_gradient`` through the backbone both ask it. The learning-rate schedule counts
global steps (``StepLR`` is stepped every epoch, frozen or not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from idml_jax import names


def _scale_by_adam() -> optax.GradientTransformation:
  """torch's Adam direction. The betas are float32 so that a moment's ``1 - beta`` and its
  bias correction ``1 - beta^t`` round alike (with Python floats they differ by 5e-5 for
  beta2 = 0.999, a systematic 1e-5 error in the first updates)."""
  return optax.scale_by_adam(b1=jnp.float32(0.9), b2=jnp.float32(0.999), eps=1e-8)


def _adamw(opt) -> optax.GradientTransformation:
  return optax.chain(_scale_by_adam(), optax.add_decayed_weights(opt.weight_decay))


def _adam(opt) -> optax.GradientTransformation:
  return optax.chain(optax.add_decayed_weights(opt.weight_decay), _scale_by_adam())


def _sgd(opt) -> optax.GradientTransformation:
  return optax.chain(optax.add_decayed_weights(opt.weight_decay),
                     optax.trace(decay=opt.momentum, nesterov=opt.nesterov))


# ``optimizer.name`` -> the direction of an update (before the learning rate), torch's
# defaults: Adam(W) betas (0.9, 0.999), eps 1e-8; SGD dampening 0.
OPTIMIZERS: dict[str, Callable[[ml_collections.ConfigDict], optax.GradientTransformation]] = {
    "adamw": _adamw,  # torch.optim.AdamW: decoupled weight decay (IDML).
    "adam": _adam,  # torch.optim.Adam: L2 in the gradient (IAA).
    "sgd": _sgd,  # torch.optim.SGD with momentum / Nesterov, L2 (classification).
}
SCHEDULES = ("step", "multistep")


def warmup_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """How many global steps the backbone stays frozen (``optimizer.warmup_epochs``)."""
  return config.optimizer.warmup_epochs * steps_per_epoch


def in_warmup(step, num_warmup_steps: int):
  """Whether global step ``step`` (0-based; a Python int or a traced array) is in the
  warm-up: the one clock of both the optimiser's freeze and the step's stop-gradient."""
  return step < num_warmup_steps


class FrozenUntilState(NamedTuple):
  count: jax.Array
  inner: optax.OptState


def frozen_until(inner: optax.GradientTransformation,
                 num_steps: int) -> optax.GradientTransformation:
  """``inner`` after ``num_steps`` updates; before, zero updates and ``inner``'s state kept.

  So the first unfrozen update is ``inner``'s first (a fresh Adam step 1), as for a torch
  parameter that had ``requires_grad=False`` until then.
  """

  def init(params):
    return FrozenUntilState(jnp.zeros((), jnp.int32), inner.init(params))

  def update(updates, state, params=None):
    new_updates, new_inner = inner.update(updates, state.inner, params)
    frozen = in_warmup(state.count, num_steps)  # count = the global step of this update.
    keep = lambda new, old: jnp.where(frozen, old, new)
    return (jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), new_updates),
            FrozenUntilState(state.count + 1, jax.tree.map(keep, new_inner, state.inner)))

  return optax.GradientTransformation(init, update)


def param_labels(params, config: ml_collections.ConfigDict, batch_norm: str):
  """Pytree of group names matching ``{"model": ..., "proxies": ...}`` params.

  ``batch_norm``: the resolved ``config.batch_norm_mode`` (``frozen`` puts BatchNorm's
  scale and shift in the ``frozen`` group)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  bn_modules = {path[:-1] for path in flat if path[-1] == "scale"}
  frozen_bn = batch_norm == "frozen"  # ViTs' LayerNorms also have "scale": mode "none".
  uncertainty_group = config.optimizer.uncertainty_head_group

  def label(path):
    if path[0] == "proxies":
      return "proxies"
    if len(path) > 1 and path[1] == "backbone":
      return "frozen" if (path[:-1] in bn_modules and frozen_bn) else "backbone"
    if len(path) > 1 and path[1] == "uncertainty":
      return uncertainty_group
    return "head"

  return flax.traverse_util.unflatten_dict({p: label(p) for p in flat})


def learning_rate(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Step (× gamma every decay_epochs) or multi-step (× gamma at each boundary epoch) decay,
  a function of the global step."""
  opt = config.optimizer
  if opt.schedule == "step":
    return optax.exponential_decay(opt.lr, opt.decay_epochs * steps_per_epoch, opt.gamma,
                                   staircase=True)
  return optax.piecewise_constant_schedule(
      opt.lr, {int(b) * steps_per_epoch: opt.gamma for b in opt.boundaries})


def make_optimizer(config: ml_collections.ConfigDict, params, steps_per_epoch: int, *,
                   batch_norm: str) -> optax.GradientTransformation:
  """The optimiser of ``config`` over ``params`` (arrays or ``ShapeDtypeStruct``s);
  ``batch_norm``: the resolved ``config.batch_norm_mode(config)``."""
  opt = config.optimizer
  direction = names.lookup(OPTIMIZERS, opt.name, "optimizer")
  lr = learning_rate(config, steps_per_epoch)
  warmup = warmup_steps(config, steps_per_epoch)

  def group(mult: float, frozen_steps: int = 0) -> optax.GradientTransformation:
    parts = [optax.clip(opt.clip_value)] if opt.clip_value > 0 else []
    parts.append(frozen_until(direction(opt), frozen_steps) if frozen_steps else direction(opt))
    parts.append(optax.scale_by_schedule(lambda step: -mult * lr(step)))
    return optax.chain(*parts)

  return optax.multi_transform(
      {"backbone": group(1.0, warmup), "head": group(opt.head_lr_mult),
       "proxies": group(opt.proxy_lr_mult), "frozen": optax.set_to_zero()},
      param_labels(params, config, batch_norm))
