"""Independent naive references (NumPy loops, float64) for the tests."""

import math

import numpy as np


def cosine(x, y):
  return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))


def ism(s, d_mu, d_u, a, b, eps=1e-6):
  return 1.0 - (1.0 - s) * math.exp(-(d_u + a) / (b * (max(d_mu, 0.0) + eps)))


def proxy_ism(mu, u, p, a=4.0, b=5.0):
  out = np.zeros((len(mu), len(p)))
  for i in range(len(mu)):
    for c in range(len(p)):
      d_mu = float(np.sum((mu[i] - p[c]) ** 2))
      d_u = float(np.sum(u[i] ** 2))
      out[i, c] = ism(cosine(mu[i], p[c]), d_mu, d_u, a, b)
  return out


def pairwise_ism(mu, u, a=4.0, b=5.0):
  n = len(mu)
  out = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      d_mu = float(np.sum((mu[i] - mu[j]) ** 2))
      d_u = float(np.sum(u[i] ** 2) + np.sum(u[j] ** 2))
      out[i, j] = ism(cosine(mu[i], mu[j]), d_mu, d_u, a, b)
  return out


def log1p_sum_exp(values):
  return math.log(1.0 + sum(math.exp(v) for v in values))


def proxy_anchor(sim, labels, margin=0.1, alpha=32.0):
  n, c = sim.shape
  pos_classes = sorted(set(int(y) for y in labels))
  pos = sum(log1p_sum_exp([-alpha * (sim[i, k] - margin) for i in range(n) if labels[i] == k])
            for k in pos_classes)
  neg = sum(log1p_sum_exp([alpha * (sim[i, k] + margin) for i in range(n) if labels[i] != k])
            for k in range(c))
  return pos / len(pos_classes) + neg / c


def multi_similarity(sim, labels_anchor, labels_all, batch, thresh=0.5, margin=0.1, a=2.0,
                     b=40.0):
  total = 0.0
  for i in range(len(labels_anchor)):
    pos = [sim[i, j] for j in range(sim.shape[1])
           if labels_all[j] == labels_anchor[i] and j % batch != i and sim[i, j] < 1 - 1e-5]
    neg = [sim[i, j] for j in range(sim.shape[1]) if labels_all[j] != labels_anchor[i]]
    if not pos or not neg:
      continue
    kept_neg = [s for s in neg if s + margin > min(pos)]
    kept_pos = [s for s in pos if s - margin < max(neg)]
    if not kept_neg or not kept_pos:
      continue
    total += (log1p_sum_exp([-a * (s - thresh) for s in kept_pos]) / a
              + log1p_sum_exp([b * (s - thresh) for s in kept_neg]) / b)
  return total / len(labels_anchor)


def ranking(sim_row, exclude, tol=0.0):
  """Indices sorted by decreasing similarity, equal ones by index, ``exclude`` removed.
  With ``tol``: item i's place is the number of items that beat it — a similarity higher
  by more than ``tol``, or within ``tol`` and a lower index (a near-tie) — one loop each."""
  if tol == 0.0:
    return [j for j in np.argsort(-sim_row, kind="stable") if j != exclude]
  idx = [j for j in range(len(sim_row)) if j != exclude]
  beaten = {i: sum(1 for j in idx if j != i and (
      sim_row[j] > sim_row[i] + tol or (abs(sim_row[j] - sim_row[i]) <= tol and j < i)))
      for i in idx}
  return sorted(idx, key=lambda i: (beaten[i], i))


def normalize(x):
  """Unit rows in float64 (rows of zeros stay zero)."""
  x = np.asarray(x, np.float64)
  n = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.where(n > 0, n, 1.0)


def retrieval(q, ql, g, gl, ks, all_vs_all, per_query=False, tol=0.0):
  """Recall@K, R-Precision, MAP@R by sorting every query's gallery in float64 (ties, and
  with ``tol`` near-ties, by index)."""
  sim = normalize(q) @ normalize(g).T
  hits = {k: [] for k in ks}
  rps, aps = [], []
  per = {"first_hit": [], "r_precision": [], "map@r": []}
  for i in range(len(q)):
    order = ranking(sim[i], i if all_vs_all else -1, tol)
    rel = [gl[j] == ql[i] for j in order]
    r = sum(rel)
    for k in ks:
      hits[k].append(any(rel[:k]))
    per["first_hit"].append(rel.index(True) if r else None)
    if r == 0:
      per["r_precision"].append(float("nan"))
      per["map@r"].append(float("nan"))
      continue
    rps.append(sum(rel[:r]) / r)
    found, ap = 0, 0.0
    for pos in range(r):
      if rel[pos]:
        found += 1
        ap += found / (pos + 1)
    aps.append(ap / r)
    per["r_precision"].append(rps[-1])
    per["map@r"].append(aps[-1])
  out = {f"recall@{k}": float(np.mean(hits[k])) for k in ks}
  out["r_precision"] = float(np.mean(rps)) if rps else 0.0
  out["map@r"] = float(np.mean(aps)) if aps else 0.0
  return (out, per) if per_query else out
