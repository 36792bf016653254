"""Faults and degenerate inputs: never a wrong number, never a lost good checkpoint.

A tiny run is trained once without interruption (the reference); each test damages a copy of
its workdir (or the run itself) the way a kill, a full disk or a bad input would, re-runs the
same command, and checks that it either finishes with the reference's metrics or stops with
one clear line.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
import zlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, tiny

from idml_jax import data
from idml_jax.data.sources import ArraySource
from idml_jax.train import loop, packing
from idml_jax.train.checkpoint import CheckpointError, Checkpoints
from idml_jax.train.run_record import ConfigMismatchError
from idml_jax.train.steps import Steps, make_mesh, to_global
from idml_jax.train.workdir import Workdir

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


def _config(**kw):
  return tiny(method="idml", loss="proxy_anchor", eval__at_start=True, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run: 2 epochs × 2 steps, checkpoints at steps 2 and 4."""
  workdir = tmp_path_factory.mktemp("reference")
  return loop.train_and_evaluate(_config(), str(workdir)), workdir


def _copy(reference, tmp_path):
  dst = tmp_path / "run"
  shutil.copytree(reference[1], dst)
  return dst


def _data_files(step_dir):
  """A checkpoint's array data files, largest first (packed ``<dtype>.bin``, or orbax's)."""
  files = [f for f in step_dir.rglob("*") if f.is_file() and ("/d/" in str(f)
                                                               or f.suffix == ".bin")]
  return sorted(files, key=lambda f: f.stat().st_size, reverse=True)


def _flip(path, n=64):
  raw = bytearray(path.read_bytes())
  start = len(raw) // 3
  for i in range(start, min(start + n, len(raw))):
    raw[i] ^= 0xFF
  path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path, damage,
                                                                      caplog):
  run = _copy(reference, tmp_path)
  target = _data_files(run / "checkpoints" / "4")[0]
  if damage == "flip":
    _flip(target)
  elif damage == "truncate":
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
  else:
    target.unlink()
  with caplog.at_level("WARNING"):
    again = loop.train_and_evaluate(_config(), str(run))
  assert "latest checkpoint step 4 is damaged" in caplog.text
  assert again["steps_this_run"] == 2  # Resumed from step 2, replayed steps 3–4.
  assert again["final"] == pytest.approx(reference[0]["final"], rel=1e-5, abs=1e-6)
  kept = [d.name for d in (run / "damaged").iterdir()]
  assert len(kept) == 1 and kept[0].startswith("latest-4-")  # Kept, renamed, not deleted.


def test_a_damaged_checkpoint_leaves_no_orbax_noise(reference, tmp_path, monkeypatch):
  # orbax's failed restore leaves read coroutines that raise when the garbage collector
  # closes them: in 2 of 8 CLI runs, 12-79 tracebacks (824-5,014 lines) printed through
  # sys.unraisablehook after the one warning ("Exception ignored in: <coroutine object
  # _read_array_index_and_device_put>", or "Event loop is closed"). When they are collected
  # is up to the collector, so the leftovers are handed to the hook here, as it would be.
  from idml_jax import cli
  run = _copy(reference, tmp_path)
  _data_files(run / "checkpoints" / "4")[0].unlink()
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  assert loop.train_and_evaluate(_config(), str(run))["steps_this_run"] == 2
  assert sys.unraisablehook == seen.append  # The library installs no process-wide hook ...
  cli.quiet_orbax_leftovers()  # ... the command-line entry points (main, embed) do.
  space = {}  # A coroutine of orbax's code, as the collector finds them.
  exec(compile("async def read(): pass", os.path.join("site-packages", "orbax", "serialization.py"),
               "exec"), space)
  leftover = space["read"]()
  other = object()
  for exc, obj in ((Exception("Encountered error while reading array index"), leftover),
                   (RuntimeError("Event loop is closed"), None),
                   (ValueError("someone else's"), other)):
    sys.unraisablehook(types.SimpleNamespace(exc_type=type(exc), exc_value=exc,
                                             exc_traceback=None, err_msg=None, object=obj))
  leftover.close()
  assert [u.object for u in seen] == [other]  # Only the foreign one reaches the user.


def test_no_restorable_checkpoint_is_one_clear_error(reference, tmp_path):
  run = _copy(reference, tmp_path)
  for step in ("2", "4"):
    _flip(_data_files(run / "checkpoints" / step)[0])
  with pytest.raises(CheckpointError, match=r"No latest checkpoint .* could be restored: step 4 "
                     r"\(.*\); step 2 \(.*\)\."):
    loop.train_and_evaluate(_config(), str(run))


