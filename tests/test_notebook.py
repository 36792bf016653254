"""launch/explore.ipynb runs headless, top to bottom, on a seconds-long config."""

import os

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(__file__))


def test_explore_notebook_runs(tmp_path, monkeypatch):
  monkeypatch.setenv("IDML_JAX_NOTEBOOK_ARG", "runlocal,digits")
  monkeypatch.setenv("IDML_JAX_NOTEBOOK_WORKDIR", str(tmp_path / "runs" / "demo"))
  nb = nbformat.read(os.path.join(ROOT, "launch", "explore.ipynb"), as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": ROOT}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "checkpoint step" in outputs and "error rate per quintile" in outputs
  assert "aurc_uncertainty" in outputs and "aurc_nearest" in outputs  # Risk–coverage.
  assert "'match'" in outputs and "abstain" in outputs  # The abstention trade-off.
  assert "demo_baseline" in outputs and " idml " in outputs  # Both runs compared.
  images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))
  assert images >= 5
