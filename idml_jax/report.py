"""One table of finished runs beside the papers' numbers.

    python -m idml_jax.report runs/idml_cub runs/idml_cub_official [...]

For each workdir: its config, the best and final value of every metric the paper reports
(``config.paper``; all of Recall@K, R-Precision, MAP@R, NMI, top-1 otherwise), the gap of the
best to the paper, the best epoch, and the training time per epoch (wall time of the last
run of the command, evaluation included). Values are percentages, as in the papers.

A second table ranks each run's confidence scores for knowing when its top-1 is wrong: the
final AURC (lower is better), E-AURC and R-AUROC (higher is better; the URL benchmark's
figure) of IDML's ‖u‖, the nearest similarity, the top-1 − top-2 gap and the fitted
``combined`` confidence (``undefined``, with the reason, where a run has no failures or no
successes).
"""

from __future__ import annotations

import argparse
import json
import sys

from idml_jax.train.workdir import Workdir

_SCORES = ("uncertainty", "nearest", "gap", "msp", "combined")
_DEFAULT_KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "recall@10", "recall@100",
                 "recall@1000", "recall@20", "recall@30", "r_precision", "map@r", "nmi", "f1",
                 "top1", "top5")


def summarize(workdir: str) -> dict:
  """``{name, config, epochs, best_epoch, seconds_per_epoch, rows: [(metric, best, final,
  paper or None)]}`` of a finished run, or a ValueError saying what is missing."""
  wd = Workdir(workdir)
  if not wd.results_file.exists():
    raise ValueError(f"{wd.results_file} not found: is {workdir!r} a finished run?")
  try:
    results = json.loads(wd.results_file.read_text())
    _ = results["config"], results["final"], results["steps"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{wd.results_file} is damaged ({type(e).__name__}: {e}): evaluate the "
                     f"run again (python -m idml_jax.main --mode=eval --workdir={workdir} "
                     "--config=...) to rewrite it.") from None
  config = results["config"]
  paper = config.get("paper") or {}
  best, final = results.get("best") or {}, results["final"]
  if not isinstance(final, dict):
    raise ValueError(f"{wd.results_file} holds no final metrics (\"final\": {final!r}): "
                     f"evaluate the run again (python -m idml_jax.main --mode=eval "
                     f"--workdir={workdir} --config=...) to rewrite it.")
  keys = list(paper) or [k for k in _DEFAULT_KEYS if k in final]
  steps_per_epoch = results["steps"] / config["num_epochs"]
  per_step = results["train_seconds_this_run"] / max(results["steps_this_run"], 1)
  return {"name": workdir, "config": f"{config['method']} | {config['loss']['name']} | "
                                     f"{config['model']['backbone']} | {config['data']['name']}",
          "epochs": config["num_epochs"], "best_epoch": best.get("epoch"),
          "seconds_per_epoch": per_step * steps_per_epoch if results["steps_this_run"] else None,
          "rows": [(k, best.get(k), final.get(k), paper.get(k)) for k in keys],
          "confidence": [(name, final[f"aurc_{name}"], final.get(f"eaurc_{name}"),
                          final.get(f"rauroc_{name}")) for name in _SCORES
                         if f"aurc_{name}" in final],
          "undefined": results.get("undefined") or {}}


def format_table(summaries: list[dict]) -> str:
  pct = lambda v: "—" if v is None else f"{100 * v:.1f}"
  lines = ["| run | config | metric | best | final | paper | best − paper | best epoch | "
           "s / epoch |", "|---|---|---|---|---|---|---|---|---|"]
  for s in summaries:
    for i, (metric, best, final, paper) in enumerate(s["rows"]):
      gap = "—" if best is None or paper is None else f"{100 * (best - paper):+.1f}"
      head = (s["name"], s["config"]) if i == 0 else ("", "")
      tail = ((f"{s['best_epoch']} / {s['epochs']}" if s["best_epoch"] is not None else "—"),
              "—" if s["seconds_per_epoch"] is None else f"{s['seconds_per_epoch']:.1f}") \
          if i == 0 else ("", "")
      lines.append(f"| {head[0]} | {head[1]} | {metric} | {pct(best)} | {pct(final)} | "
                   f"{pct(paper)} | {gap} | {tail[0]} | {tail[1]} |")
  if any(s["confidence"] for s in summaries):
    lines += ["", "| run | confidence | AURC | E-AURC | R-AUROC |", "|---|---|---|---|---|"]
    for s in summaries:
      why = s["undefined"].get("rauroc")
      for i, (name, aurc, eaurc, auroc) in enumerate(s["confidence"]):
        shown = f"{auroc:.3f}" if auroc is not None else f"undefined ({why or 'not recorded'})"
        lines.append(f"| {s['name'] if i == 0 else ''} | {name} | {aurc:.3f} | "
                     f"{'—' if eaurc is None else f'{eaurc:.3f}'} | {shown} |")
      if "combined" in s["undefined"]:
        lines.append(f"| {'' if s['confidence'] else s['name']} | combined | — | — | undefined "
                     f"({s['undefined']['combined']}) |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("workdirs", nargs="+", help="finished training workdirs")
  args = p.parse_args(argv)
  try:
    summaries = [summarize(w) for w in args.workdirs]
  except ValueError as e:
    print(f"report: {e}", file=sys.stderr)
    return 1
  print(format_table(summaries))
  return 0


if __name__ == "__main__":
  sys.exit(main())