def test_embedding_never_uses_a_damaged_checkpoint(reference, tmp_path):
  from idml_jax import inference
  run = _copy(reference, tmp_path)
  _flip(_data_files(run / "checkpoints" / "4")[0])
  trained = inference.load(str(run), best=False)
  assert trained.step == 2  # The damaged latest is refused; the one before it is used.


@pytest.mark.parametrize("content", ["", '{"step": 4, "recall@1": 0.'])
def test_a_damaged_best_metrics_file_is_recovered(reference, tmp_path, content, caplog):
  run = _copy(reference, tmp_path)
  (run / "best" / "metrics.json").write_text(content)
  with caplog.at_level("WARNING"):
    again = loop.train_and_evaluate(_config(), str(run))
  assert "Recovered best/metrics.json" in caplog.text
  assert again["best"] == pytest.approx(reference[0]["best"])
  assert json.loads((run / "best" / "metrics.json").read_text()) == pytest.approx(again["best"])


def test_a_best_checkpoint_ahead_of_the_latest_is_replayed_not_a_crash(reference, tmp_path):
  run = _copy(reference, tmp_path)  # A kill after the best save at step 4, before the latest.
  shutil.rmtree(run / "checkpoints" / "4")
  again = loop.train_and_evaluate(_config(eval__every_epochs=1), str(run))
  assert again["final"] == pytest.approx(reference[0]["final"], rel=1e-5, abs=1e-6)
  assert again["best"]["recall@1"] == pytest.approx(reference[0]["best"]["recall@1"])


def test_resume_keeps_the_untrained_metrics_and_a_log_without_repeats(reference, tmp_path):
  run = _copy(reference, tmp_path)
  shutil.rmtree(run / "checkpoints" / "4")
  again = loop.train_and_evaluate(_config(), str(run))
  assert again["untrained"] == pytest.approx(reference[0]["untrained"])
  rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
  keys = [(r["step"], tuple(sorted(r))) for r in rows]
  assert len(keys) == len(set(keys))  # Steps 3–4 were cut from the log, then logged once.
  assert sorted({r["step"] for r in rows}) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("change", [dict(batch_size=8), dict(seed=3),
                                    dict(data__image_size=24, data__resize_size=24),
                                    dict(model__embedding_dim=8),
                                    dict(model__backbone="resnet18")])
def test_resuming_with_a_changed_config_is_refused_before_touching_anything(reference, tmp_path,
                                                                             change):
  run = _copy(reference, tmp_path)
  before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
  key = next(iter(change)).replace("__", ".")
  with pytest.raises(ConfigMismatchError, match=rf"{key} .* -> .*new --workdir"):
    loop.train_and_evaluate(_config(**change), str(run))
  with pytest.raises(ConfigMismatchError):
    loop.evaluate_only(_config(**change), str(run))
  assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # Nothing written.


def test_allowed_changes_resume_and_are_recorded(reference, tmp_path):
  run = _copy(reference, tmp_path)
  again = loop.train_and_evaluate(_config(num_epochs=3, eval__ks=(1, 2)), str(run))
  assert again["steps_this_run"] == 2 and again["steps"] == 6
  recorded = json.loads((run / "run.json").read_text())
  assert recorded["config"]["num_epochs"] == 3
  assert recorded["changes"][-1]["changed"]["num_epochs"] == [2, 3]


class _Unreadable(ArraySource):
  """Every fifth image is corrupt."""

  def load(self, i):
    if i % 5 == 1:
      raise OSError("truncated file")
    return super().load(i)


def test_skipped_images_are_counted_per_split(tmp_path, monkeypatch, caplog):
  real = data.load_splits

  def flaky(*a, **kw):
    return {k: _Unreadable(v.images, v.labels) for k, v in real(*a, **kw).items()}

  monkeypatch.setattr(data, "load_splits", flaky)
  with caplog.at_level("WARNING"):
    results = loop.train_and_evaluate(tiny(method="iaa", iaa__start_epoch=1), str(tmp_path))
  skipped = results["skipped_images"]
  n_test = len(real("digits")["test"])
  # Images, not reads: the two evaluations of the test split meet each bad image twice.
  assert skipped["test"] == len(range(1, n_test, 5))
  assert skipped["train"] > 0 and skipped["estimate"] > 0  # IAA's pass over the training set.
  assert results["final"]["images_test"] == n_test - len(range(1, n_test, 5))
  assert "could not be read: the metrics are over" in caplog.text


