"""PNG figures in the workdir: training curves, a retrieval grid, uncertainty vs error,
risk–coverage curves of the confidence scores, and (classifiers) a reliability diagram."""

from __future__ import annotations

import logging

import numpy as np
from matplotlib.figure import Figure  # No pyplot: no global backend change, thread-safe.

from idml_jax.data.transforms import eval_transform
from idml_jax.evaluation import knn
from idml_jax.ops import l2_normalize_np
from idml_jax.train.reporting import read_metrics
from idml_jax.train.workdir import Workdir


def training_curves(workdir: Workdir, metric: str = "recall@1") -> str:
  """Training loss and the test ``metric`` (``recall@1``, ``top1``) against the step."""
  rows = read_metrics(workdir)
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
  fig.tight_layout()
  return _save(fig, workdir, "training_curves.png")


def _save(fig: Figure, workdir: Workdir, name: str) -> str:
  path = workdir / name
  with path.open("wb") as f:
    fig.savefig(f, dpi=100, format="png")
  return str(path)


def neighbor_grid(emb: dict, source, queries: np.ndarray, neighbors: np.ndarray, k: int = 5,
                   size: int = 96) -> Figure:
  """Queries (rows, left) with their first ``k`` neighbors other than themselves; green =
  same class, red = other. ``queries`` [Q] and ``neighbors`` [Q, >= k + 1] index ``emb``."""
  fig = Figure(figsize=(1.6 * (k + 1), 1.6 * len(queries)))
  axes = fig.subplots(len(queries), k + 1, squeeze=False)
  load = lambda i: eval_transform(source.load(int(emb["index"][i])), size, size)
  for r, q in enumerate(queries):
    row = [q] + [j for j in neighbors[r] if j != q][:k]
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
  fig.tight_layout()
  return fig


def retrieval_grid(workdir: Workdir, emb: dict, source, num_queries: int = 6, k: int = 5,
                   size: int = 96) -> str | None:
  """``retrieval_grid.png``: evenly spaced queries and their top-k neighbors (fewer on a
  small split; None, with a note, below two images)."""
  x = l2_normalize_np(emb["semantic"])
  k = min(k, len(x) - 1)
  if k < 1:
    logging.warning("No retrieval_grid.png: the test split has %d image(s).", len(x))
    return None
  queries = np.unique(np.linspace(0, len(x) - 1, num_queries).astype(int))
  _, nbr = knn.jax_search(x[queries], x, k + 1)
  return _save(neighbor_grid(emb, source, queries, nbr, k, size), workdir,
               "retrieval_grid.png")


def error_rate_by_uncertainty(emb: dict, bins: int = 5) -> np.ndarray:
  """Recall@1 (classification: top-1) failure rate [bins] per uncertainty quantile bin."""
  u = emb["uncertainty_norm"]
  fail = emb["failed"].astype(float)
  edges = np.quantile(u, np.linspace(0, 1, bins + 1))
  which = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, bins - 1)
  return np.asarray([fail[which == b].mean() if np.any(which == b) else np.nan
                     for b in range(bins)])


def uncertainty_figure(emb: dict, bins: int = 5) -> Figure:
  """The uncertainty's histogram and :func:`error_rate_by_uncertainty`."""
  u, rate = emb["uncertainty_norm"], error_rate_by_uncertainty(emb, bins)
  fig = Figure(figsize=(10, 3.5))
  axes = fig.subplots(1, 2)
  axes[0].hist(np.asarray(u, np.float64), bins=30)  # float32 edges fail on ||u|| = 1 +- eps
  axes[0].set_title("uncertainty ||u|| of test images")
  axes[1].bar(range(bins), rate)
  axes[1].set_xticks(range(bins), [f"Q{b + 1}" for b in range(bins)])
  axes[1].set_title("error rate (R@1 / top-1) by uncertainty quantile")
  fig.tight_layout()
  return fig


def uncertainty_vs_error(workdir: Workdir, emb: dict, bins: int = 5) -> str | None:
  """``uncertainty_vs_error.png`` (IDML methods only: None without an uncertainty)."""
  if not np.any(emb["uncertainty_norm"]):
    return None
  return _save(uncertainty_figure(emb, bins), workdir, "uncertainty_vs_error.png")


_LABELS = {"uncertainty": "-||u|| (IDML)", "nearest": "nearest similarity",
           "gap": "top-1 - top-2 gap", "msp": "max softmax prob.",
           "combined": "combined (fitted)", "oracle": "oracle"}


def risk_coverage_figure(selective: dict) -> Figure:
  """Risk (1 - Recall@1 or top-1 error) of the most confident fraction, per score; and the
  per-query metrics at the coverages 0.1 .. 1.0."""
  fig = Figure(figsize=(10, 3.8))
  axes = fig.subplots(1, 2)
  for name, c in selective.items():
    style = dict(color="black", linestyle="--") if name == "oracle" else {}
    auroc = "" if name == "oracle" else ", R-AUROC " + (
        "undefined" if c.get("rauroc") is None else f"{c['rauroc']:.3f}")
    axes[0].plot(c["fine_coverage"], c["risk"], label=f"{_LABELS.get(name, name)} "
                 f"(AURC {c['aurc']:.3f}{auroc})", **style)
    metric = "recall@1" if "recall@1" in c else "top1"
    axes[1].plot(c["coverage"], c[metric], marker="o", label=_LABELS.get(name, name), **style)
  axes[0].set(title="which confidence knows when the top-1 is wrong\n"
                    "risk-coverage (lower is better; R-AUROC 0.5 = no information)",
              xlabel="coverage", ylabel="risk")
  axes[1].set(title="accuracy of the most confident fraction", xlabel="coverage",
              ylabel="Recall@1" if "recall@1" in next(iter(selective.values())) else "top-1")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def risk_coverage_curves(workdir: Workdir, selective: dict) -> str:
  """``risk_coverage.png`` from ``evaluate``'s ``selective`` curves."""
  return _save(risk_coverage_figure(selective), workdir, "risk_coverage.png")


def reliability(workdir: Workdir, calibration: dict) -> str:
  """``reliability.png``: accuracy against confidence per bin, for each set of logits."""
  fig = Figure(figsize=(4.5 * len(calibration), 4))
  axes = np.atleast_1d(fig.subplots(1, len(calibration)))
  for ax, (name, c) in zip(axes, calibration.items(), strict=True):
    bins = len(c["bin_count"])
    centers = (np.arange(bins) + 0.5) / bins
    ax.bar(centers, np.nan_to_num(c["bin_accuracy"]), width=1 / bins, edgecolor="black",
           alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="calibrated")
    ax.set(title=f"{name} logits (ECE {c['ece']:.3f})", xlabel="confidence", ylabel="accuracy",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
  fig.tight_layout()
  return _save(fig, workdir, "reliability.png")
