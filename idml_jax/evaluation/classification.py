"""Classification metrics of logits: top-k accuracy (IDML §1.4's tables)."""

from __future__ import annotations

import numpy as np

from idml_jax.evaluation.inputs import check_embeddings


def true_class_rank(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """[N, C], [N] -> [N] 0-based rank of the true class among the logits.

  Ties go to the lower class index, as ``argmax`` breaks them: equal logits (a collapsed
  classifier) never count in the label's favour.
  """
  logits, labels = check_embeddings(logits, labels, "classifier")
  true = np.take_along_axis(logits, labels[:, None], axis=1)
  lower = np.arange(logits.shape[1])[None, :] < labels[:, None]
  return np.sum((logits > true) | ((logits == true) & lower), axis=1)


def classification_metrics(logits: np.ndarray, labels: np.ndarray,
                           ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
  """``top{k}`` accuracies of logits [N, C] for the k in ``ks`` that are <= C."""
  rank = true_class_rank(logits, labels)
  return {f"top{k}": float(np.mean(rank < k)) for k in ks if k <= np.shape(logits)[1]}