class _AllUnreadable(ArraySource):
  def load(self, i):
    raise OSError("truncated file")


def test_a_test_split_with_no_readable_image_is_refused_in_one_line(tmp_path, monkeypatch):
  real = data.load_splits
  monkeypatch.setattr(data, "load_splits", lambda *a, **kw: {
      k: _AllUnreadable(v.images, v.labels) if k == "test" else v
      for k, v in real(*a, **kw).items()})
  n_test = len(real("digits")["test"])
  with pytest.raises(ValueError, match=rf"None of the {n_test} test images could be read") as e:
    loop.train_and_evaluate(tiny(method="baseline"), str(tmp_path))
  assert "-1" not in str(e.value) and len(str(e.value).splitlines()) == 1


def _small_test_split(n_test, classes):
  def load(*a, **kw):
    splits = data.demo.digits(size=16)
    test = splits["test"]
    keep = np.flatnonzero(np.isin(test.labels, classes))[:n_test]
    return {"train": splits["train"], "test": ArraySource(test.images[keep], test.labels[keep])}
  return load


def test_a_test_split_smaller_than_the_largest_k_is_refused_before_training(tmp_path,
                                                                            monkeypatch):
  monkeypatch.setattr(data, "load_splits", _small_test_split(5, [0, 1]))
  with pytest.raises(ValueError, match=r"eval.ks=\(1, 2, 4, 8\) needs at least 8 gallery items"):
    loop.train_and_evaluate(tiny(method="baseline"), str(tmp_path))
  assert not (tmp_path / "run.json").exists()


def test_tiny_and_single_class_splits_train_warn_and_draw_every_figure(tmp_path, monkeypatch,
                                                                      caplog):
  monkeypatch.setattr(data, "load_splits", _small_test_split(4, [2]))
  with caplog.at_level("WARNING"):
    results = loop.train_and_evaluate(tiny(method="idml", loss="proxy_anchor", eval__ks=(1, 2)),
                                      str(tmp_path))
  assert "single class" in caplog.text and "trivially 1" in caplog.text
  assert results["final"]["recall@1"] == 1.0
  for f in ("retrieval_grid.png", "training_curves.png", "uncertainty_vs_error.png"):
    assert (tmp_path / f).exists(), f


@pytest.mark.parametrize("spread", [0.0, 1e-7])
def test_uncertainty_figure_draws_a_constant_or_unit_norm_uncertainty(tmp_path, spread):
  """``||u|| = 1`` (the official L2-normalised u) differs only in float rounding."""
  from idml_jax.train import figures
  u = np.float32(1.0) + np.float32(spread) * np.arange(12, dtype=np.float32)
  emb = {"uncertainty_norm": u, "failed": np.arange(12) % 3 == 0}
  assert figures.uncertainty_vs_error(Workdir(str(tmp_path)), emb) is not None
  assert (tmp_path / "uncertainty_vs_error.png").stat().st_size > 0
  hist, bars = figures.uncertainty_figure(emb).axes
  assert sum(p.get_height() for p in hist.patches) == 12  # Every image in the histogram.
  heights = np.asarray([p.get_height() for p in bars.patches])
  if spread == 0:  # One value: every image in the last quantile bin, 4 of 12 failed.
    np.testing.assert_array_equal(np.isnan(heights), [True] * 4 + [False])
    assert heights[-1] == pytest.approx(4 / 12)
  else:  # Ordered by u = index: bins of the 12 images by quantile, each bar its failure rate.
    fails = (np.arange(12) % 3 == 0).astype(float)
    edges = np.quantile(u.astype(np.float64), np.linspace(0, 1, 6))
    want = [fails[(u >= lo) & ((u < hi) if b < 4 else (u <= hi))].mean()
            for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True))]
    np.testing.assert_allclose(heights, want)


def test_evaluation_refuses_non_finite_embeddings_naming_the_checkpoint(reference, tmp_path,
                                                                        monkeypatch):
  from idml_jax.evaluation import NonFiniteEmbeddingsError
  from idml_jax.train import evaluate
  real = evaluate.embed_split
  monkeypatch.setattr(evaluate, "embed_split", lambda *a, **kw: {
      **(out := real(*a, **kw)), "semantic": out["semantic"] * np.nan})
  with pytest.raises(NonFiniteEmbeddingsError,
                     match=r"Checkpoint step \d+ in .*\(best\): .*NaN/inf"):
    loop.evaluate_only(_config(), str(_copy(reference, tmp_path)))


