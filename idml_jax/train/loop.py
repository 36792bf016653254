"""``train_and_evaluate(config, workdir)``: the whole main job, testable on a tiny config."""

from __future__ import annotations

import json
import logging
import math
import os
import time

import jax
import ml_collections
import numpy as np

from idml_jax import config as config_lib
from idml_jax import data, iaa, inference
from idml_jax.train import figures, objective
from idml_jax.train.checkpoint import Checkpoints
from idml_jax.train.evaluate import embed_split, evaluate
from idml_jax.train.reporting import MetricWriter, Progress
from idml_jax.train.state import create, make_model
from idml_jax.train.steps import Steps, make_mesh, replicate, to_global


class NonFiniteLossError(RuntimeError):
  pass


def _sampler(config, train_source):
  if config.data.sampler == "balanced":
    return data.ClassBalancedSampler(train_source.labels, config.batch_size,
                                     config.data.images_per_class, seed=config.seed)
  return data.RandomSampler(len(train_source), config.batch_size, seed=config.seed)


def _maybe_update_class_stats(steps: Steps, state, train_source, epoch: int):
  """Re-estimates the IAA statistics over the whole training set when they are due."""
  cfg = steps.config.iaa
  due = (objective.uses_iaa(steps.config.method) and epoch >= cfg.start_epoch
         and (epoch - cfg.start_epoch) % cfg.update_every == 0
         and int(state.class_stats_epoch) < epoch)
  if not due:
    return state
  t = time.perf_counter()
  emb = embed_split(steps, state, train_source)
  stats = steps.update_class_stats(state.class_stats, emb["semantic"],
                                   emb["labels"].astype(np.int32))
  logging.info("IAA class statistics re-estimated at epoch %d over %d images (%.1f s).", epoch,
               len(emb["labels"]), time.perf_counter() - t)
  return state.replace(class_stats=stats, class_stats_epoch=np.int32(epoch))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """Trains (resuming from ``workdir`` if it holds a checkpoint), evaluates, writes
  ``results.json`` and figures. Returns the final results.

  ``devices``: the devices of the data-parallel mesh (default: all).
  """
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  splits = data.load_splits(config.data.name, config.data.source, config.data.data_dir or None)
  train_source = splits["train"]
  num_classes = int(train_source.labels.max()) + 1
  sampler = _sampler(config, train_source)
  max_steps = config.max_steps_per_epoch or None
  steps_per_epoch = sampler.steps_per_epoch(max_steps)
  total_steps = steps_per_epoch * config.num_epochs

  mesh = make_mesh(devices)
  for key, value in (("batch_size", config.batch_size),
                     ("eval.batch_size", config.eval.batch_size)):
    if value % mesh.size:
      raise ValueError(f"{key}={value} must be a multiple of the {mesh.size} devices.")
  model = make_model(config, num_classes)
  state, tx = create(config, model, num_classes, steps_per_epoch)
  state = replicate(mesh, state)
  steps = Steps(config, model, tx, mesh)

  inference.write_run_file(workdir, config, num_classes)
  ckpts = Checkpoints(workdir)
  start = ckpts.latest_step()
  if start is not None:
    state = ckpts.restore(state, start)
    logging.info("Resumed from %s at step %d.", ckpts.dir, start)
  start = int(state.step)
  writer = MetricWriter(workdir, enabled=is_main)
  progress = Progress(total_steps, config.batch_size, config.log_every_steps)
  skipped = data.SkipCounter()
  best = _read_best(workdir)
  what = (f"classification ({config.method}, mixing {config.classification.mixing})"
          if config.task == "classification" else f"{config.method} | {config.loss.name}")
  logging.info("%s on %s | %d classes, %d images | %d epochs × %d steps | %d devices",
               what, config.data.name, num_classes,
               len(train_source), config.num_epochs, steps_per_epoch, mesh.size)

  batches = data.train_batches(
      train_source, sampler, image_size=config.data.image_size, seed=config.seed,
      start_step=start, num_steps=total_steps - start, process_index=jax.process_index(),
      process_count=jax.process_count(), num_threads=config.data.num_threads,
      worker_count=config.data.worker_count, skipped=skipped,
      transform=data.transforms.TRAIN_TRANSFORMS[config.data.augment])
  metrics, untrained, last_eval = {}, None, None
  key = primary_metric(config)  # Picks the best checkpoint.
  if config.eval.at_start and start == 0:
    untrained, _ = evaluate(steps, state, splits)
    writer.write(0, untrained, "eval/")
    logging.info("untrained: %s", " ".join(f"{k}={v:.4f}" for k, v in untrained.items()))
  t_start = time.perf_counter()
  try:
    for step in range(start, total_steps):
      epoch = step // steps_per_epoch
      if step % steps_per_epoch == 0:
        state = _maybe_update_class_stats(steps, state, train_source, epoch)
      batch = to_global(mesh, {k: v for k, v in next(batches).items() if k in ("image", "label")})
      synthesize = objective.uses_iaa(config.method) and epoch >= config.iaa.start_epoch
      strength = float(iaa.strength_schedule(config.iaa.strength, epoch, config.num_epochs)
                       ) if synthesize else 0.0
      state, metrics = steps.train_step(
          state, batch, strength, synthesize=synthesize,
          train_backbone=epoch >= config.optimizer.warmup_epochs)
      done = step + 1
      epoch_end = done % steps_per_epoch == 0
      if done % config.log_every_steps == 0 or epoch_end:  # Always checked before saving.
        scalars = _finite_scalars(metrics, done, ckpts)
        if done % config.log_every_steps == 0:
          scalars.update(progress(done, scalars))
          writer.write(done, scalars, "train/")
      if epoch_end:
        ep = done // steps_per_epoch
        if ep % config.eval.every_epochs == 0 or done == total_steps:
          metrics_eval, emb = evaluate(steps, state, splits)
          last_eval = (dict(metrics_eval), emb) if done == total_steps else None
          metrics_eval["skipped_images"] = skipped.count
          writer.write(done, metrics_eval, "eval/")
          logging.info("epoch %d: %s", ep, " ".join(f"{k}={v:.4f}" for k, v in
                                                    metrics_eval.items()))
          if best is None or metrics_eval[key] > best[key]:
            best = {"epoch": ep, **metrics_eval}
            ckpts.save_best(state, done, best)
        if ep % config.checkpoint_every_epochs == 0 or done == total_steps:
          ckpts.save(state, done)
  except KeyboardInterrupt:
    logging.warning("Interrupted: the last complete checkpoint (step %s) in %s is kept.",
                    ckpts.latest_step(), ckpts.dir)
    raise
  finally:
    ckpts.wait()
    writer.close()
  return _finish(config, workdir, steps, state, splits, best, untrained, last_eval, total_steps,
                 start, time.perf_counter() - t_start, ckpts)


