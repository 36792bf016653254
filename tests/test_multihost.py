"""Multi-host training on one machine: 2 processes × 4 CPU devices = 1 process × 8 devices.

Both runs go through the real entry point (``python -m idml_jax.main``); the two processes
meet at a coordinator on 127.0.0.1 and all-reduce over gloo.
"""

import os
import socket
import subprocess
import sys

import flax
import jax
import numpy as np

from idml_jax import config as config_lib
from idml_jax import config_files
from idml_jax.train.checkpoint import Checkpoints
from idml_jax.train.steps import Steps, make_mesh
from idml_jax.train.workdir import Workdir

ROOT = os.path.dirname(os.path.dirname(__file__))
CONFIG = os.path.join(ROOT, "configs", "demo.py") + ":runlocal,digits"
# SGD: Adam turns a gradient component that is rounding noise (|g| ~ 1e-9) into a full ±lr
# step, so two reduction orders (2 × 4 and 1 × 8 devices) differ by 2 lr in a few such
# weights; with SGD the comparison is about the data-parallel step alone.
OVERRIDES = ["--config.num_epochs=1", "--config.max_steps_per_epoch=3",
             "--config.eval.at_start=False", "--config.data.num_threads=1",
             "--config.optimizer.name=sgd"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, devices: int, extra=()) -> subprocess.Popen:
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  cmd = [sys.executable, "-m", "idml_jax.main", f"--config={CONFIG}", f"--workdir={workdir}",
         *OVERRIDES, *extra]
  return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
  out, _ = proc.communicate(timeout=400)
  assert proc.returncode == 0, out[-4000:]
  return out


def _config():
  c = config_files.from_file(CONFIG)
  c.num_epochs, c.max_steps_per_epoch = 1, 3
  c.optimizer.name = "sgd"
  config_lib.validate(c)
  return c


def _params(workdir, c):
  ck = Checkpoints(Workdir(workdir))
  assert ck.latest_step() == 3
  state, _ = ck.restore(Steps.build(c, 5, 3, make_mesh()).abstract)
  ck.close()
  return flax.serialization.to_state_dict(state)["params"]


def _largest_difference(a, b) -> float:
  return max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_two_processes_equal_one_process_with_eight_devices(tmp_path):
  """2 × 4 devices = 1 × 8 devices, up to the order of the BatchNorm reductions.

  BatchNorm trains here (from scratch): its batch mean and variance are sums over the global
  batch, which 2 × 4 and 1 × 8 devices add up in another order, and the normalisation carries
  the float32 difference into every gradient. Measured (2-core CPU, 3 SGD steps): the largest
  difference, in the stem's ``model/backbone/conv1/kernel``, is 1.4e-5 between 2 × 4 and
  1 × 8 devices and 5.9e-5 between 1 × 1 and 1 × 8; with BatchNorm frozen (only the
  gradients' cross-device sum left) all three agree to 1.2e-7. So the bound is measured in
  the same run: 2 × 4 must be as close to 1 × 8 as twice 1 × 1 is (same program, another
  reduction order; 1e-6 where that is exact), never a fixed atol that another CPU's rounding
  crosses.
  """
  port = _free_port()
  hosts = [_start(tmp_path / "multi", 4, ["--multihost", f"--coordinator_address=127.0.0.1:{port}",
                                          "--num_processes=2", f"--process_id={i}"])
           for i in range(2)]
  single = _start(tmp_path / "single", 8)
  one = _start(tmp_path / "one", 1)
  try:
    logs = [_finish(p) for p in hosts]
    _finish(single)
    _finish(one)
  finally:  # A failed host leaves the other waiting on collectives: never leak them.
    for p in [*hosts, single, one]:
      if p.poll() is None:
        p.kill()
  for i, log in enumerate(logs):  # Each process loads only its own 8 rows of the 16.
    assert f"Process {i} of 2 loads rows [{8 * i}, {8 * i + 8}) of every global batch of 16" \
        in log, log[-3000:]
  c = _config()
  multi, single, one = (_params(tmp_path / d, c) for d in ("multi", "single", "one"))
  reduction_order = _largest_difference(one, single)
  assert reduction_order < 1e-3  # Float32 rounding, not a different computation.
  assert _largest_difference(multi, single) <= max(2 * reduction_order, 1e-6)
  init = jax.device_get(Steps.build(c, 5, 3, make_mesh()).fresh_state().params)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), multi, init))
  assert max(moved) > 1e-4  # Three steps really trained.
