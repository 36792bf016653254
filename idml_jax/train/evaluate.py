"""Evaluation during training: embed a split under jit (sharded, padded, masked), then the
metrics of :mod:`idml_jax.evaluation`."""

from __future__ import annotations

import logging

import jax
import ml_collections
import numpy as np
from jax.experimental.multihost_utils import process_allgather

from idml_jax import evaluation
from idml_jax.config import uses_idml
from idml_jax.data import SkipCounter, eval_batches, transforms
from idml_jax.train.steps import Steps, to_global


def embed_split(steps: Steps, state, source, skipped: SkipCounter | None = None, *,
                augment_seed=None) -> dict[str, np.ndarray]:
  """Embeds every image of ``source``: ``semantic`` [N, D] (classification: ``logits``
  [N, C]), ``uncertainty_norm`` [N], ``labels`` [N], ``index`` [N] (unreadable images
  dropped and counted in ``skipped``). The config's test transform, or with
  ``augment_seed`` its training augmentation (a function of the seed and the image)."""
  cfg = steps.config
  train_transform, test_transform = transforms.from_config(cfg)
  transform = test_transform if augment_seed is None else train_transform
  outs, idx = [], []
  for local in eval_batches(source, batch_size=cfg.eval.batch_size,
                            image_size=cfg.data.image_size, resize_size=cfg.data.resize_size,
                            process_index=jax.process_index(),
                            process_count=jax.process_count(),
                            num_threads=cfg.data.num_threads, skipped=skipped,
                            transform=transform, seed=augment_seed):
    out = steps.embed(state, to_global(steps.mesh, {"image": local["image"]})["image"])
    outs.append(jax.device_get(out))
    # Global rows are the processes' local rows in process order.
    idx.append(np.asarray(process_allgather(np.where(local["mask"], local["index"], -1),
                                            tiled=True)))
  idx = np.concatenate(idx)
  keep = idx >= 0
  out = {k: np.concatenate([o[k] for o in outs])[keep] for k in outs[0]}
  return {**out, "labels": source.labels[idx[keep]], "index": idx[keep]}


def evaluation_splits(splits: dict) -> tuple[str, ...]:
  """The splits evaluation embeds: ``test``, or In-Shop's ``query`` and ``gallery``."""
  return ("query", "gallery") if "query" in splits else ("test",)


def check_splits(config: ml_collections.ConfigDict, splits: dict) -> None:
  """Refuses, before any training, test splits too small for the configured metrics, and
  warns about degenerate ones (metrics that cannot mean anything)."""
  if config.task == "classification":
    return
  names = evaluation_splits(splits)
  labels = [splits[n].labels for n in names]
  gallery = len(labels[-1]) - (1 if len(names) == 1 else 0)
  if max(config.eval.ks) > gallery:
    raise ValueError(f"eval.ks={tuple(config.eval.ks)} needs at least {max(config.eval.ks)} "
                     f"gallery items, but the {names[-1]} split has {gallery}"
                     f"{' besides each query' if len(names) == 1 else ''}: use "
                     f"--config.eval.ks=... with smaller K, or a larger test split.")
  classes, counts = np.unique(labels[-1], return_counts=True)
  if len(classes) < 2:
    logging.warning("The %s split has a single class: every neighbour is relevant, so "
                    "Recall@K, R-Precision and MAP@R are trivially 1.", names[-1])
  elif len(names) == 1 and np.all(counts < 2):
    logging.warning("No class of the test split has two images: no query has a relevant "
                    "item, so every retrieval metric is 0.")


def evaluate(steps: Steps, state, splits: dict,
             skipped: dict[str, SkipCounter] | None = None) -> tuple[dict, dict]:
  """Metrics on the test split (or In-Shop's query→gallery).

  Returns ``(metrics, emb)``: ``emb`` holds the embedded (query) split and per-query
  ``failed`` [Q] (a miss at Recall@1, a top-1 error), ``first_hit_rank`` and, for
  retrieval, ``nearest_score`` / ``second_score`` of the nearest gallery items; and
  ``selective``: the risk–coverage curves of each confidence score (and, classification,
  ``calibration``: the reliability bins). ``metrics`` has their AURC / E-AURC (and ECE).
  """
  cfg = steps.config
  skipped = skipped or {}
  embedded = {n: embed_split(steps, state, splits[n], skipped.get(n))
              for n in evaluation_splits(splits)}
  if cfg.task == "classification":
    emb = embedded["test"]
    rank = evaluation.true_class_rank(emb["logits"], emb["labels"])
    metrics = evaluation.classification_metrics(emb["logits"], emb["labels"])
    emb.update(first_hit_rank=rank, failed=rank > 0)
    per_query = {"top1": rank == 0}
    calibration = {"softmax": evaluation.expected_calibration_error(
        evaluation.softmax_confidence(emb["logits"]), rank == 0)}
    if "introspective_logits" in emb:
      ism_rank = evaluation.true_class_rank(emb["introspective_logits"], emb["labels"])
      calibration["ism"] = evaluation.expected_calibration_error(
          evaluation.softmax_confidence(emb["introspective_logits"]), ism_rank == 0)
    metrics.update({f"ece_{k}": v["ece"] for k, v in calibration.items()})
    emb["calibration"] = calibration
    scores = evaluation.confidence_scores(
        uncertainty_norm=emb["uncertainty_norm"] if uses_idml(cfg.method) else None,
        logits=emb["logits"])
  else:
    ks = tuple(cfg.eval.ks)
    emb, gallery = (embedded["query"], embedded["gallery"]) if "query" in embedded else \
        (embedded["test"], None)
    ranks = evaluation.query_ranks(
        emb["semantic"], emb["labels"], None if gallery is None else gallery["semantic"],
        None if gallery is None else gallery["labels"], max_k=max(ks), backend=cfg.eval.backend)
    metrics = ranks.metrics(ks)
    emb.update(first_hit_rank=ranks.first_hit_rank, failed=ranks.first_hit_rank > 0,
               nearest_score=ranks.nearest_score, second_score=ranks.second_score,
               **{f"query_{k}": v for k, v in ranks.per_query().items()})
    if cfg.eval.nmi and gallery is None:
      metrics.update(evaluation.clustering_metrics(emb["semantic"], emb["labels"],
                                                   backend=cfg.eval.kmeans, seed=cfg.seed))
    per_query = {"recall@1": ~emb["failed"], "map@r": emb["query_map@r"]}
    scores = evaluation.confidence_scores(
        uncertainty_norm=emb["uncertainty_norm"] if uses_idml(cfg.method) else None,
        nearest_score=ranks.nearest_score, second_score=ranks.second_score)
  scalars, emb["selective"] = evaluation.selective_report(scores, ~emb["failed"], per_query)
  metrics.update(scalars)
  if uses_idml(cfg.method):
    metrics.update(evaluation.uncertainty_report(emb["uncertainty_norm"], emb["failed"]))
  for name, e in embedded.items():
    metrics[f"images_{name}"] = len(e["labels"])
    lost = len(splits[name]) - len(e["labels"])
    if lost:
      logging.warning("%d of %d %s images could not be read: the metrics are over the %d "
                      "that could.", lost, len(splits[name]), name, len(e["labels"]))
  return metrics, emb
