"""The method seam: what each method carries in the train state, does between epochs and asks
of a train step. The training code (``idml_jax.train``) calls this interface and knows no
method; a task asks its method whether it compares with the ISM (:attr:`Method.introspective`)
and for extra candidates of a pair loss (:meth:`Method.candidates`).

* ``baseline``: nothing carried, nothing added.
* ``idml``: an uncertainty head, compared with the introspective similarity (IDML).
* ``iaa``: per-class statistics carried in the train state, re-estimated over the training set
  every ``iaa.update_every`` epochs from ``iaa.start_epoch`` (:meth:`IAA.epoch_pass`), and M
  synthetic samples per image from them in each step after ``iaa.start_epoch`` (IAA).
* ``idml+iaa``: both.

A new method is one :class:`Method` subclass and a row of ``METHODS``; a task trains every
method it does not refuse (:meth:`idml_jax.tasks.Task.trains`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from idml_jax import iaa, names

# Both papers apply the neighbor correction to datasets with more classes than this
# (SOP, In-Shop); the official code switches on the same count.
LARGE_DATASET_CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """What a method asks of the train steps of one epoch.

  Attributes:
    static: ``((name, value), ...)``, hashable: each distinct value compiles its own step.
    scalars: ``{name: host number}``, traced (a new value does not recompile).
  """

  static: tuple[tuple[str, Any], ...] = ()
  scalars: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class MethodStep:
  """What a method sees inside a traced train step: its ``carry`` (the train state's),
  its plan's ``static`` values and traced ``scalars``."""

  carry: Any
  static: dict[str, Any]
  scalars: dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class TrainSetPass:
  """What a method's pass over the training set may use.

  Attributes:
    embed: ``augment -> {"semantic": [N, D], "labels": [N], ...}``: the training set embedded
      by the current state, with the test transform or (``augment=True``) the training
      augmentation.
    sharding: where the carry lives (replicated over the mesh).
  """

  embed: Callable[[bool], dict[str, np.ndarray]]
  sharding: jax.sharding.Sharding


class Method:
  """The interface (the base class is a method that carries and adds nothing).

  Attributes:
    introspective: an uncertainty head, compared with the ISM (IDML).
    synthesizes: adds synthetic candidates to pair losses (so proxy losses are refused).
    pass_name: its pass over the training set (counted apart: skipped images, the ETA), or
      None without one.
    renamed_paths: checkpoint paths of the train state before its carry (``carry/``) was
      introduced -> today's path, or None where it is dropped (every method then had IAA's
      statistics, a one-class placeholder outside IAA).
  """

  introspective: ClassVar[bool] = False
  synthesizes: ClassVar[bool] = False
  pass_name: ClassVar[str | None] = None
  renamed_paths: ClassVar[dict[str, str | None]] = {"class_stats": None,
                                                    "class_stats_epoch": None}

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  def init_carry(self, num_classes: int) -> Any:
    """The carried state of a fresh run: a pytree of arrays (checkpointed with the state)."""
    return {}

  def plan(self, epoch: int) -> StepPlan:
    """The train steps of ``epoch``: static variant and traced scalars (host arithmetic)."""
    return StepPlan()

  def pass_due(self, epoch: int) -> bool:
    """Whether :meth:`epoch_pass` runs at the start of ``epoch``."""
    return False

  def epoch_pass(self, carry: Any, epoch: int, train_set: TrainSetPass) -> Any:
    """The new carry, at the start of ``epoch`` (where :meth:`pass_due`)."""
    return carry

  def passes_left(self, first_epoch: int, num_epochs: int) -> int:
    """How many passes are due at the starts of epochs ``first_epoch`` .. ``num_epochs - 1``."""
    return sum(1 for e in range(first_epoch, num_epochs) if self.pass_due(e))

  def draws(self, key: jax.Array, batch_size: int) -> dict[str, jax.Array]:
    """The method's random draws of one step."""
    return {}

  def candidates(self, step: MethodStep, draws: dict, semantic: jax.Array,
                 labels: jax.Array) -> tuple[jax.Array, jax.Array, int] | None:
    """Extra candidates of a pair loss for the batch's ``semantic`` [B, D] and ``labels``
    [B]: ``(z [M B, D], y [M B], M)``, or None."""
    return None


class Baseline(Method):
  """The loss on cosine similarities."""


class IDML(Method):
  """Semantic + uncertainty embeddings compared with the ISM (``ism.a``, ``ism.b``)."""

  introspective = True


def neighbor_correction_on(config: ml_collections.ConfigDict, num_classes: int) -> bool:
  """``iaa.correction``: ``on``, ``off``, or ``auto`` (on above ``LARGE_DATASET_CLASSES``)."""
  mode = config.iaa.correction
  return mode == "on" or (mode == "auto" and num_classes > LARGE_DATASET_CLASSES)


class IAA(Method):
  """Per-class statistics (``carry["class_stats"]``, re-estimated at ``carry["epoch"]``) and
  the synthetic samples drawn from them (docs/algorithms.md §2)."""

  synthesizes = True
  pass_name = "estimate"
  renamed_paths = {"class_stats": "carry/class_stats", "class_stats_epoch": "carry/epoch"}

  def __init__(self, config):
    super().__init__(config)
    self._update = jax.jit(self._update_fn, donate_argnums=0)

  def init_carry(self, num_classes):
    return {"class_stats": iaa.init(num_classes, self.config.model.embedding_dim),
            "epoch": jnp.full((), -1, jnp.int32)}  # -1: never estimated.

  def plan(self, epoch):
    cfg = self.config.iaa
    synthesize = epoch >= cfg.start_epoch
    strength = (iaa.strength_schedule(cfg.strength, epoch, self.config.num_epochs)
                if synthesize else 0.0)
    return StepPlan((("synthesize", synthesize),), {"strength": strength})

  def pass_due(self, epoch):
    cfg = self.config.iaa
    return epoch >= cfg.start_epoch and (epoch - cfg.start_epoch) % cfg.update_every == 0

  def epoch_pass(self, carry, epoch, train_set):
    """Re-estimates the class statistics over the whole training set (once per epoch: a
    resumed run does not repeat an estimate its checkpoint holds)."""
    if int(carry["epoch"]) >= epoch:
      return carry
    t = time.perf_counter()
    emb = train_set.embed(self.config.iaa.estimate_augmented)
    stats = self._update(carry["class_stats"], emb["semantic"],
                         emb["labels"].astype(np.int32))
    carry = jax.device_put({"class_stats": stats, "epoch": np.int32(epoch)}, train_set.sharding)
    jax.block_until_ready(carry)  # The estimate's time is the pass's, not the next steps'.
    logging.info("IAA class statistics re-estimated at epoch %d over %d images (%.1f s).",
                 epoch, len(emb["labels"]), time.perf_counter() - t)
    return carry

  def _update_fn(self, stats, embeddings, labels):
    cfg = self.config.iaa
    correct = neighbor_correction_on(self.config, stats.mean.shape[0])
    kwargs = dict(num_neighbors=cfg.num_neighbors, beta=cfg.beta, tau=cfg.tau,
                  gamma=cfg.gamma) if correct else {}
    return iaa.update(stats, embeddings, labels, momentum=cfg.momentum, correct=correct,
                      skip_singletons=cfg.skip_singletons, **kwargs)

  def update(self, carry, embeddings: np.ndarray, labels: np.ndarray):
    """``carry`` with its statistics updated from ``embeddings`` [N, D] and ``labels`` [N] (the
    jitted :func:`iaa.update` of the config; ``carry`` is donated)."""
    return {**carry, "class_stats": self._update(carry["class_stats"], embeddings, labels)}

  def draws(self, key, batch_size):
    return {"noise": iaa.synthesis_noise(key, self.config.iaa.num_synthetic, batch_size,
                                         self.config.model.embedding_dim)}

  def candidates(self, step, draws, semantic, labels):
    if not step.static["synthesize"]:
      return None
    cfg = self.config.iaa
    z, y = iaa.synthesize(draws["noise"], semantic, labels,
                          step.carry["class_stats"].synthesis_covariance,
                          lam=step.scalars["strength"], root=cfg.synthesis_root)
    return z, y, cfg.num_synthetic


class IDMLWithIAA(IAA):
  """IDML + IAA: synthetic samples inherit their source's uncertainty embedding and the
  boosted pair loss runs on the ISM."""

  introspective = True


METHODS: dict[str, type[Method]] = {"baseline": Baseline, "idml": IDML, "iaa": IAA,
                                    "idml+iaa": IDMLWithIAA}


def get_method(config: ml_collections.ConfigDict) -> Method:
  """The method of ``config.method``, bound to ``config``."""
  return names.lookup(METHODS, config.method, "method")(config)
