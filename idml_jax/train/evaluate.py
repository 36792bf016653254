"""Evaluation during training: embed a split under jit (sharded, padded, masked), then the
metrics of :mod:`idml_jax.evaluation`."""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.experimental.multihost_utils import process_allgather

from idml_jax import evaluation
from idml_jax.data import SkipCounter, eval_batches, transforms
from idml_jax.train.steps import Embedder, Steps, to_global, variables


def embed_split(embedder: Embedder, variables: dict, source, skipped: SkipCounter | None = None,
                *, augment_seed=None) -> dict[str, np.ndarray]:
  """Embeds every image of ``source`` with the model's ``variables`` (``params``,
  ``batch_stats``): ``semantic`` [N, D] (classification: ``logits`` [N, C]),
  ``uncertainty_norm`` [N], ``labels`` [N], ``index`` [N] (unreadable images dropped and
  counted in ``skipped``). The config's test transform, or with ``augment_seed`` its
  training augmentation (a function of the seed and the image)."""
  cfg = embedder.config
  train_transform, test_transform = transforms.from_config(cfg)
  transform = test_transform if augment_seed is None else train_transform
  outs, idx = [], []
  for local in eval_batches(source, batch_size=cfg.eval.batch_size,
                            image_size=cfg.data.image_size, resize_size=cfg.data.resize_size,
                            process_index=jax.process_index(),
                            process_count=jax.process_count(),
                            num_threads=cfg.data.num_threads, skipped=skipped,
                            transform=transform, seed=augment_seed):
    out = embedder.embed(variables, to_global(embedder.mesh, {"image": local["image"]})["image"])
    outs.append(jax.device_get(out))
    # Global rows are the processes' local rows in process order.
    idx.append(np.asarray(process_allgather(np.where(local["mask"], local["index"], -1),
                                            tiled=True)))
  idx = np.concatenate(idx)
  keep = idx >= 0
  out = {k: np.concatenate([o[k] for o in outs])[keep] for k in outs[0]}
  return {**out, "labels": source.labels[idx[keep]], "index": idx[keep]}


def evaluate(steps: Steps, state, splits: dict,
             skipped: dict[str, SkipCounter] | None = None) -> tuple[dict, dict]:
  """The task's metrics on its evaluation splits (``test``, or In-Shop's query→gallery),
  with the risk–coverage report of each confidence score and the uncertainty's.

  Returns ``(metrics, emb)``: ``emb`` holds the embedded (query) split and per-query
  ``failed`` [Q] (a miss at Recall@1, a top-1 error), ``first_hit_rank`` and what the task
  adds (retrieval: ``nearest_score`` / ``second_score``; classification: ``calibration``,
  the reliability bins); and ``selective``: the risk–coverage curves of each confidence
  score (with ``combined``, cross-fitted by class); ``undefined``: the figures that cannot be
  computed on these queries, with the reason. ``metrics`` has their AURC / E-AURC / R-AUROC.
  """
  task = steps.task
  skipped = skipped or {}
  embedded = {n: embed_split(steps.embedder, variables(state), splits[n], skipped.get(n))
              for n in task.evaluation_splits(splits)}
  for name, e in embedded.items():
    if not len(e["labels"]):
      raise ValueError(f"None of the {len(splits[name])} {name} images could be read (the "
                       "warnings above name them): fix or remove them.")
  result = task.evaluate(embedded)
  metrics, emb = result.metrics, result.emb
  scalars, emb["selective"], emb["undefined"] = evaluation.selective_report(
      result.scores, ~emb["failed"], result.per_query, groups=emb["labels"])
  metrics.update(scalars)
  for what, why in emb["undefined"].items():
    logging.warning("%s is undefined: %s.", {"rauroc": "R-AUROC", "combined":
                                             "The combined confidence"}[what], why)
  for name, e in embedded.items():
    metrics[f"images_{name}"] = len(e["labels"])
    lost = len(splits[name]) - len(e["labels"])
    if lost:
      logging.warning("%d of %d %s images could not be read: the metrics are over the %d "
                      "that could.", lost, len(splits[name]), name, len(e["labels"]))
  return metrics, emb
