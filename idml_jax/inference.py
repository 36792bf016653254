"""A trained model from a workdir, for embedding new images (the embed and search commands,
the notebook).

Training records ``run.json`` (the config and the number of training classes) in its
workdir (:class:`idml_jax.train.workdir.Workdir`); :func:`load` rebuilds the model from it
and restores the parameters of the best (or latest) checkpoint, verified (no optimiser is
built and no optimiser state read).
"""

from __future__ import annotations

import os

import numpy as np

from idml_jax import tasks
from idml_jax.data.folders import IMAGE_EXTENSIONS
from idml_jax.data.sources import FileSource
from idml_jax.train.checkpoint import Checkpoints
from idml_jax.train.evaluate import embed_split
from idml_jax.train.run_record import read_config
from idml_jax.train.state import abstract_variables, make_model
from idml_jax.train.steps import Embedder, make_mesh, replicated
from idml_jax.train.workdir import Workdir, read_json


class Trained:
  """A restored model: ``embed(source)`` -> semantic embeddings (classifiers: logits) and
  uncertainty norms."""

  def __init__(self, config, embedder: Embedder, variables: dict, step: int, checkpoint: str):
    self.config, self.embedder, self.variables, self.step = config, embedder, variables, step
    self.checkpoint = checkpoint  # "best" | "latest"

  def embed(self, source) -> dict[str, np.ndarray]:
    """``semantic`` [N, D] (classifiers: ``logits`` [N, C]), ``uncertainty_norm`` [N],
    ``labels`` [N], ``index`` [N] (batches of ``config.eval.batch_size``, the training run's
    eval transform)."""
    return embed_split(self.embedder, self.variables, source)


def run_record(workdir: str) -> dict:
  """``workdir``'s ``run.json`` (no model is built): refused in one line if it has none."""
  wd = Workdir(workdir)
  run = read_json(wd.run_file, "run.json")
  if run is None:
    raise FileNotFoundError(f"{wd.run_file} not found: {workdir!r} is not a training workdir "
                            "(train with `python -m idml_jax.main --workdir=...` first).")
  return run


def load(workdir: str, best: bool = True) -> Trained:
  """The model trained in ``workdir``: its best checkpoint (or the latest)."""
  wd = Workdir(workdir)
  run = run_record(workdir)
  config = read_config(run["config"], wd.run_file)
  ckpts = Checkpoints(wd)
  use_best = best and ckpts.best.latest_step() is not None
  if ckpts.latest_step() is None and not use_best:
    raise FileNotFoundError(f"No checkpoint in {workdir}; training has not saved one yet.")
  task, mesh = tasks.get_task(config), make_mesh()
  model = make_model(task, run["num_classes"])
  abstract = abstract_variables(task, model, run["num_classes"], replicated(mesh))
  restored, step = ckpts.restore(abstract, best=use_best, subset=True)
  ckpts.close()
  return Trained(config, Embedder(task, model, mesh), restored, step,
                 "best" if use_best else "latest")


def image_files(folder: str) -> list[str]:
  """Every image under ``folder`` (recursively), sorted; paths relative to ``folder``."""
  found = []
  for root, _, files in os.walk(folder):
    found += [os.path.relpath(os.path.join(root, f), folder) for f in files
              if not f.startswith("._") and f.lower().endswith(IMAGE_EXTENSIONS)]
  if not found:
    raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {folder!r}.")
  return sorted(found)


def embed_folder(trained: Trained, folder: str) -> dict[str, np.ndarray]:
  """Embeds every image under ``folder``: ``semantic`` [N, D] (not normalised; classifiers:
  ``logits`` [N, C]), ``uncertainty_norm`` [N], ``names`` [N] (relative paths). Unreadable
  images are skipped."""
  names = image_files(folder)
  source = FileSource([os.path.join(folder, n) for n in names], np.zeros(len(names), np.int32))
  emb = trained.embed(source)
  out = {k: v for k, v in emb.items() if k not in ("labels", "index")}
  return {**out, "names": np.asarray(names)[emb["index"]]}
