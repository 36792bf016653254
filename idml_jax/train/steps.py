"""Compiled, data-parallel steps: one global-view ``jax.jit`` over a ``("data",)`` mesh.

The batch is sharded over the mesh's ``data`` axis and the state replicated, so the loss
always sees the **global** batch, exactly as on one device; XLA inserts the
collectives. Randomness is ``fold_in(key, step)``, never stored.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from idml_jax import methods, optim, tasks
from idml_jax.config import batch_norm_mode
from idml_jax.data.transforms import color_augment, normalize
from idml_jax.models import get_backbone
from idml_jax.train.state import TrainState, abstract_state, init_state, make_model


def make_mesh(devices=None) -> Mesh:
  """A 1-D ``("data",)`` mesh over ``devices`` (default: all devices of all processes)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def to_global(mesh: Mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays sharded over ``data``."""
  sharding = NamedSharding(mesh, P("data"))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def prefetch_to_device(batches: Iterator[dict[str, np.ndarray]], mesh: Mesh, size: int,
                       keys=("image", "label")) -> Iterator[dict[str, jax.Array]]:
  """Global device batches (``keys`` of this process's rows, :func:`to_global`), put on the
  devices ``size`` batches ahead of the one the step uses, so the copy overlaps the steps
  before it (big_vision's ``n_prefetch``; 0: put when needed)."""
  queue = collections.deque()
  for local in batches:
    queue.append(to_global(mesh, {k: v for k, v in local.items() if k in keys}))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def replicate(mesh: Mesh, tree):
  return jax.device_put(tree, replicated(mesh))


class Embedder:
  """The jitted embed step of a task's model on a mesh (BatchNorm's running statistics)."""

  def __init__(self, task: tasks.Task, model, mesh: Mesh):
    self.task, self.config, self.mesh = task, task.config, mesh
    self.model = (model.clone(backbone=model.backbone.clone(train_bn=False))
                  if batch_norm_mode(task.config) == "train" else model)
    self.spec = get_backbone(task.config.model.backbone).input_spec
    self.embed = jax.jit(self._embed, out_shardings=replicated(mesh))

  def _embed(self, variables, images) -> dict[str, jax.Array]:
    """``{"params", "batch_stats"}`` and uint8 images [B, H, W, 3] -> ``uncertainty_norm``
    [B] (0 without an uncertainty head) and the task's ``embed_outputs`` (retrieval:
    ``semantic`` [B, D]; classification: its logits [B, C])."""
    out = self.model.apply({"params": variables["params"]["model"],
                            "batch_stats": variables["batch_stats"]},
                           normalize(images, self.spec))
    unc = out.get("uncertainty")
    norm = jnp.linalg.norm(unc, axis=-1) if unc is not None else jnp.zeros(images.shape[:1])
    return {**{k: out[k] for k in self.task.embed_outputs if k in out}, "uncertainty_norm": norm}


def variables(state: TrainState) -> dict:
  """What embedding reads of a train state."""
  return {"params": state.params, "batch_stats": state.batch_stats}


class Steps:
  """The jitted train step of one config (compiled once per variant) and its embedder, with
  the task (and its method), the model, the optimiser, the abstract train state and the
  mesh they run on."""

  def __init__(self, task: tasks.Task, model, tx: optax.GradientTransformation, mesh: Mesh,
               abstract: TrainState, num_classes: int, warmup_steps: int = 0):
    self.task, self.method, self.config = task, task.method, task.config
    self.model, self.tx, self.mesh = model, tx, mesh
    self.abstract, self.num_classes, self.warmup_steps = abstract, num_classes, warmup_steps
    self.train_bn = batch_norm_mode(self.config) == "train"
    self.embedder = Embedder(task, model, mesh)
    self.spec = self.embedder.spec
    self.key = jax.random.PRNGKey(self.config.seed)
    self._train = {}
    self._repl = replicated(mesh)

  @classmethod
  def build(cls, config: ml_collections.ConfigDict, num_classes: int, steps_per_epoch: int,
            mesh: Mesh) -> Steps:
    """The model of ``config`` for ``num_classes`` training classes, its optimiser (schedules
    in units of ``steps_per_epoch``) and abstract state, replicated over ``mesh``."""
    task = tasks.get_task(config)
    model = make_model(task, num_classes)
    abstract, tx = abstract_state(task, model, num_classes, steps_per_epoch, replicated(mesh))
    return cls(task, model, tx, mesh, abstract, num_classes,
               optim.warmup_steps(config, steps_per_epoch))

  def fresh_state(self, pretrained: bool = True) -> TrainState:
    """A freshly initialised state (pretrained backbone loaded), replicated on the mesh."""
    return replicate(self.mesh, init_state(self.task, self.model, self.tx, self.num_classes,
                                           pretrained=pretrained))

  def embed(self, state: TrainState, images: jax.Array) -> dict[str, jax.Array]:
    """:meth:`Embedder.embed` of ``state``."""
    return self.embedder.embed(variables(state), images)

  def _apply(self, batch_stats, train_backbone: bool):
    def apply(model_params, images):
      if not train_backbone:  # Warm-up: no gradient through the backbone.
        model_params = {**model_params,
                        "backbone": jax.lax.stop_gradient(model_params["backbone"])}
      variables = {"params": model_params, "batch_stats": batch_stats}
      if not self.train_bn:
        return self.model.apply(variables, images)
      out, updated = self.model.apply(variables, images, mutable=["batch_stats"])
      return {**out, "batch_stats": updated["batch_stats"]}
    return apply

  def trains_backbone(self, step: int) -> bool:
    """Whether global step ``step`` trains the backbone (after the warm-up): the same
    clock (:func:`optim.in_warmup`) as the optimiser's freeze of the backbone group."""
    return not optim.in_warmup(step, self.warmup_steps)

  def draws(self, step: jax.Array, batch_size: int) -> dict[str, jax.Array]:
    """The random draws of train step ``step`` (:func:`tasks.step_draws`)."""
    return tasks.step_draws(self.task, jax.random.fold_in(self.key, step), batch_size)

  def compiles(self, plan: methods.StepPlan, *, train_backbone: bool) -> bool:
    """Whether :meth:`train_step` compiles on this variant's next call (its first)."""
    return (plan.static, train_backbone) not in self._train

  def train_step(self, state: TrainState, batch: dict, plan: methods.StepPlan, *,
                 train_backbone: bool) -> tuple[TrainState, dict]:
    """One optimiser step on a global batch.

    Args:
      state: the replicated train state (donated: do not reuse it).
      batch: ``image`` uint8 [B, H, W, 3] and ``label`` int [B], sharded over ``data``.
      plan: the method's plan for this step's epoch (:meth:`Method.plan`).
      train_backbone: gradients reach the backbone (:meth:`trains_backbone`).
    Returns:
      ``(new state, metrics)``: device scalars (``loss``, ``grad_norm`` and the task's).
    Each ``(plan.static, train_backbone)`` variant compiles once.
    """
    variant = (plan.static, train_backbone)
    if variant not in self._train:
      fn = functools.partial(self._train_step, static=dict(plan.static),
                             train_backbone=train_backbone)
      self._train[variant] = jax.jit(fn, donate_argnums=0,
                                     out_shardings=(self._repl, self._repl))
    scalars = {k: jnp.float32(v) for k, v in plan.scalars.items()}
    return self._train[variant](state, batch, scalars)

  def _train_step(self, state, batch, scalars, *, static, train_backbone):
    """The traced step: the step's draws, colour augmentation and normalisation, the task's
    loss and its gradient, one optimiser update (see :meth:`train_step`)."""
    draws = self.draws(state.step, batch["image"].shape[0])
    images = batch["image"]
    if "color" in draws:  # The ImageNet recipe's colour jitter + lighting, on [0, 1] RGB.
      images = color_augment(images.astype(jnp.float32) / 255.0, draws["color"])
    images = normalize(images, self.spec)
    apply_fn = self._apply(state.batch_stats, train_backbone)
    step = methods.MethodStep(state.carry, static, scalars)

    def loss_fn(params):
      return self.task.loss(apply_fn, params, images, batch["label"], draws, step)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    batch_stats = aux.pop("batch_stats", state.batch_stats)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         batch_stats=batch_stats), metrics
