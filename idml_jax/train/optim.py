"""The papers' optimisers: parameter groups, step decay, warm-up, clipping by value.

Groups (``optax.multi_transform``): ``backbone`` (lr), ``head`` (lr × head_lr_mult),
``proxies`` (lr × proxy_lr_mult), and ``frozen`` (BatchNorm scale/shift when BN is
frozen: never updated). During the first ``warmup_epochs`` the backbone's learning
rate is 0 (only heads and proxies train). Every group: clip by value, then AdamW
(decoupled decay), or Adam / SGD with momentum with L2 added to the gradient (PyTorch's
``Adam`` / ``SGD``, the classification recipes').
"""

from __future__ import annotations

import flax
import jax.numpy as jnp
import ml_collections
import optax


def param_labels(params, train_bn: bool):
  """Pytree of group names matching ``{"model": ..., "proxies": ...}`` params."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  bn_modules = {path[:-1] for path in flat if path[-1] == "scale"}

  def label(path):
    if path[0] == "proxies":
      return "proxies"
    if len(path) > 1 and path[1] == "backbone":
      return "frozen" if (path[:-1] in bn_modules and not train_bn) else "backbone"
    return "head"

  return flax.traverse_util.unflatten_dict({p: label(p) for p in flat})


def learning_rate(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Step (× gamma every decay_epochs) or multi-step (× gamma at each boundary) decay."""
  opt = config.optimizer
  if opt.schedule == "step":
    return optax.exponential_decay(opt.lr, opt.decay_epochs * steps_per_epoch, opt.gamma,
                                   staircase=True)
  return optax.piecewise_constant_schedule(
      opt.lr, {int(b) * steps_per_epoch: opt.gamma for b in opt.boundaries})


def make_optimizer(config: ml_collections.ConfigDict, params,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  opt = config.optimizer
  base = learning_rate(config, steps_per_epoch)
  warmup = opt.warmup_epochs * steps_per_epoch

  def group(mult: float, frozen_until: int = 0):
    lr = lambda step: base(step) * mult * jnp.where(step >= frozen_until, 1.0, 0.0)
    parts = [optax.clip(opt.clip_value)] if opt.clip_value > 0 else []
    if opt.name == "adamw":
      parts.append(optax.adamw(lr, weight_decay=opt.weight_decay))
    elif opt.name == "sgd":
      parts += [optax.add_decayed_weights(opt.weight_decay),
                optax.sgd(lr, momentum=opt.momentum or None, nesterov=opt.nesterov)]
    else:
      parts += [optax.add_decayed_weights(opt.weight_decay), optax.adam(lr)]
    return optax.chain(*parts)

  return optax.multi_transform(
      {"backbone": group(1.0, warmup), "head": group(opt.head_lr_mult),
       "proxies": group(opt.proxy_lr_mult), "frozen": optax.set_to_zero()},
      param_labels(params, config.model.train_bn))
