"""Input checks shared by every metric: shapes, integer labels, finite values."""

from __future__ import annotations

import numpy as np


class NonFiniteEmbeddingsError(ValueError):
  """Embeddings (or logits) with NaN/inf entries: a diverged model or a damaged checkpoint."""


def check_embeddings(emb, labels, name: str = "query") -> tuple[np.ndarray, np.ndarray]:
  """float32 [N, D] embeddings and int64 [N] labels, or a ValueError naming the problem."""
  emb, labels = np.asarray(emb), np.asarray(labels)
  if emb.ndim != 2:
    raise ValueError(f"{name} embeddings must be [N, D]; got shape {emb.shape}.")
  if labels.shape != (emb.shape[0],):
    raise ValueError(f"{name} labels must be [N] = [{emb.shape[0]}]; got shape {labels.shape}.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name} labels must be integers; got {labels.dtype}.")
  if labels.size and labels.min() < 0:
    raise ValueError(f"{name} labels must be >= 0; got {labels.min()}.")
  check_finite(emb, f"{name} embeddings")
  return emb.astype(np.float32), labels.astype(np.int64)


def check_finite(x: np.ndarray, what: str) -> None:
  """Raises :class:`NonFiniteEmbeddingsError` naming how many rows of ``x`` are not finite."""
  finite = np.isfinite(x)
  if not finite.all():
    bad = int(np.sum(~finite.reshape(len(x), -1).all(axis=1)))
    raise NonFiniteEmbeddingsError(
        f"{what} contain NaN/inf in {bad} of {len(x)} rows: the model diverged or its "
        "checkpoint is damaged.")