# ----------------------------------------------------------------------------- the entry point

MAIN = [sys.executable, "-m", "idml_jax.main", f"--config={ROOT}/configs/demo.py:runlocal,digits",
        "--config.data.num_threads=1"]
PATCHED = textwrap.dedent("""
    import errno, os, sys, threading
    from orbax.checkpoint._src.path import atomicity
    from idml_jax.train.checkpoint import Checkpoints
    returned, real_save = threading.Event(), Checkpoints.save
    def save(self, state, step):
      real_save(self, state, step)
      if step == 4:
        returned.set()  # The loop has moved on: the save is in flight in the background.
    Checkpoints.save = save
    real = atomicity.AtomicRenameTemporaryPath.finalize
    def finalize(self, *a, **kw):
      if self.get_final().name == "4" and "checkpoints" in str(self.get_final()):
        if sys.argv.pop(1) == "kill":
          # kill -9 between writing the data and renaming it into place, while the loop
          # runs on (exit 3 if the save held the loop until now).
          os._exit(137 if returned.wait(60) and threading.current_thread() is not
                   threading.main_thread() else 3)
        raise OSError(errno.ENOSPC, "No space left on device", str(self.get()))
      return real(self, *a, **kw)
    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    sys.argv = [sys.argv[0]] + sys.argv[1:]
    from idml_jax.main import run
    run()
""")


def _main(workdir, *args, patch=None):
  cmd = MAIN + [f"--workdir={workdir}", *args]
  if patch:
    cmd = [sys.executable, "-c", PATCHED, patch] + cmd[3:]
  return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


def _errors(out):
  """The lines of output that are not routine log lines (INFO / progress / warnings)."""
  return [line for line in (out.stdout + out.stderr).splitlines()
          if line.strip() and not line.startswith(("I1", "W1", "I0", "W0"))
          and "Warning" not in line and "warnings.warn" not in line and "warn(" not in line]


