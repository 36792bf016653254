"""A trained model from a workdir, for embedding new images (the embed and search commands,
the notebook).

Training writes ``<workdir>/run.json`` (the config and the number of training classes);
:func:`load` rebuilds the model from it and restores the best (or latest) checkpoint.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np

from idml_jax.data.folders import IMAGE_EXTENSIONS
from idml_jax.data.sources import FileSource
from idml_jax.train.checkpoint import Checkpoints
from idml_jax.train.evaluate import embed_split
from idml_jax.train.state import create, make_model
from idml_jax.train.steps import Steps, make_mesh, replicate

RUN_FILE = "run.json"


def write_run_file(workdir: str, config: ml_collections.ConfigDict, num_classes: int) -> None:
  """What :func:`load` needs to rebuild the model (written by training, main process)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, RUN_FILE), "w") as f:
      json.dump({"config": config.to_dict(), "num_classes": num_classes}, f, indent=1)


class Trained:
  """A restored model: ``embed(source)`` -> semantic embeddings (classifiers: logits) and
  uncertainty norms."""

  def __init__(self, config, steps: Steps, state, step: int):
    self.config, self.steps, self.state, self.step = config, steps, state, step

  def embed(self, source) -> dict[str, np.ndarray]:
    """``semantic`` [N, D] (classifiers: ``logits`` [N, C]), ``uncertainty_norm`` [N],
    ``labels`` [N], ``index`` [N] (batches of ``config.eval.batch_size``, the training run's
    eval transform)."""
    return embed_split(self.steps, self.state, source)


def load(workdir: str, best: bool = True) -> Trained:
  """The model trained in ``workdir``: its best checkpoint (or the latest)."""
  path = os.path.join(workdir, RUN_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir!r} is not a training workdir "
                            "(train with `python -m idml_jax.main --workdir=...` first).")
  with open(path) as f:
    run = json.load(f)
  config = ml_collections.ConfigDict(run["config"])
  config.model.pretrained = ""  # The checkpoint holds the trained weights.
  ckpts = Checkpoints(workdir)
  mngr = ckpts.best if best and ckpts.best.latest_step() is not None else ckpts.latest
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {workdir}; training has not saved one yet.")
  mesh = make_mesh()
  model = make_model(config, run["num_classes"])
  state, tx = create(config, model, run["num_classes"], 1)
  state = ckpts.restore(replicate(mesh, state), step, best=mngr is ckpts.best)
  ckpts.close()
  return Trained(config, Steps(config, model, tx, mesh), state, step)


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
