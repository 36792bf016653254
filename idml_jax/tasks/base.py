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

from idml_jax import iaa

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

  Attributes:
    primary_metric: the metric that picks the best checkpoint.
    higher_is_better: its direction.
    embed_outputs: the model outputs evaluation keeps per image (besides ``uncertainty_norm``).
  """

  primary_metric: str
  higher_is_better: bool = True
  embed_outputs: tuple[str, ...]

  def describe(self, config: ml_collections.ConfigDict) -> str:
    """One line for the run's log: the method and its setting."""
    raise NotImplementedError

  def make_model(self, config: ml_collections.ConfigDict, backbone: nn.Module,
                 num_classes: int) -> nn.Module:
    """The model on ``backbone`` for ``num_classes`` training classes."""
    raise NotImplementedError

  def init_params(self, config: ml_collections.ConfigDict, key: jax.Array,
                  num_classes: int) -> dict[str, jax.Array]:
    """Trained parameters beside the model's (e.g. Proxy-Anchor's ``proxies``)."""
    return {}

  def draws(self, config: ml_collections.ConfigDict, key: jax.Array,
            batch_size: int) -> dict[str, jax.Array]:
    """The task's own random draws of one step (beyond :func:`step_draws`' shared ones)."""
    return {}

  def loss(self, config: ml_collections.ConfigDict, apply_fn: ApplyFn, params, images: jax.Array,
           labels: jax.Array, draws: dict, stats: iaa.ClassStats, strength: jax.Array,
           synthesize: bool) -> tuple[jax.Array, dict]:
    """``(loss, aux)`` of one batch of normalised images [B, H, W, 3] with labels [B].

    ``params``: ``{"model": ..., **init_params}``; ``stats``, ``strength``, ``synthesize``:
    IAA's class statistics, its ``lambda_e`` and whether synthesis is on this step.
    ``aux``: scalars to log, and the updated ``batch_stats`` when BatchNorm trains.
    """
    raise NotImplementedError

  def evaluation_splits(self, splits: dict) -> tuple[str, ...]:
    """The splits evaluation embeds: ``test``, or In-Shop's ``query`` and ``gallery``."""
    return ("query", "gallery") if "query" in splits else ("test",)

  def check_splits(self, config: ml_collections.ConfigDict, splits: dict) -> None:
    """Refuses, before any training, test splits too small for the configured metrics."""

  def evaluate(self, config: ml_collections.ConfigDict,
               embedded: dict[str, dict[str, np.ndarray]]) -> Evaluation:
    """Metrics from the embedded evaluation splits (``{"test": ...}`` or In-Shop's
    ``{"query": ..., "gallery": ...}``; each with ``labels`` [N] and ``embed_outputs``)."""
    raise NotImplementedError
