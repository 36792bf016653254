"""The task interface (:class:`Task`) and what its evaluation returns (:class:`Evaluation`);
``idml_jax.tasks`` holds the table of tasks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from idml_jax import evaluation, methods

# (params, images [B, H, W, 3]) -> model outputs (with ``batch_stats`` when BatchNorm trains).
ApplyFn = Callable[[Any, jax.Array], dict]


@dataclasses.dataclass
class Evaluation:
  """What a task's evaluation computed from the embedded splits.

  Attributes:
    metrics: scalar metrics (the primary one among them).
    emb: the embedded (query) split with per-query ``failed`` [Q] (bool) and
      ``first_hit_rank`` [Q] added, and whatever the figures need.
    scores: confidence scores [Q] for risk–coverage (``evaluation.confidence_scores``).
    per_query: per-query values [Q] to report at each coverage (e.g. ``recall@1``).
  """

  metrics: dict[str, float]
  emb: dict[str, np.ndarray]
  scores: dict[str, np.ndarray]
  per_query: dict[str, np.ndarray]


class Task:
  """The interface; :mod:`idml_jax.tasks.retrieval` and :mod:`.classification` implement it.
  A task is built for one config (``Task(config)``) and holds it and its method.

  Attributes:
    primary_metric: the metric that picks the best checkpoint.
    higher_is_better: its direction.
    embed_outputs: the model outputs evaluation keeps per image (besides ``uncertainty_norm``).
    config: the run's config; method: its :class:`idml_jax.methods.Method`.
  """

  primary_metric: str
  higher_is_better: bool = True
  embed_outputs: tuple[str, ...]

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.method = methods.get_method(config)

  @classmethod
  def trains(cls, method: type[methods.Method]) -> bool:
    """Whether the task trains ``method`` (the config refuses the others)."""
    return True

  def describe(self) -> str:
    """One line for the run's log: the method and its setting."""
    raise NotImplementedError

  def make_model(self, backbone: nn.Module, num_classes: int) -> nn.Module:
    """The model on ``backbone`` for ``num_classes`` training classes."""
    raise NotImplementedError

  def init_params(self, key: jax.Array, num_classes: int) -> dict[str, jax.Array]:
    """Trained parameters beside the model's (e.g. Proxy-Anchor's ``proxies``)."""
    return {}

  def loss(self, apply_fn: ApplyFn, params, images: jax.Array, labels: jax.Array, draws: dict,
           step: methods.MethodStep) -> tuple[jax.Array, dict]:
    """``(loss, aux)`` of one batch of normalised images [B, H, W, 3] with labels [B].

    ``params``: ``{"model": ..., **init_params}``; ``draws``: the step's random draws
    (:func:`idml_jax.tasks.step_draws`); ``step``: the method's carry and plan for this step.
    ``aux``: scalars to log, and the updated ``batch_stats`` when BatchNorm trains.
    """
    raise NotImplementedError

  def evaluation_splits(self, splits: dict) -> tuple[str, ...]:
    """The splits evaluation embeds: ``test``, or In-Shop's ``query`` and ``gallery``."""
    return ("query", "gallery") if "query" in splits else ("test",)

  def check_splits(self, splits: dict) -> None:
    """Refuses, before any training, test splits too small for the configured metrics."""

  def evaluate(self, embedded: dict[str, dict[str, np.ndarray]]) -> Evaluation:
    """Metrics from the embedded evaluation splits (``{"test": ...}`` or In-Shop's
    ``{"query": ..., "gallery": ...}``; each with ``labels`` [N] and ``embed_outputs``)."""
    raise NotImplementedError

  def uncertainty(self, emb: dict[str, np.ndarray]) -> np.ndarray | None:
    """The queries' ||u|| [Q] where the method has an uncertainty head, else None."""
    return emb["uncertainty_norm"] if self.method.introspective else None

  def uncertainty_metrics(self, emb: dict[str, np.ndarray]) -> dict[str, float]:
    """How ||u|| spreads and follows the failures (``evaluation.uncertainty_report``), or {}
    without an uncertainty head; ``emb`` has ``failed`` [Q]."""
    u = self.uncertainty(emb)
    return {} if u is None else evaluation.uncertainty_report(u, emb["failed"])
