"""The method seam: the training code knows no method; a new method is one class and a row of
``methods.METHODS``; checkpoints written before the seam restore into today's state."""

import json
import os
import re
import shutil
import threading

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, load_config, tiny

from idml_jax import methods
from idml_jax.train import loop, packing
from idml_jax.train.checkpoint import Checkpoints
from idml_jax.train.run_record import read_config
from idml_jax.train.steps import Steps, make_mesh
from idml_jax.train.workdir import Workdir

FIXTURES = os.path.join(ROOT, "tests", "data", "checkpoint_before_method_seam")


def test_the_training_code_names_no_method():
  pattern = re.compile(r"iaa|class_stats|synthes|uses_idml|uses_iaa|introspective")
  found = []
  for folder, _, files in os.walk(os.path.join(ROOT, "idml_jax", "train")):
    for name in files:
      if name.endswith(".py"):
        for i, line in enumerate(open(os.path.join(folder, name)), 1):
          if pattern.search(line.lower()):
            found.append(f"{name}:{i}: {line.strip()}")
  assert found == []


class _Counting(methods.Method):
  """A toy method: it carries the mean training embedding and the epochs it saw, re-made by a
  pass over the training set at the start of every other epoch, and hands each step a scalar
  and a static flag that the test records."""

  pass_name = "count"

  def init_carry(self, num_classes):
    return {"mean": jnp.zeros((self.config.model.embedding_dim,)),
            "passes": jnp.zeros((), jnp.int32), "epoch": jnp.full((), -1, jnp.int32)}

  def plan(self, epoch):
    return methods.StepPlan((("odd", epoch % 2 == 1),), {"epoch": float(epoch)})

  def pass_due(self, epoch):
    return epoch % 2 == 0

  def epoch_pass(self, carry, epoch, train_set):
    emb = train_set.embed(False)
    return jax.device_put({"mean": jnp.asarray(emb["semantic"].mean(0)),
                           "passes": carry["passes"] + 1, "epoch": jnp.int32(epoch)},
                          train_set.sharding)


def test_a_new_method_is_one_class_and_one_row(tmp_path, monkeypatch):
  monkeypatch.setitem(methods.METHODS, "counting", _Counting)
  seen = []
  real = Steps.train_step

  def record(self, state, batch, plan, *, train_backbone):
    seen.append((int(state.step), dict(plan.static)["odd"], plan.scalars["epoch"]))
    return real(self, state, batch, plan, train_backbone=train_backbone)

  monkeypatch.setattr(Steps, "train_step", record)
  c = tiny(method="counting", loss="contrastive", num_epochs=3)
  results = loop.train_and_evaluate(c, str(tmp_path))
  assert [s[1:] for s in seen] == [(False, 0.0)] * 2 + [(True, 1.0)] * 2 + [(False, 2.0)] * 2
  assert results["skipped_images"]["count"] == 0  # Its pass has its own counter.
  ck = Checkpoints(Workdir(tmp_path))
  state, step = ck.restore(Steps.build(c, 5, 2, make_mesh()).abstract)
  ck.close()
  assert step == 6 and int(state.carry["passes"]) == 2 and int(state.carry["epoch"]) == 2
  assert np.linalg.norm(np.asarray(state.carry["mean"])) > 0  # Checkpointed with the state.
  c.num_epochs = 5  # Resumed: the carry comes back, and the pass of epoch 4 runs once more.
  loop.train_and_evaluate(c, str(tmp_path))
  ck = Checkpoints(Workdir(tmp_path))
  state, _ = ck.restore(Steps.build(c, 5, 2, make_mesh()).abstract)
  ck.close()
  assert int(state.carry["passes"]) == 3 and int(state.carry["epoch"]) == 4


