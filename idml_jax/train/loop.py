"""``train_and_evaluate(config, workdir)``: the whole main job, testable on a tiny config.

A run is resumable from its workdir: the same command continues from the newest
checkpoint that verifies. Before anything is written, the config is compared with the
one the workdir recorded (``run_record.run_changes``): a change that would make a different
run is refused, the allowed ones (more epochs, evaluation and logging settings, data
locations) are recorded in ``run.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import threading
import time

import jax
import ml_collections

from idml_jax import config as config_lib
from idml_jax import data, methods, tasks
from idml_jax.evaluation import NonFiniteEmbeddingsError
from idml_jax.models import get_backbone
from idml_jax.train import figures
from idml_jax.train.checkpoint import Checkpoints
from idml_jax.train.evaluate import embed_split, evaluate
from idml_jax.train.reporting import MetricWindow, MetricWriter, Progress
from idml_jax.train.run_record import ConfigMismatchError, read_config, run_changes
from idml_jax.train.steps import Steps, make_mesh, prefetch_to_device, replicated, variables
from idml_jax.train.workdir import Workdir, is_main_process, read_json, workdir_lock, write_json


class NonFiniteLossError(RuntimeError):
  pass


@dataclasses.dataclass
class Run:
  """What the phases of a run share: its data, model, compiled steps and checkpoints.

  Attributes:
    splits: ``{"train": source, "test": source}`` (or In-Shop's ``query``/``gallery``).
    num_classes: training classes.
    sampler: the training batch sampler (``data.SAMPLERS``), a function of (seed, step).
    skipped: unreadable images met, per split (and in the method's passes over the
      training set, under its ``pass_name``).
  """

  config: ml_collections.ConfigDict
  workdir: Workdir
  splits: dict[str, data.ImageSource]
  num_classes: int
  sampler: data.Sampler
  steps_per_epoch: int
  steps: Steps
  ckpts: Checkpoints
  skipped: dict[str, data.SkipCounter]

  @property
  def total_steps(self) -> int:
    return self.steps_per_epoch * self.config.num_epochs


def open_run(config: ml_collections.ConfigDict, workdir: str, devices=None, *,
             mode: str = "train") -> Run:
  """Validates ``config`` against the schema and the workdir's recorded run (before
  touching anything), loads the data, builds the model and the abstract state."""
  config_lib.validate(config)
  wd = Workdir(workdir)
  recorded = read_json(wd.run_file, "run.json")
  if mode == "eval" and recorded is None:
    raise FileNotFoundError(f"{wd.run_file} not found: {workdir!r} holds no training run "
                            "(train first with --mode=train).")
  changes = (run_changes(read_config(recorded["config"], wd.run_file).to_dict(), config)
             if recorded else {})
  splits = data.load_splits(config.data.name, config.data.source, config.data.data_dir or None)
  tasks.get_task(config).check_splits(splits)
  train_source = splits["train"]
  num_classes = int(train_source.labels.max()) + 1
  if recorded and recorded["num_classes"] != num_classes:
    raise ConfigMismatchError(
        f"The training split now has {num_classes} classes; the run in {workdir} was trained "
        f"on {recorded['num_classes']}: is data.data_dir the same dataset?")
  sampler = data.SAMPLERS[config.data.sampler](
      train_source.labels, config.batch_size, config.data.images_per_class, config.seed)
  steps_per_epoch = sampler.steps_per_epoch(config.max_steps_per_epoch or None)
  mesh = make_mesh(devices)
  for key, value in (("batch_size", config.batch_size),
                     ("eval.batch_size", config.eval.batch_size)):
    if value % mesh.size:
      raise ValueError(f"{key}={value} must be a multiple of the {mesh.size} devices.")
  steps = Steps.build(config, num_classes, steps_per_epoch, mesh)
  if mode == "train" and is_main_process() and (recorded is None or changes):
    history = (recorded or {}).get("changes", [])
    if changes:
      history.append({"changed": {k: list(v) for k, v in changes.items()}})
    write_json(wd.run_file, {"config": config.to_dict(), "num_classes": num_classes,
                             "changes": history})
  passes = (steps.method.pass_name,) if steps.method.pass_name else ()
  return Run(config, wd, splits, num_classes, sampler, steps_per_epoch, steps,
             Checkpoints(wd, renamed=steps.method.renamed_paths),
             {name: data.SkipCounter() for name in (*splits, *passes)})


class _StopRequest:
  """SIGINT (Ctrl-C) during training as a request, honoured between steps: a
  KeyboardInterrupt raised inside a checkpoint save could be swallowed by the saving
  library and the run would go on. A second Ctrl-C interrupts at once."""

  def __init__(self):
    self.requested, self._previous = False, None

  def install(self) -> None:
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)

  def _handle(self, signum, frame):
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True
    logging.warning("Ctrl-C: stopping after this step (again to stop at once).")

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
      self._previous = None


def _warn_about_weights(config: ml_collections.ConfigDict) -> None:
  if config.model.pretrained:
    return
  mode = config_lib.batch_norm_mode(config)
  if mode not in ("train", "none"):
    logging.warning("model.batch_norm=%r without pretrained weights: BatchNorm stays at its "
                    "initial statistics and the network trains with no normalisation. Use "
                    "--config.model.batch_norm=train (or auto).", mode)
  backbone = get_backbone(config.model.backbone)
  if not backbone.weights.startswith("none"):
    logging.warning("Training %s from scratch (no model.pretrained): the papers start from "
                    "ImageNet weights (%s; README, 'Pretrained weights').",
                    config.model.backbone, backbone.weights)
  if backbone.vit is None and backbone.imagenet_stem and config.data.image_size <= 64:
    logging.warning("%s's ImageNet stem shrinks %d px images 4× before its first block, and it "
                    "trains from scratch here: on small images a CIFAR stem learns far more "
                    "(configs/small_images.py; BENCHMARKS.md, 'Real images').",
                    config.model.backbone, config.data.image_size)


def _initial_state(run: Run):
  """``(state, step)``: the newest verified checkpoint, or a fresh state."""
  if run.ckpts.latest_step() is not None:
    state, step = run.ckpts.restore(run.steps.abstract)
    logging.info("Resumed from %s at step %d.", run.workdir.checkpoints, step)
    return state, step
  _warn_about_weights(run.config)
  return run.steps.fresh_state(), 0


def _evaluate(run: Run, state, step: int) -> tuple[dict, dict]:
  """Metrics of ``state`` (at ``step``), refusing non-finite embeddings with the context."""
  try:
    metrics, emb = evaluate(run.steps, state, run.splits, run.skipped)
  except NonFiniteEmbeddingsError as e:
    last = run.ckpts.latest_step()
    raise NonFiniteEmbeddingsError(
        f"Evaluation at step {step}: {e} The last checkpoint is step {last} in "
        f"{run.workdir.checkpoints}.") from None
  return metrics, emb


def _method_pass(run: Run, state, epoch: int):
  """``state`` with the carry the method's pass over the training set makes at the start of
  ``epoch``."""
  cfg, method = run.config, run.steps.method
  skipped = run.skipped.setdefault(method.pass_name or "method", data.SkipCounter())
  embed = lambda augment: embed_split(
      run.steps.embedder, variables(state), run.splits["train"], skipped,
      augment_seed=[cfg.seed, epoch] if augment else None)
  return state.replace(carry=method.epoch_pass(
      state.carry, epoch, methods.TrainSetPass(embed, replicated(run.steps.mesh))))


def _check_finite(window: MetricWindow, step: int, ckpts: Checkpoints,
                  scalars: dict[str, float] | None = None) -> None:
  """Stops the run if a training metric of the window (``scalars``: its means, when read
  already) is NaN/inf, naming the last good checkpoint."""
  if scalars is None and window.all_finite():
    return
  scalars = scalars if scalars is not None else window.means(reset=False)
  bad = ", ".join(k for k, v in scalars.items() if not math.isfinite(v))
  if not bad:
    return
  last = ckpts.latest_step()
  where = (f"The last good checkpoint is step {last} in {ckpts.workdir.checkpoints}."
           if last is not None else "No checkpoint was written yet.")
  raise NonFiniteLossError(f"Non-finite training metrics ({bad}) by step {step}. {where}")


def _better(task: tasks.Task, metrics: dict, best: dict) -> bool:
  """``metrics`` beat ``best`` on the task's primary metric, in its direction."""
  new, old = metrics[task.primary_metric], best[task.primary_metric]
  return new > old if task.higher_is_better else new < old


