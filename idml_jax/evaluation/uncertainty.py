"""How useful a per-query uncertainty (IDML's ||u||) is for predicting retrieval errors."""

from __future__ import annotations

import numpy as np

# ||u|| at or above this is at the bound of the bounded parameterisations (||u|| < 1 or = 1).
BOUND = 0.99


def uncertainty_report(uncertainty: np.ndarray, failed: np.ndarray) -> dict[str, float]:
  """``uncertainty_mean``, how ||u|| spreads over the queries (``uncertainty_zero_fraction``:
  ||u|| <= 1e-6, a dead head; ``uncertainty_bound_fraction``: ||u|| >= ``BOUND``, saturated)
  and its Pearson correlation with failure (where both vary).

  Args:
    uncertainty: [Q] per-query uncertainty (e.g. ||u||).
    failed: [Q] bool, the query's top-1 is wrong (a miss at Recall@1, a top-1 error).
  """
  uncertainty, fail = np.asarray(uncertainty, np.float64), np.asarray(failed, np.float64)
  out = {"uncertainty_mean": float(np.mean(uncertainty)),
         "uncertainty_zero_fraction": float(np.mean(uncertainty <= 1e-6)),
         "uncertainty_bound_fraction": float(np.mean(uncertainty >= BOUND))}
  if np.std(uncertainty) > 0 and 0 < fail.mean() < 1:
    out["uncertainty_failure_corr"] = float(np.corrcoef(uncertainty, fail)[0, 1])
  return out