@pytest.fixture(scope="module")
def main_reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("main_reference")
  out = _main(workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads((workdir / "results.json").read_text())


@pytest.mark.parametrize("fault", ["kill", "full_disk"])
def test_a_kill_or_a_full_disk_during_a_background_save_loses_nothing(main_reference, tmp_path,
                                                                      fault):
  out = _main(tmp_path, patch=fault)
  assert out.returncode == 137 if fault == "kill" else out.returncode != 0
  if fault == "full_disk":
    errors = [line for line in _errors(out) if "E1" in line or "space" in line]
    assert len(errors) == 1 and "No space left on device" in errors[0], _errors(out)
    assert "Traceback" not in out.stderr
  assert Checkpoints(Workdir(tmp_path)).latest_step() == 2  # The good one is intact.
  again = _main(tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["final"] == pytest.approx(main_reference["final"], rel=1e-5, abs=1e-6)
  assert results["untrained"] == pytest.approx(main_reference["untrained"])


def test_a_save_returns_before_its_checksums_and_keeps_the_state_the_next_step_donates(
    tmp_path, monkeypatch):
  """The loop's save hands a device copy to the saving thread and goes on: the checksums
  (blocked here until the next step has run and donated the state) run off the main
  thread, and the checkpoint holds the state as it was at the save."""
  c = _config()
  steps = Steps.build(c, 5, 2, make_mesh())
  state = steps.fresh_state()
  batch = to_global(steps.mesh, {"image": np.zeros((16, 16, 16, 3), np.uint8),
                                 "label": np.repeat(np.arange(4, dtype=np.int32), 4)})
  state, _ = steps.train_step(state, batch, steps.method.plan(0), train_backbone=True)
  saved = jax.device_get(flax.serialization.to_state_dict(state))
  stepped, threads = threading.Event(), []
  real = packing.checksums

  def blocked_checksums(state_dict):
    threads.append(threading.current_thread().name)
    assert stepped.wait(60), "the save waited for its checksums"
    return real(state_dict)

  monkeypatch.setattr(packing, "checksums", blocked_checksums)
  ckpts = Checkpoints(Workdir(tmp_path))
  ckpts.save(state, 1)  # Returns with the checksums still blocked.
  state, _ = steps.train_step(state, batch, steps.method.plan(0), train_backbone=True)
  jax.block_until_ready(state)
  stepped.set()
  ckpts.wait()
  assert threads and threading.main_thread().name not in threads
  restored, step = ckpts.restore(steps.abstract)
  ckpts.close()
  assert step == 1
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(flax.serialization.to_state_dict(restored)), saved)


def test_a_failed_background_save_raises_at_the_next_save_or_wait(tmp_path, monkeypatch):
  ckpts = Checkpoints(Workdir(tmp_path))
  state = Steps.build(_config(), 5, 2, make_mesh()).fresh_state()

  def full(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(packing, "checksums", full)
  ckpts.save(state, 1)
  with pytest.raises(OSError, match="No space left"):
    ckpts.wait()
  ckpts.save(state, 2)
  assert ckpts.latest_step() is None  # Waits for the save in flight; its error waits too.
  with pytest.raises(OSError, match="No space left"):
    ckpts.save(state, 3)
  ckpts.close()


def _odd_state(zero_size: bool = True):
  """A state with what a train state may hold: several dtypes (bfloat16 alone in its group),
  scalars and an empty node; ``zero_size``: arrays of size 0 too, one with its dtype alone
  (orbax refuses to save an array of size 0)."""
  rng = np.random.default_rng(0)
  state = {"a": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
           "b": {"c": jnp.int32(7), "d": jnp.asarray(rng.normal(size=5), jnp.bfloat16),
                 "g": jnp.arange(6, dtype=jnp.int32).reshape(2, 3)},
           "e": {}, "h": jnp.float32(-1.5)}
  if zero_size:
    state.update(f=jnp.zeros((0, 2), jnp.float32), u=jnp.zeros((0,), jnp.uint8))
  return state


def test_a_checkpoint_is_one_array_per_dtype_and_restores_bit_for_bit(tmp_path):
  """orbax's per-array cost (~1.5 ms of CPU each: 0.23 s for the demo's ~160 arrays, taken
  from the step on a CPU) is not paid: orbax's asynchronous save runs the packed handler,
  which writes one raw file per dtype, and restore unpacks them into the model's structure
  and shardings."""
  state = _odd_state()
  saved = jax.device_get(state)
  ckpts = Checkpoints(Workdir(tmp_path))
  ckpts.save(state, 3)
  # The loop's next step donates the state's buffers (here all at once): the save must not
  # read them, even where a dtype has one array.
  jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)(state)
  ckpts.wait()
  stored = tmp_path / "checkpoints" / "3" / "packed"
  assert sorted(f.name for f in stored.glob("*.bin")) == ["bfloat16.bin", "float32.bin",
                                                          "int32.bin"]
  # The model's placement, which the restored arrays must take.
  sharding = jax.sharding.NamedSharding(make_mesh(), jax.sharding.PartitionSpec())
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          saved)
  restored, step = ckpts.restore(abstract)
  ckpts.close()
  assert step == 3 and restored["e"] == {}
  assert jax.tree.structure(restored) == jax.tree.structure(saved)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), strict=True):
    assert got.dtype == want.dtype and got.shape == want.shape and got.sharding == sharding
    np.testing.assert_array_equal(np.asarray(got), want)


def test_a_checkpoint_of_another_model_is_refused_and_kept(tmp_path):
  """A checkpoint whose arrays differ from the model's is not damaged: restore names the
  first difference and the fix, and moves nothing aside."""
  state = _odd_state()
  ckpts = Checkpoints(Workdir(tmp_path))
  ckpts.save(state, 2)
  other = {**jax.device_get(state), "a": np.zeros((3, 5), np.float32)}
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), other)
  with pytest.raises(CheckpointError, match=r"step 2 .*another model's state \(a: float32\[3, 4\] "
                     r"in the checkpoint, float32\[3, 5\] in the model\).*new --workdir"):
    ckpts.restore(abstract)
  ckpts.close()
  assert not (tmp_path / "damaged").exists() and (tmp_path / "checkpoints" / "2").is_dir()


def test_a_checkpoint_saved_array_by_array_still_restores(tmp_path, caplog):
  """Checkpoints written before packing (one orbax array per leaf) resume as they are, and
  their damage is still found."""
  import orbax.checkpoint as ocp
  state = jax.device_get(_odd_state(zero_size=False))
  sd = flax.serialization.to_state_dict(state)
  crcs = {k: zlib.crc32(np.ascontiguousarray(v).tobytes())
          for k, v in flax.traverse_util.flatten_dict(sd, sep="/").items()}
  mngr = ocp.CheckpointManager(Workdir(tmp_path).checkpoints,
                               options=ocp.CheckpointManagerOptions(create=True))
  for step, wrong in ((5, {}), (6, {"a": crcs["a"] ^ 1})):  # Step 6 is damaged.
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(sd),
        meta=ocp.args.JsonSave({"step": step, "checksums": {**crcs, **wrong}})))
  mngr.wait_until_finished()
  mngr.close()
  sharding = jax.sharding.NamedSharding(make_mesh(), jax.sharding.PartitionSpec())
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          state)
  ckpts = Checkpoints(Workdir(tmp_path))
  with caplog.at_level("WARNING"):
    restored, step = ckpts.restore(abstract)
  ckpts.close()
  assert step == 5 and "step 6 is damaged (a does not match its checksum)" in caplog.text
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), state)


