"""The task seam: what a config trains, as Scenic's task/model split.

A :class:`Task`, built for one config, says what the model is, which parameters it has
beside the model's, the loss, what evaluation computes from the embedded test splits, and
the primary metric (and its direction); it holds the config's method
(:mod:`idml_jax.methods`). The training code (``idml_jax.train``) asks ``get_task(config)``
and never tests ``config.task`` or ``config.method``. A new task is one module implementing
:class:`Task` and a row of ``TASKS``; the methods it trains are those its
:meth:`Task.trains` accepts (``config.task_methods``).

Every task shares the step's draws (:func:`step_draws`): the configured mixing
(``mixing.kind``: Mixup / CutMix, :mod:`idml_jax.mixing`), the colour augmentation and the
method's own (IAA's synthesis noise).
"""

from __future__ import annotations

import jax
import ml_collections

from idml_jax import mixing, names
from idml_jax.data import transforms
from idml_jax.tasks.base import ApplyFn, Evaluation, Task
from idml_jax.tasks.classification import ClassificationTask
from idml_jax.tasks.retrieval import RetrievalTask

TASKS: dict[str, type[Task]] = {"retrieval": RetrievalTask,
                                "classification": ClassificationTask}


def get_task(config: ml_collections.ConfigDict) -> Task:
  """The task of ``config.task``, built for ``config``."""
  return names.lookup(TASKS, config.task, "task")(config)


def step_draws(task: Task, key: jax.Array, batch_size: int) -> dict[str, jax.Array]:
  """Every random draw of one step: the mixing's (:func:`mixing.draw`: ``lam``, ``perm`` [B],
  CutMix's ``box`` and ``apply``), ``color`` (:func:`transforms.color_draws`) with colour
  jitter or lighting, and the method's own (IAA's synthesis ``noise`` [M, B, D])."""
  config = task.config
  k_mix, k_method, k_color = jax.random.split(key, 3)
  out = {}
  if config.data.color_jitter or config.data.lighting:
    out["color"] = transforms.color_draws(k_color, batch_size, config.data.color_jitter,
                                          config.data.lighting)
  cfg = config.mixing
  if cfg.kind != "none":
    size = config.data.image_size
    out |= mixing.draw(k_mix, cfg.kind, batch_size, size, size, alpha=cfg.alpha,
                       prob=cfg.cutmix_prob)
  return out | task.method.draws(k_method, batch_size)


__all__ = ["TASKS", "ApplyFn", "Evaluation", "Task", "get_task", "step_draws"]
