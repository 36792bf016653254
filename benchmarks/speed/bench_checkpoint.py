"""How long a checkpoint save holds the train loop, and its CPU: today's background save of
the packed state against the synchronous, array-by-array one it replaced.

    python benchmarks/speed/bench_checkpoint.py [--backbone resnet50] [--repeats 5]

The train state of ``--backbone`` (IDML-PA, 512-d, 100 classes, Adam-style moments) is saved
into a fresh workdir, ``--repeats`` times each way, timing:

* ``synchronous``: what ``Checkpoints.save`` did at commit 848c6dd — the CRC-32 of every
  array on the loop's thread, then orbax's ``save`` call of the state dict, one orbax array
  per leaf (its blocking part: the device-to-host copy);
* ``background``: today's ``Checkpoints.save`` — it returns once a device copy of the state
  is dispatched and handed to orbax's asynchronous save, whose thread runs the packed
  handler (``idml_jax.train.packing.PackedHandler``: fetch, pack by dtype, checksums, one
  raw file per dtype);

and, for both, the time until the checkpoint is complete on disk (``wait``) and the CPU time
the save takes in all (every thread of the process). Prints the medians.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)
import flax  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from idml_jax import config as config_lib  # noqa: E402
from idml_jax.train.checkpoint import Checkpoints  # noqa: E402
from idml_jax.train.packing import checksums  # noqa: E402
from idml_jax.train.steps import Steps, make_mesh  # noqa: E402
from idml_jax.train.workdir import Workdir  # noqa: E402


def synchronous_save(ckpts: Checkpoints, state, step: int) -> None:
  """848c6dd's ``Checkpoints.save``: checksums, then orbax's save of the state dict (one
  orbax array per leaf), on the caller's thread."""
  state_dict = flax.serialization.to_state_dict(state)
  leaves = {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(state_dict,
                                                                         sep="/").items()}
  meta = {"step": step, "checksums": checksums(leaves)}
  ckpts.latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state_dict),
                                                  meta=ocp.args.JsonSave(meta)), force=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--backbone", default="resnet50")
  p.add_argument("--classes", type=int, default=100)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  c = config_lib.default_config()
  c.method, c.loss.name, c.model.backbone = "idml", "proxy_anchor", args.backbone
  state = Steps.build(c, args.classes, 100, make_mesh()).fresh_state(pretrained=False)
  jax.block_until_ready(state)
  mib = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
  print(f"{args.backbone} train state: {mib:.0f} MiB in {len(jax.tree.leaves(state))} arrays")
  for name, save in (("synchronous", synchronous_save),
                     ("background", lambda ck, s, i: ck.save(s, i))):
    held, done, cpu = [], [], []
    for i in range(args.repeats + 1):
      with tempfile.TemporaryDirectory() as w:
        ckpts = Checkpoints(Workdir(w))
        t, t_cpu = time.perf_counter(), time.process_time()
        save(ckpts, state, i + 1)
        t_held = time.perf_counter() - t
        ckpts.wait()
        t_done, t_cpu = time.perf_counter() - t, time.process_time() - t_cpu
        ckpts.close()
      if i:  # The first of each way compiles (the device copy) and warms the caches.
        held.append(t_held)
        done.append(t_done)
        cpu.append(t_cpu)
    print(f"{name}: the loop is held {statistics.median(held) * 1e3:.0f} ms; complete on disk "
          f"after {statistics.median(done) * 1e3:.0f} ms, {statistics.median(cpu) * 1e3:.0f} ms "
          f"of CPU (medians of {args.repeats})")


if __name__ == "__main__":
  main()