@pytest.mark.parametrize("args, expect", [
    (["--config.foo=1"], "--config.foo: no such key"),
    (["--config.model.embeding_dim=3"], "did you mean model.embedding_dim"),
    (["--config.idml.a=3"], "--config.idml.a was renamed: use ism.a"),
    (["--config.classification.mixing=cutmix"], "renamed: use mixing.kind"),
    (["--config.model.pooling=median"], "model.pooling: Unknown value 'median'"),
])
def test_bad_flags_end_in_one_or_two_lines(tmp_path, args, expect):
  out = _main(tmp_path, *args)
  assert out.returncode != 0 and "Traceback" not in out.stderr
  lines = _errors(out)
  assert 1 <= len(lines) <= 2 and expect in " ".join(lines), lines


def test_a_refused_resume_and_a_changed_eval_end_in_one_line(main_reference, tmp_path):
  workdir = tmp_path / "w"
  assert _main(workdir).returncode == 0
  for mode in ("train", "eval"):
    out = _main(workdir, "--config.model.embedding_dim=8", f"--mode={mode}")
    lines = _errors(out)
    assert out.returncode == 1 and len(lines) == 1, lines
    assert "model.embedding_dim 32 -> 8" in lines[0] and "new --workdir" in lines[0]


def test_sigint_keeps_the_checkpoint_and_says_so_in_one_line(tmp_path):
  # Long enough that it cannot finish before the signal, however loaded the machine is.
  proc = subprocess.Popen(MAIN + [f"--workdir={tmp_path}", "--config.num_epochs=5000",
                                  "--config.eval.every_epochs=10000"], cwd=ROOT, env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 300
  while Checkpoints(Workdir(tmp_path)).latest_step() is None and time.time() < deadline:
    assert proc.poll() is None, proc.communicate()[0][-2000:]
    time.sleep(0.2)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 130 and "Traceback" not in out
  assert "Interrupted: the last complete checkpoint" in out and "re-run the same command" in out


def test_a_second_run_on_a_busy_workdir_is_refused_and_a_stale_lock_taken_over(tmp_path,
                                                                               caplog):
  import socket

  from idml_jax.train.workdir import WorkdirBusyError, workdir_lock
  lock = tmp_path / "lock.json"
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:  # A live run on this host holds the workdir.
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid,
                                "since": "2026-12-04 10:00:00"}))
    with pytest.raises(WorkdirBusyError, match=rf"in use by another run \(host .*, PID "
                                               rf"{sleeper.pid}, since 2026-12-04 10:00:00\)"):
      loop.train_and_evaluate(tiny(method="baseline"), str(tmp_path))
    assert not (tmp_path / "run.json").exists() and lock.exists()  # Nothing touched.
  finally:
    sleeper.kill()
    sleeper.wait()
  with caplog.at_level("WARNING"), workdir_lock(Workdir(tmp_path)):  # Its process is gone.
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    with pytest.raises(WorkdirBusyError), workdir_lock(Workdir(tmp_path)):  # Ours is alive.
      pass
  assert "is gone; taking it over" in caplog.text and not lock.exists()  # Released.
  (tmp_path / "file").write_text("")
  with pytest.raises(ValueError, match="is a file, not a folder"):
    loop.train_and_evaluate(tiny(method="baseline"), str(tmp_path / "file"))


TB_FULL_DISK = textwrap.dedent("""
    import errno, sys
    from tensorboardX import record_writer
    from idml_jax.train.workdir import Workdir
    from idml_jax.train.reporting import MetricWriter
    writer = MetricWriter(Workdir(sys.argv[1]))
    writer.write(0, {"loss": 1.0})
    def full(*args):
      raise OSError(errno.ENOSPC, "No space left on device")
    record_writer.RecordWriter.write = record_writer.RecordWriter.flush = full
    writer.write(1, {"loss": 0.5})  # The disk fills: TensorBoard's writes fail.
    writer.close()
    print("closed")
""")