@pytest.mark.parametrize("name", ["iaa", "baseline"])
def test_a_checkpoint_saved_before_the_method_seam_restores(tmp_path, name):
  """Real checkpoints of the previous layout (``class_stats``, ``class_stats_epoch`` at the
  top of every state; written by the code before the seam): IAA's move into its carry, the
  others' placeholders are dropped, every other array is restored bit for bit, and the run
  resumes from them."""
  shutil.copytree(os.path.join(FIXTURES, name), tmp_path / name)
  wd = Workdir(tmp_path / name)
  recorded = json.load(open(wd.run_file))
  c = read_config(recorded["config"])
  steps = Steps.build(c, recorded["num_classes"], 2, make_mesh())
  ck = Checkpoints(wd, renamed=steps.method.renamed_paths)
  state, step = ck.restore(steps.abstract)
  saved, problem = Checkpoints._read(ck.latest, 4)
  ck.close()
  assert step == 4 and problem is None
  flat = packing.arrays(flax.serialization.to_state_dict(jax.device_get(state)))
  for path, value in flat.items():
    old = {"carry/class_stats": "class_stats", "carry/epoch": "class_stats_epoch"}
    source = next((o + path[len(n):] for n, o in old.items() if path.startswith(n)), path)
    np.testing.assert_array_equal(value, saved[source], err_msg=path)
  if name == "iaa":
    assert int(state.carry["epoch"]) == 1 and state.carry["class_stats"].mean.shape[0] == 5
  else:
    assert state.carry == {}
  c.num_epochs = 3  # And the run goes on from it.
  results = loop.train_and_evaluate(c, str(tmp_path / name))
  assert results["steps_this_run"] == 2 and results["final"]["recall@1"] > 0


def _count_values_read(monkeypatch, run):
  """Values read back from the device on the loop's thread while ``run()`` trains, leaving
  out evaluation, the figures and the embedding of passes over the training set (their reads
  are per image, not per step).
  Every read-back path of a jax.Array: conversions, ``__array__``, ``item``/``tolist``,
  ``jax.device_get`` (each value counted once, however it is reached)."""
  from jax._src import array
  counted, depth, loop_thread = [0], [0], threading.current_thread()

  def counting(fn, size=lambda self: 1):
    def wrapper(self, *args, **kwargs):
      if threading.current_thread() is loop_thread and depth[0] == 0:
        counted[0] += size(self)
      depth[0] += 1
      try:
        return fn(self, *args, **kwargs)
      finally:
        depth[0] -= 1
    return wrapper

  for name in ("__float__", "__int__", "__bool__", "__index__", "item"):
    monkeypatch.setattr(array.ArrayImpl, name, counting(getattr(array.ArrayImpl, name)))
  for name in ("__array__", "tolist"):
    monkeypatch.setattr(array.ArrayImpl, name, counting(getattr(array.ArrayImpl, name),
                                                        lambda self: self.size))
  real_get = jax.device_get
  leaves = lambda tree: sum(x.size for x in jax.tree.leaves(tree) if isinstance(x, jax.Array))
  monkeypatch.setattr(jax, "device_get", counting(real_get, leaves))

  def paused(fn):
    def wrapper(*args, **kwargs):
      depth[0] += 1
      try:
        return fn(*args, **kwargs)
      finally:
        depth[0] -= 1
    return wrapper

  monkeypatch.setattr(loop, "_evaluate", paused(loop._evaluate))
  monkeypatch.setattr(loop, "embed_split", paused(loop.embed_split))
  monkeypatch.setattr(loop, "_draw_figures", paused(loop._draw_figures))
  run()
  return counted[0]


@pytest.mark.parametrize("method", ["baseline", "idml", "iaa", "idml+iaa", "classification"])
def test_each_steps_metrics_are_read_back_once_at_most(tmp_path, monkeypatch, method):
  """With a logging interval longer than the run, the loop reads back at each epoch end one
  value (is the window finite?), not the window: under 0.1 values per training step, for every
  method (IAA's passes every epoch included: one value each, its estimate's epoch)."""
  if method == "classification":
    c = load_config("classification.py", "demo,idml_cutmix,runlocal")
    c.data.num_threads = 2
  else:
    c = tiny(method=method, iaa__start_epoch=0, iaa__update_every=1)
  c.num_epochs, c.max_steps_per_epoch, c.log_every_steps = 2, 25, 10_000
  c.eval.every_epochs, c.eval.at_start, c.eval.nmi = 100, False, False
  values = _count_values_read(monkeypatch, lambda: loop.train_and_evaluate(c, str(tmp_path)))
  assert values / (c.num_epochs * c.max_steps_per_epoch) < 0.1, values
