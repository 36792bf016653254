"""Evaluation: embed a split under jit (sharded, padded, masked), then the metrics.

Also reports the uncertainty embedding's mean norm and its correlation with per-query
retrieval failure (a miss at Recall@1): a useful uncertainty is larger where retrieval
fails.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental.multihost_utils import process_allgather

from idml_jax.data import eval_batches
from idml_jax.evaluation import clustering_metrics, retrieval_metrics
from idml_jax.train.steps import Steps, to_global


def embed_split(steps: Steps, state, source) -> dict[str, np.ndarray]:
  """Embeds every image of ``source``: ``semantic`` [N, D] (classification: ``logits``
  [N, C]), ``uncertainty_norm`` [N], ``labels`` [N], ``index`` [N] (unreadable images
  dropped)."""
  cfg = steps.config
  outs, idx = [], []
  for local in eval_batches(source, batch_size=cfg.eval.batch_size,
                            image_size=cfg.data.image_size, resize_size=cfg.data.resize_size,
                            process_index=jax.process_index(),
                            process_count=jax.process_count(),
                            num_threads=cfg.data.num_threads):
    out = steps.embed(state, to_global(steps.mesh, {"image": local["image"]})["image"])
    outs.append(jax.device_get(out))
    # Global rows are the processes' local rows in process order.
    idx.append(np.asarray(process_allgather(np.where(local["mask"], local["index"], -1),
                                            tiled=True)))
  idx = np.concatenate(idx)
  keep = idx >= 0
  out = {k: np.concatenate([o[k] for o in outs])[keep] for k in outs[0]}
  return {**out, "labels": source.labels[idx[keep]], "index": idx[keep]}


def uncertainty_report(uncertainty_norm: np.ndarray, first_hit_rank: np.ndarray) -> dict:
  """Mean uncertainty and its Pearson correlation with failure at Recall@1."""
  fail = (first_hit_rank > 0).astype(np.float64)
  out = {"uncertainty_mean": float(np.mean(uncertainty_norm))}
  if np.std(uncertainty_norm) > 0 and 0 < fail.mean() < 1:
    out["uncertainty_failure_corr"] = float(np.corrcoef(uncertainty_norm, fail)[0, 1])
  return out


def classification_metrics(logits: np.ndarray, labels: np.ndarray,
                           ks: tuple[int, ...] = (1, 5)) -> tuple[dict, np.ndarray]:
  """Top-k accuracies of logits [N, C]; also the rank of the true class per image [N]."""
  true = np.take_along_axis(logits, labels[:, None], axis=1)
  rank = np.sum(logits > true, axis=1)  # Ties count in the label's favour.
  return {f"top{k}": float(np.mean(rank < k)) for k in ks if k <= logits.shape[1]}, rank


def evaluate(steps: Steps, state, splits: dict) -> tuple[dict, dict]:
  """Metrics on the test split (or In-Shop's query→gallery). Returns (metrics, embeddings)."""
  cfg = steps.config
  if cfg.task == "classification":
    emb = embed_split(steps, state, splits["test"])
    metrics, ranks = classification_metrics(emb["logits"], emb["labels"])
    if cfg.method == "idml":
      metrics.update(uncertainty_report(emb["uncertainty_norm"], ranks))
    emb["first_hit_rank"] = ranks
    return metrics, emb
  ks = tuple(cfg.eval.ks)
  if "query" in splits:
    q, g = embed_split(steps, state, splits["query"]), embed_split(steps, state, splits["gallery"])
    metrics, ranks = retrieval_metrics(q["semantic"], q["labels"], g["semantic"], g["labels"],
                                       ks=ks, backend=cfg.eval.backend, per_query=True)
    emb = q
  else:
    emb = embed_split(steps, state, splits["test"])
    metrics, ranks = retrieval_metrics(emb["semantic"], emb["labels"], ks=ks,
                                       backend=cfg.eval.backend, per_query=True)
    if cfg.eval.nmi:
      metrics.update(clustering_metrics(emb["semantic"], emb["labels"], backend=cfg.eval.kmeans,
                                        seed=cfg.seed))
  if cfg.method in ("idml", "idml+iaa"):
    metrics.update(uncertainty_report(emb["uncertainty_norm"], ranks))
  emb["first_hit_rank"] = ranks
  return metrics, emb