def primary_metric(config: ml_collections.ConfigDict) -> str:
  return "top1" if config.task == "classification" else "recall@1"


def _finite_scalars(metrics: dict, step: int, ckpts: Checkpoints) -> dict[str, float]:
  """Host copies of the step's metrics; stops the run if any is NaN/inf."""
  scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if not all(math.isfinite(v) for v in scalars.values()):
    last = ckpts.latest_step()
    where = (f"The last good checkpoint is step {last} in {ckpts.dir}." if last is not None
             else "No checkpoint was written yet.")
    raise NonFiniteLossError(f"Non-finite training metrics at step {step}: {scalars}. {where}")
  return scalars


def _read_best(workdir: str) -> dict | None:
  path = os.path.join(workdir, "best", "metrics.json")
  return json.load(open(path)) if os.path.exists(path) else None


def _finish(config, workdir, steps, state, splits, best, untrained, last_eval, total_steps, start,
            seconds, ckpts):
  final, emb = last_eval or evaluate(steps, state, splits)
  ckpts.close()
  results = {"final": final, "best": best, "untrained": untrained, "steps": total_steps,
             "train_seconds_this_run": seconds,
             "steps_this_run": total_steps - start, "config": config.to_dict()}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=1, default=str)
    figures.training_curves(workdir, primary_metric(config))
    if "semantic" in emb:
      figures.retrieval_grid(workdir, emb, splits.get("query", splits.get("test")))
    figures.uncertainty_vs_error(workdir, emb)
  logging.info("Done. Final: %s", " ".join(f"{k}={v:.4f}" for k, v in final.items()))
  return results


def evaluate_only(config: ml_collections.ConfigDict, workdir: str, best: bool = True) -> dict:
  """``--mode=eval``: metrics of the best (or latest) checkpoint in ``workdir``."""
  config_lib.validate(config)
  splits = data.load_splits(config.data.name, config.data.source, config.data.data_dir or None)
  num_classes = int(splits["train"].labels.max()) + 1
  mesh = make_mesh()
  model = make_model(config, num_classes)
  ckpts = Checkpoints(workdir)
  if (ckpts.best if best else ckpts.latest).latest_step() is None:
    raise FileNotFoundError(f"No checkpoint in {workdir}; train first (--mode=train).")
  state, tx = create(config, model, num_classes, 1)
  state = ckpts.restore(replicate(mesh, state), best=best)
  metrics, _ = evaluate(Steps(config, model, tx, mesh), state, splits)
  ckpts.close()
  return metrics
