"""What the benchmarks share: synthetic embeddings of the papers' dataset sizes, timers, and
each method's recipe and steady state (for benchmarks only)."""

import os

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# The papers' recipe (configs/) of each method, which the step benchmarks time at their sizes.
RECIPES = {"baseline": "idml_pa.py:cub,baseline", "idml": "idml_pa.py:cub",
           "iaa": "iaa.py:cub,ms,resnet50", "idml+iaa": "iaa.py:cub,ms,resnet50,idml"}


def recipe(method: str):
  """The config of ``method``'s paper recipe (``RECIPES``)."""
  from idml_jax.config_files import from_file
  return from_file(os.path.join(ROOT, "configs", RECIPES[method]))


def steady_state(steps, embeddings: np.ndarray, labels: np.ndarray):
  """``(state, plan)`` of the run's last epoch, the method's pass over a training set embedded
  as ``embeddings`` [N, D] with ``labels`` [N] made (IAA: statistics estimated, synthesis on):
  what a step costs once every part of the method is at work."""
  from idml_jax import methods
  from idml_jax.train.steps import replicated

  epoch = steps.config.num_epochs - 1
  train_set = methods.TrainSetPass(lambda augment: {"semantic": embeddings, "labels": labels},
                                   replicated(steps.mesh))
  state = steps.fresh_state()
  state = state.replace(carry=steps.method.epoch_pass(state.carry, epoch, train_set))
  return state, steps.method.plan(epoch)

# (images, classes) of the class-disjoint test / train splits.
SIZES = {
    "cub_test": (5924, 100),
    "cars_test": (8131, 98),
    "sop_test": (60502, 11316),
    "sop_train": (59551, 11318),
}


def clustered_embeddings(name: str, dim: int = 512, noise: float = 0.9, seed: int = 0,
                         intrinsic_dim: int | None = None):
  """Class centres on the sphere plus isotropic noise; every class has >= 2 images.

  ``intrinsic_dim``: if set, centres and noise live in a random subspace of that
  dimension (trained embeddings are far from isotropic; ANN indexes rely on it).
  Returns float32 [N, D] embeddings and int64 [N] labels (sorted by class).
  """
  n, c = SIZES[name]
  rng = np.random.default_rng(seed)
  counts = np.full(c, 2) + rng.multinomial(n - 2 * c, np.ones(c) / c)
  labels = np.repeat(np.arange(c), counts)
  centres = rng.standard_normal((c, dim)).astype(np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  x = centres[labels] + noise / np.sqrt(dim) * rng.standard_normal((n, dim)).astype(np.float32)
  if intrinsic_dim:
    basis, _ = np.linalg.qr(rng.standard_normal((dim, intrinsic_dim)))
    x = (x[:, :intrinsic_dim] @ basis.T).astype(np.float32)
  return x.astype(np.float32), labels


def median_step_seconds(step, state, num_steps: int) -> float:
  """Median wall seconds of ``state, metrics = step(state)`` after one warm-up (compile) call."""
  import statistics
  import time

  import jax

  state, _ = step(state)
  jax.block_until_ready(state)
  times = []
  for _ in range(num_steps):
    t = time.perf_counter()
    state, metrics = step(state)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def timed(fn, repeats: int):
  """``(first output, first-call seconds (compile + run), [seconds of each later call])``."""
  import time

  import jax

  t = time.perf_counter()
  out = jax.block_until_ready(fn())
  first = time.perf_counter() - t
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return out, first, times