def test_tensorboard_on_a_full_disk_is_closed_quietly(tmp_path):
  out = subprocess.run([sys.executable, "-c", TB_FULL_DISK, str(tmp_path)], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == "closed", out.stderr
  assert "Traceback" not in out.stderr and "Exception" not in out.stderr, out.stderr
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert len(lines) <= 1 and all("TensorBoard" in line for line in lines), lines
  assert [json.loads(r)["step"] for r in open(tmp_path / "metrics.jsonl")] == [0, 1]


def _bad_inputs(tmp):
  """(command args, what the one line must say) for each bad input, files made under tmp."""
  (tmp / "empty").mkdir()
  (tmp / "zero.npz").write_bytes(b"")
  np.savez(tmp / "rows0.npz", semantic=np.zeros((0, 4), np.float32), names=np.array([], str))
  np.savez(tmp / "nosem.npz", names=np.array(["a.png"]))
  good = (tmp / "rows0.npz").read_bytes()
  (tmp / "cut.npz").write_bytes(good[:len(good) // 2])
  (tmp / "run").mkdir()
  (tmp / "run" / "results.json").write_text('{"final": ')
  np.savez(tmp / "g.npz", semantic=np.eye(6, 4, dtype=np.float32), names=np.arange(6).astype(str))
  return [
      (["idml_jax.embed", f"--workdir={tmp / 'nothing'}", f"--images={tmp / 'empty'}",
        f"--out={tmp / 'e.npz'}"], "embed: ", "is not a training workdir"),
      (["idml_jax.search", f"--gallery={tmp / 'zero.npz'}"], "search: ", "is empty (0 bytes)"),
      (["idml_jax.search", f"--gallery={tmp / 'cut.npz'}"], "search: ", "not a readable .npz"),
      (["idml_jax.search", f"--gallery={tmp / 'rows0.npz'}"], "search: ", "N >= 1 is needed"),
      (["idml_jax.search", f"--gallery={tmp / 'nosem.npz'}"], "search: ", "no 'semantic' array"),
      (["idml_jax.search", f"--gallery={tmp / 'g.npz'}", f"--queries={tmp / 'zero.npz'}",
        "--k=1"], "search: ", "queries file"),
      (["idml_jax.report", str(tmp / "run")], "report: ", "is damaged"),
      (["idml_jax.main", f"--config={tmp / 'missing.py'}", f"--workdir={tmp / 'w'}"], "",
       "No such file or directory"),
      (["idml_jax.main", f"--config={ROOT}/configs/demo.py:bogus", f"--workdir={tmp / 'w'}"],
       "FATAL Flags parsing error", "Unknown config argument 'bogus'"),
  ]


def test_bad_inputs_to_every_command_end_in_one_line(tmp_path):
  for args, first, says in _bad_inputs(tmp_path):
    out = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=300)
    lines = _errors(out)
    assert out.returncode != 0 and "Traceback" not in out.stderr, (args, out.stderr[-2000:])
    assert 1 <= len(lines) <= 2 and says in lines[0], (args, lines)
    assert lines[0].startswith(first) or first in lines[0], (args, lines)


def test_a_saved_index_missing_a_key_is_refused_in_one_line(tmp_path):
  from idml_jax.index import GalleryIndex, IndexFileError
  GalleryIndex(np.eye(6, 4, dtype=np.float32), backend="exact_device").save(str(tmp_path / "i"))
  meta = json.loads((tmp_path / "i" / "index.json").read_text())
  del meta["max_k"]
  (tmp_path / "i" / "index.json").write_text(json.dumps(meta))
  with pytest.raises(IndexFileError, match=r"index.json lacks max_k: rebuild the index"):
    GalleryIndex.load(str(tmp_path / "i"))


def test_a_permission_error_is_told_in_one_line():
  from idml_jax.main import _user_error
  message = _user_error(PermissionError(13, "Permission denied", "/data/run/checkpoints"))
  assert "/data/run/checkpoints (Permission denied)" in message and "\n" not in message
  assert "make --workdir writable or choose another --workdir" in message  # The fix, named.


def _damage_manifest(meta_file, how):
  text = meta_file.read_text()
  meta = json.loads(text)
  first = meta["arrays"][0]
  if how == "flipped_byte":  # One byte of a dtype name: float32 -> flo4t32.
    text = text.replace('"float32"', '"flo4t32"', 1)
  elif how == "shape_swapped":  # The same number of values, another shape.
    big = next(e for e in meta["arrays"] if len(e[2]) >= 2 and e[2][0] != e[2][1])
    big[2] = big[2][::-1]
    text = json.dumps(meta)
  elif how == "dtype":
    first[1] = "float16" if first[1] != "float16" else "float32"
    text = json.dumps(meta)
  elif how == "digit":
    sized = next(e for e in meta["arrays"] if e[2])
    sized[2][0] += 1
    text = json.dumps(meta)
  else:  # An entry removed.
    meta["arrays"] = meta["arrays"][1:]
    text = json.dumps(meta)
  assert text != meta_file.read_text()
  meta_file.write_text(text)


@pytest.mark.parametrize("how", ["flipped_byte", "shape_swapped", "dtype", "digit", "removed"])
def test_a_damaged_manifest_falls_back_to_the_previous_checkpoint(reference, tmp_path, how,
                                                                   caplog):
  """Any edit of the newest checkpoint's manifest is damage (the manifest carries its own
  checksum), never "another model's checkpoint": the run resumes from the previous one with
  one warning and ends where the uninterrupted run did."""
  run = _copy(reference, tmp_path)
  _damage_manifest(run / "checkpoints" / "4" / "packed" / "meta.json", how)
  with caplog.at_level("WARNING"):
    again = loop.train_and_evaluate(_config(), str(run))
  warnings = [r for r in caplog.records if "is damaged" in r.getMessage()]
  assert len(warnings) == 1 and "latest checkpoint step 4 is damaged" in warnings[0].getMessage()
  assert again["steps_this_run"] == 2
  assert again["final"] == pytest.approx(reference[0]["final"], rel=1e-5, abs=1e-6)


def test_a_lock_that_is_a_folder_and_a_read_only_workdir_end_in_one_line(tmp_path):
  (tmp_path / "w" / "lock.json").mkdir(parents=True)
  out = _main(tmp_path / "w")
  lines = _errors(out)
  assert out.returncode != 0 and "Traceback" not in out.stderr
  assert len(lines) == 1 and "lock.json is a folder, not a run's lock: remove it" in lines[0]
  assert "taking it over" not in out.stderr
  script = textwrap.dedent("""
      import errno, os, sys
      real = os.open
      def read_only(path, *args, **kwargs):  # As on a read-only mount (root ignores chmod).
        if str(path).endswith("lock.json"):
          raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, *args, **kwargs)
      os.open = read_only
      sys.argv[0] = "idml_jax.main"
      from idml_jax import main
      main.run()
  """)
  out = subprocess.run([sys.executable, "-c", script, f"--config={ROOT}/configs/demo.py:runlocal",
                        f"--workdir={tmp_path / 'ro'}"], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=300)
  lines = _errors(out)
  assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert len(lines) == 1 and "Read-only file system): make --workdir writable" in lines[0]


def test_an_old_config_file_ends_in_one_line_naming_what_replaced_it(tmp_path):
  old = tmp_path / "old.py"
  old.write_text("from idml_jax.config import default_config, uses_idml\n\n"
                 "def get_config():\n  return default_config()\n")
  out = subprocess.run([sys.executable, "-m", "idml_jax.main", f"--config={old}",
                        f"--workdir={tmp_path / 'w'}"], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert len(lines) <= 2 and "uses_idml" in lines[0]
  assert "use idml_jax.methods.METHODS[method].introspective" in lines[0]


def test_an_old_workdir_embeds_evaluates_and_resumes(reference, tmp_path):
  """A run.json written before keys were added (``model.conv_init`` and
  ``data.device_prefetch`` here) and with a back-end's old name: read with today's defaults
  for the missing keys, the recorded values kept."""
  from idml_jax import inference
  run = _copy(reference, tmp_path)
  recorded = json.loads((run / "run.json").read_text())
  del recorded["config"]["model"]["conv_init"], recorded["config"]["data"]["device_prefetch"]
  recorded["config"]["eval"]["backend"] = "exact"
  (run / "run.json").write_text(json.dumps(recorded))
  trained = inference.load(str(run))
  assert trained.config.model.conv_init == "kaiming_normal"
  assert trained.config.eval.backend == "rank_count" and trained.step in (2, 4)
  assert loop.evaluate_only(_config(), str(run))["step"] in (2, 4)
  again = loop.train_and_evaluate(_config(num_epochs=3), str(run))
  assert again["steps_this_run"] == 2
