"""PNG figures in the workdir: training curves, a retrieval grid, uncertainty vs error."""

from __future__ import annotations

import json
import os

import numpy as np
from matplotlib.figure import Figure  # No pyplot: no global backend change, thread-safe.

from idml_jax.data.transforms import eval_transform
from idml_jax.evaluation import knn
from idml_jax.evaluation.retrieval import l2_normalize_np


def training_curves(workdir: str, metric: str = "recall@1") -> str:
  """Training loss and the test ``metric`` (``recall@1``, ``top1``) against the step."""
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  fig = Figure(figsize=(10, 3.5))
  axes = fig.subplots(1, 2)
  for ax, key, title in ((axes[0], "train/loss", "training loss"),
                         (axes[1], f"eval/{metric}", f"test {metric}")):
    pts = [(r["step"], r[key]) for r in rows if key in r]
    if pts:
      ax.plot(*zip(*pts, strict=True), marker="o" if key.startswith("eval") else None)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  path = os.path.join(workdir, "training_curves.png")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def retrieval_grid(workdir: str, emb: dict, source, num_queries: int = 6, k: int = 5,
                   size: int = 96) -> str:
  """Queries (left) with their top-k neighbours; green = same class, red = other."""
  x = l2_normalize_np(emb["semantic"])
  queries = np.linspace(0, len(x) - 1, num_queries).astype(int)
  _, nbr = knn.jax_search(x[queries], x, k + 1)
  fig = Figure(figsize=(1.6 * (k + 1), 1.6 * num_queries))
  axes = fig.subplots(num_queries, k + 1)
  load = lambda i: eval_transform(source.load(int(emb["index"][i])), size, size)
  for r, q in enumerate(queries):
    row = [q] + [j for j in nbr[r] if j != q][:k]
    for c, j in enumerate(row):
      ax = axes[r, c]
      ax.imshow(load(j))
      ax.set_xticks([])
      ax.set_yticks([])
      color = "black" if c == 0 else ("green" if emb["labels"][j] == emb["labels"][q] else "red")
      for spine in ax.spines.values():
        spine.set_color(color)
        spine.set_linewidth(3)
      if c == 0:
        ax.set_ylabel("query")
  path = os.path.join(workdir, "retrieval_grid.png")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def uncertainty_vs_error(workdir: str, emb: dict, bins: int = 5) -> str | None:
  """Recall@1 (classification: top-1) failure rate per uncertainty quantile bin (IDML only)."""
  u = emb["uncertainty_norm"]
  if not np.any(u):
    return None
  fail = (emb["first_hit_rank"] > 0).astype(float)
  edges = np.quantile(u, np.linspace(0, 1, bins + 1))
  which = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, bins - 1)
  rate = [fail[which == b].mean() if np.any(which == b) else np.nan for b in range(bins)]
  fig = Figure(figsize=(10, 3.5))
  axes = fig.subplots(1, 2)
  axes[0].hist(u, bins=30)
  axes[0].set_title("uncertainty ||u|| of test images")
  axes[1].bar(range(bins), rate)
  axes[1].set_xticks(range(bins), [f"Q{b + 1}" for b in range(bins)])
  axes[1].set_title("error rate (R@1 / top-1) by uncertainty quantile")
  path = os.path.join(workdir, "uncertainty_vs_error.png")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path
