"""The train loop against its bare step: does the loop run at the speed of its step?

    python benchmarks/speed/bench_loop.py [--rows baseline,pa idml,pa iaa,ms idml_iaa,ms] \\
        [--columns replayed one_checkpoint slow slow_one_checkpoint pipeline] \\
        [--epochs 6] [--repeats 3] [--slow 0.8]

For each row (``configs/small_images.py:<method>,<loss>,resnet`` on the demo's glyphs, the
demo's logging, checkpoint and evaluation settings, ``--epochs`` of 40 steps) and repeat:

* ``step``: steps/s of the bare jitted train step (the loop's own ``Steps``), on batches
  already on the device, after compilation, measured again beside each loop run;
* ``input``: the input pipeline alone, CPU milliseconds per batch (all its threads);
* ``loop``: steps/s of ``train_and_evaluate`` as its progress line reports it (logging,
  checkpoints, device prefetch and the IAA state included; compilation, evaluation and IAA's
  passes over the training set left out: the median over its logs), in these settings:

  - ``replayed``: the pipeline's batches made once and replayed from memory: the CPU's
    stand-in for an accelerator, where the pipeline's work runs on host cores the step does
    not use. Goal ≥ 0.95.
  - ``replayed, one checkpoint``: the same with the checkpoint at the end only (the demo
    saves every epoch, here every ~1 s). On a CPU backend the background save (~0.03 s of
    CPU for the demo's state packed into 2 arrays; 0.23 s array by array,
    ``bench_checkpoint.py``) takes its CPU from the step; on an accelerator it takes host
    time the device does not wait for. The difference between the two columns is that
    share, what is left is the loop's own cost.
  - ``replayed, slow input``: the same, each batch delayed by a sleep of ``--slow`` × the
    bare step's time on the thread that feeds the device. The loop keeps its speed only if
    loading the next batch overlaps the step; with one checkpoint, goal ≥ 0.9.
  - ``pipeline``: the real pipeline. On this machine it decodes and crops on the same
    cores the step computes on, so the ratio also counts that contention.

Prints the mean ratio loop ÷ step over repeats (± sd) and the step time per row (then each
pair's ratio, as Markdown comments, for pooling runs). A
persistent compilation cache (a temporary folder) spares the repeats their compiles.
"""

import argparse
import collections
import contextlib
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]
import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import steady_state  # noqa: E402

from idml_jax import data  # noqa: E402
from idml_jax.config_files import load_module, runlocal  # noqa: E402
from idml_jax.train import loop  # noqa: E402
from idml_jax.train.reporting import read_metrics  # noqa: E402
from idml_jax.train.steps import Steps, make_mesh, to_global  # noqa: E402
from idml_jax.train.workdir import Workdir  # noqa: E402

STEPS_PER_EPOCH = 40


def config(row: str, epochs: int, smoke: bool = False):
  """The demo's config of ``row`` (``method,loss``); ``smoke``: a tiny network, 4-step epochs."""
  method, loss = row.split(",")
  c = load_module(os.path.join(ROOT, "configs", "small_images.py")).build(method, loss, "resnet")
  c.data.source, c.data.name = "demo", "glyphs"  # The demo's data and settings.
  c.num_epochs, c.eval.every_epochs, c.eval.at_start = epochs, 10, False
  c.max_steps_per_epoch = STEPS_PER_EPOCH
  if smoke:
    runlocal(c)
    c.num_epochs, c.max_steps_per_epoch, c.log_every_steps = epochs, 4, 4
  c.iaa.start_epoch = min(c.iaa.start_epoch, 1)
  return c


def _pipeline(c, num_steps: int):
  splits = data.load_splits(c.data.name, c.data.source)
  labels = splits["train"].labels
  sampler = data.SAMPLERS[c.data.sampler](labels, c.batch_size, c.data.images_per_class, c.seed)
  return data.train_batches(splits["train"], sampler, image_size=c.data.image_size, seed=c.seed,
                            start_step=0, num_steps=num_steps, num_threads=c.data.num_threads,
                            worker_count=c.data.worker_count,
                            transform=data.transforms.from_config(c)[0]), labels


_compiles: list[list] = []  # One list per open compile_times() block.


def _on_event(event: str, secs: float, **kwargs) -> None:
  if event == "/jax/core/compile/backend_compile_duration" and _compiles:
    _compiles[-1].append((kwargs.get("fun_name", "?"), secs))


jax.monitoring.register_event_duration_secs_listener(_on_event)


@contextlib.contextmanager
def compile_times():
  """Yields ``{program: [seconds of each XLA compilation]}``, filled while the block runs."""
  _compiles.append([])
  out = collections.defaultdict(list)
  try:
    yield out
  finally:
    for name, secs in _compiles.pop():
      out[name].append(secs)