def _passes_left(run: Run, done: int) -> dict[str, int]:
  """``{"eval": n, "method": m}``: the evaluations (at the end of an epoch, the one ending at
  ``done`` included) and the method's passes (at the start of one) still to run after
  ``done`` steps."""
  cfg = run.config
  first = -(-done // run.steps_per_epoch)
  return {"eval": sum(1 for e in range(first, cfg.num_epochs + 1)
                      if e and (e % cfg.eval.every_epochs == 0 or e == cfg.num_epochs)),
          "method": run.steps.method.passes_left(first, cfg.num_epochs)}


def _skipped(run: Run) -> dict[str, int]:
  """Distinct unreadable images met so far, per split (and method pass), over every process."""
  return {name: c.total() for name, c in run.skipped.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """Trains (resuming from ``workdir`` if it holds a checkpoint), evaluates, writes
  ``results.json`` and figures. Returns the final results, with (not in ``results.json``)
  ``evaluated``: the final evaluation's per-image arrays (``labels`` [N], ``failed`` [N],
  ``nearest_score`` [N], ``uncertainty_norm`` [N] for IDML, the embeddings, ...).

  ``devices``: the devices of the data-parallel mesh (default: all).
  """
  with workdir_lock(Workdir(workdir)):
    return _train_and_evaluate(config, workdir, devices)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices) -> dict:
  run = open_run(config, workdir, devices)
  state, start = _initial_state(run)
  cfg, wd, ckpts = run.config, run.workdir, run.ckpts
  total = run.total_steps
  writer = MetricWriter(wd, resume_step=start, enabled=is_main_process())
  progress = Progress(total, cfg.batch_size, cfg.log_every_steps)
  best = ckpts.best_metrics()
  task = run.steps.task
  logging.info("%s on %s | %d classes, %d images | %d epochs × %d steps | %d devices",
               task.describe(), cfg.data.name, run.num_classes, len(run.splits["train"]),
               cfg.num_epochs, run.steps_per_epoch, run.steps.mesh.size)
  batches = data.train_batches(
      run.splits["train"], run.sampler, image_size=cfg.data.image_size, seed=cfg.seed,
      start_step=start, num_steps=total - start, process_index=jax.process_index(),
      process_count=jax.process_count(), num_threads=cfg.data.num_threads,
      worker_count=cfg.data.worker_count, skipped=run.skipped["train"],
      transform=data.transforms.from_config(cfg)[0])
  batches = prefetch_to_device(batches, run.steps.mesh, cfg.data.device_prefetch)
  untrained = read_json(wd.untrained_file, "untrained.json")
  if cfg.eval.at_start and start == 0:
    untrained, _ = _evaluate(run, state, 0)
    writer.write(0, untrained, "eval/")
    if is_main_process():
      write_json(wd.untrained_file, untrained)
    logging.info("untrained: %s", " ".join(f"{k}={v:.4f}" for k, v in untrained.items()))
  last_eval, t_start = None, time.perf_counter()
  method = run.steps.method
  window = MetricWindow()  # The steps since the last log, summed on the devices.
  stop = _StopRequest()
  try:
    stop.install()
    for step in range(start, total):
      if stop.requested:  # Ctrl-C lands here, between steps, never inside a save.
        raise KeyboardInterrupt
      epoch = step // run.steps_per_epoch
      if step % run.steps_per_epoch == 0 and method.pass_due(epoch):
        with progress.excluded("method"):
          state = _method_pass(run, state, epoch)
      batch = next(batches)
      plan = method.plan(epoch)  # Host numbers: nothing is read back.
      train_backbone = run.steps.trains_backbone(step)
      # No device-to-host transfer between logging steps (fires on accelerators only).
      with (progress.excluded("compile") if run.steps.compiles(plan, train_backbone=train_backbone)
            else contextlib.nullcontext()), jax.transfer_guard_device_to_host("disallow"):
        state, metrics = run.steps.train_step(state, batch, plan, train_backbone=train_backbone)
        window.add(metrics)
      done = step + 1
      epoch_end = done % run.steps_per_epoch == 0
      if done % cfg.log_every_steps == 0:
        scalars = window.means()
        _check_finite(window, done, ckpts, scalars)
        scalars.update(progress(done, scalars, _passes_left(run, done)))
        writer.write(done, scalars, "train/")
      elif epoch_end:  # Always checked before saving: one value read back.
        _check_finite(window, done, ckpts)
      if not epoch_end:
        continue
      ep = done // run.steps_per_epoch
      if ep % cfg.eval.every_epochs == 0 or done == total:
        with progress.excluded("eval"):
          metrics_eval, emb = _evaluate(run, state, done)
        last_eval = (dict(metrics_eval), emb) if done == total else None
        writer.write(done, {**metrics_eval, **{f"skipped_{k}": v for k, v in
                                               _skipped(run).items()}}, "eval/")
        logging.info("epoch %d: %s", ep, " ".join(f"{k}={v:.4f}" for k, v in metrics_eval.items()))
        if best is None or _better(task, metrics_eval, best):
          ckpts.save_best(state, done, {"epoch": ep, **metrics_eval})
          best = {"step": done, "epoch": ep, **metrics_eval}
      if ep % cfg.checkpoint_every_epochs == 0 or done == total:
        ckpts.save(state, done)
  except KeyboardInterrupt:
    logging.warning("Interrupted: the last complete checkpoint (step %s) in %s is kept; "
                    "re-run the same command to resume.", ckpts.latest_step(), wd.checkpoints)
    raise
  finally:
    stop.restore()
    ckpts.wait()
    writer.close()
  final, emb = last_eval or _evaluate(run, state, total)
  ckpts.close()
  results = {"final": final, "best": best, "untrained": untrained, "steps": total,
             "train_seconds_this_run": time.perf_counter() - t_start,
             "steps_this_run": total - start, "skipped_images": _skipped(run),
             "risk_coverage": emb["selective"], "undefined": emb["undefined"],
             "calibration": emb.get("calibration"),
             "config": cfg.to_dict()}
  if is_main_process():
    write_json(wd.results_file, results)
    _draw_figures(run, emb)
  logging.info("Done. Final: %s", " ".join(f"{k}={v:.4f}" for k, v in final.items()))
  return {**results, "evaluated": emb}


def _draw_figures(run: Run, emb: dict) -> None:
  """The workdir's figures; one that cannot be drawn is skipped with a note."""
  source = run.splits.get("query", run.splits.get("test"))
  for name, draw in (("training curves", lambda: figures.training_curves(
                         run.workdir, run.steps.task.primary_metric)),
                     ("retrieval grid", lambda: "semantic" in emb and figures.retrieval_grid(
                         run.workdir, emb, source)),
                     ("uncertainty figure", lambda: figures.uncertainty_vs_error(
                         run.workdir, emb)),
                     ("risk-coverage figure", lambda: figures.risk_coverage_curves(
                         run.workdir, emb["selective"])),
                     ("reliability diagram", lambda: "calibration" in emb and
                      figures.reliability(run.workdir, emb["calibration"]))):
    try:
      draw()
    except Exception as e:  # noqa: BLE001  A figure must never lose the results.
      logging.warning("Could not draw the %s: %s: %s", name, type(e).__name__, e)


def evaluate_only(config: ml_collections.ConfigDict, workdir: str, best: bool = True) -> dict:
  """``--mode=eval``: metrics of the best (or latest) checkpoint in ``workdir``."""
  run = open_run(config, workdir, mode="eval")
  use_best = best and run.ckpts.best.latest_step() is not None
  if best and not use_best:
    logging.warning("No best checkpoint in %s: evaluating the latest.", workdir)
  state, step = run.ckpts.restore(run.steps.abstract, best=use_best)
  try:
    metrics, _ = evaluate(run.steps, state, run.splits, run.skipped)
  except NonFiniteEmbeddingsError as e:
    raise NonFiniteEmbeddingsError(
        f"Checkpoint step {step} in {workdir} ({'best' if use_best else 'latest'}): {e}"
    ) from None
  finally:
    run.ckpts.close()
  return {"step": step, **metrics}
