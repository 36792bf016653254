"""``python -m idml_jax.report``: finished runs beside the papers' numbers."""

import pytest
from conftest import load_config, write_cub

from idml_jax import report
from idml_jax.train import loop


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  demo = load_config("demo.py", "runlocal,digits")
  loop.train_and_evaluate(demo, str(root / "demo"))
  paper = load_config("idml_pa.py", "cub,runlocal")
  paper.data.data_dir = write_cub(tmp_path_factory.mktemp("data"))
  loop.train_and_evaluate(paper, str(root / "idml_cub"))
  return root


def test_report_puts_each_run_beside_the_paper(runs, capsys):
  assert report.main([str(runs / "demo"), str(runs / "idml_cub")]) == 0
  out = capsys.readouterr().out
  rows = [line for line in out.splitlines() if line.startswith("| ")]
  assert any("| recall@1 |" in r and "| 70.7 |" in r for r in rows)  # IDML-PA CUB R@1.
  assert any("| map@r |" in r and "| 28.4 |" in r for r in rows)
  demo_rows = [r for r in rows if "demo" in r]
  assert demo_rows and "| — |" in demo_rows[0]  # The demo has no paper numbers.
  summary = report.summarize(str(runs / "idml_cub"))
  best_r1 = next(b for k, b, _, _ in summary["rows"] if k == "recall@1")
  assert f"{100 * (best_r1 - 0.707):+.1f}" in out and summary["seconds_per_epoch"] > 0
  confidence = [r for r in rows if r.count("|") == 6 and "| combined |" in r]
  assert len(confidence) == 2  # One per run: the fitted confidence beside the others.
  final = report.json.loads((runs / "demo" / "results.json").read_text())["final"]
  assert any(f"| uncertainty | {final['aurc_uncertainty']:.3f} |" in r and
             (f"| {final['rauroc_uncertainty']:.3f} |" in r) for r in rows)


def test_report_names_an_undefined_rauroc_and_refuses_a_run_without_final_metrics(
    runs, tmp_path, capsys):
  import json
  import shutil
  run = tmp_path / "perfect"
  shutil.copytree(runs / "demo", run)
  results = json.loads((run / "results.json").read_text())
  results["final"] = {k: v for k, v in results["final"].items() if not k.startswith("rauroc")}
  results["undefined"] = {"rauroc": "no query's top-1 is wrong"}
  (run / "results.json").write_text(json.dumps(results))
  assert report.main([str(run)]) == 0
  assert "| undefined (no query's top-1 is wrong) |" in capsys.readouterr().out
  results["final"] = None
  (run / "results.json").write_text(json.dumps(results))
  assert report.main([str(run)]) == 1
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and "holds no final metrics" in err


def test_report_refuses_a_workdir_without_results(tmp_path, capsys):
  assert report.main([str(tmp_path)]) == 1
  assert "results.json not found" in capsys.readouterr().err
