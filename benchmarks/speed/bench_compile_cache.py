"""Does ``--config.compile_cache_dir`` spare a re-run its compilation?

    python benchmarks/speed/bench_compile_cache.py [--config configs/demo.py:runlocal] [--repeats 2]

Runs the CLI (``python -m idml_jax.main``, a fresh workdir each time) without the cache, then
with an empty cache folder (which it fills), then with the filled one, ``--repeats`` times
each, and prints each run's seconds from process start to its first evaluated epoch (the
"epoch 1:" log line: start-up, compilation, the first epoch's steps and evaluation) and in
all, and the mean of each setting. Prints what it measured.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def timed_run(config: str, workdir: str, cache: str | None) -> tuple[float, float]:
  """(seconds to the first "epoch 1:" line, seconds in all) of one CLI run."""
  cmd = [sys.executable, "-m", "idml_jax.main", f"--config={config}", f"--workdir={workdir}"]
  if cache:
    cmd.append(f"--config.compile_cache_dir={cache}")
  t = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  first = None
  for line in proc.stderr:
    if first is None and "epoch 1:" in line:
      first = time.perf_counter() - t
  if proc.wait():
    raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}).")
  return first, time.perf_counter() - t


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/demo.py:runlocal")
  p.add_argument("--repeats", type=int, default=2)
  args = p.parse_args()
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, "xla_cache")
    for i in range(args.repeats):
      for name, use in (("no cache", None), ("cache, first run" if i == 0 else
                                             "cache, filled", cache), ("cache, filled", cache)):
        first, total = timed_run(args.config, os.path.join(tmp, f"w{len(rows)}{name[:2]}{i}"),
                                 use)
        rows.setdefault(name, []).append((first, total))
        print(f"{name}: first epoch {first:.1f} s, in all {total:.1f} s", flush=True)
  print(f"\n{args.config}: seconds from start (mean over runs)")
  print("| setting | to the first epoch | in all | runs |\n|---|---|---|---|")
  for name, vs in rows.items():
    print(f"| {name} | {statistics.mean(v[0] for v in vs):.1f} | "
          f"{statistics.mean(v[1] for v in vs):.1f} | {len(vs)} |")


if __name__ == "__main__":
  main()