def input_cpu_ms(c, n: int = 200) -> float:
  """CPU milliseconds (this process, all threads) per batch of the pipeline alone."""
  batches, _ = _pipeline(c, n + 1)
  next(batches)
  t = time.process_time()
  for _ in batches:
    pass
  return (time.process_time() - t) / n * 1e3


def bare_rate(c) -> float:
  """Steps/s of the jitted step alone on device-resident batches (after compilation): the
  median over windows of ``log_every_steps`` steps, as the loop's rate is."""
  spe, window = c.max_steps_per_epoch, c.log_every_steps
  host, labels = _pipeline(c, spe)
  steps = Steps.build(c, int(labels.max()) + 1, spe, make_mesh())
  z = np.random.default_rng(0).standard_normal((len(labels), c.model.embedding_dim))
  state, plan = steady_state(steps, z.astype(np.float32), labels.astype(np.int32))
  batches = [to_global(steps.mesh, {k: b[k] for k in ("image", "label")}) for b in host]
  state, m = steps.train_step(state, batches[0], plan, train_backbone=True)
  jax.block_until_ready(m)
  rates = []
  for w in range(c.num_epochs * spe // window):
    t = time.perf_counter()
    for i in range(w * window, (w + 1) * window):
      state, m = steps.train_step(state, batches[i % len(batches)], plan, train_backbone=True)
    jax.block_until_ready(m)
    rates.append(window / (time.perf_counter() - t))
  return float(np.median(rates))


def loop_rate(c, *, replay: bool, sleep: float = 0.0) -> float:
  """The loop's steps/s (median of its progress logs)."""
  real = data.train_batches

  def fed(*args, **kwargs):
    if replay:  # One epoch of the pipeline's batches, made now, replayed in order.
      made = list(real(*args, **{**kwargs, "num_steps": min(kwargs["num_steps"],
                                                            c.max_steps_per_epoch)}))
      source = (made[i % len(made)] for i in range(kwargs["num_steps"]))
    else:
      source = real(*args, **kwargs)
    for b in source:
      time.sleep(sleep)
      yield b

  loop.data.train_batches = fed
  try:
    with tempfile.TemporaryDirectory() as w:
      loop.train_and_evaluate(c, w)
      rates = [r["train/steps_per_sec"] for r in read_metrics(Workdir(w))
               if "train/steps_per_sec" in r]
  finally:
    loop.data.train_batches = real
  return float(np.median(rates))


def _cell(values) -> str:
  sd = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{statistics.mean(values):.3f} ± {sd:.3f}"


# Column -> (its heading, replay the input, sleep per batch, checkpoint every epoch).
COLUMNS = {
    "replayed": ("loop ÷ step, replayed (≥ 0.95)", True, False, True),
    "one_checkpoint": ("replayed, one checkpoint", True, False, False),
    "slow": ("replayed, slow input", True, True, True),
    "slow_one_checkpoint": ("replayed, slow input, one checkpoint (≥ 0.9)", True, True, False),
    "pipeline": ("pipeline (shares the cores)", False, False, True),
}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rows", nargs="+", default=["baseline,pa", "idml,pa", "iaa,ms",
                                               "idml_iaa,ms"])
  p.add_argument("--columns", nargs="+", default=list(COLUMNS), choices=list(COLUMNS))
  p.add_argument("--epochs", type=int, default=6)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--slow", type=float, default=0.8)
  args = p.parse_args()
  cache = tempfile.mkdtemp(prefix="bench_loop_cache_")
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  print("| row | step (ms) | input (CPU ms/batch) | "
        + " | ".join(COLUMNS[k][0] for k in args.columns) + " | repeats |")
  print("|---|---|---|" + "---|" * len(args.columns) + "---|")
  for row in args.rows:
    steps, cpu, ratios = [], [], {k: [] for k in args.columns}
    for _ in range(args.repeats):
      cpu.append(input_cpu_ms(config(row, args.epochs)))
      for name in args.columns:
        _, replay, slow, every_epoch = COLUMNS[name]
        c = config(row, args.epochs)
        if not every_epoch:
          c.checkpoint_every_epochs = args.epochs
        step = bare_rate(c)  # Measured beside each loop run: the machine drifts.
        steps.append(1e3 / step)
        ratios[name].append(loop_rate(c, replay=replay,
                                      sleep=args.slow / step if slow else 0.0) / step)
    print(f"| {row} | {statistics.mean(steps):.1f} | {statistics.mean(cpu):.1f} | "
          + " | ".join(_cell(ratios[k]) for k in args.columns) + f" | {args.repeats} |",
          flush=True)
    for k in args.columns:  # Each pair's ratio, for pooling runs.
      print(f"<!-- {row} {k}: {' '.join(f'{r:.3f}' for r in ratios[k])} -->", flush=True)


if __name__ == "__main__":
  main()
