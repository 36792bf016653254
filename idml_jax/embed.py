"""Embed a folder of images with a trained model.

    python -m idml_jax.embed --workdir=runs/demo --images=photos/ --out=embeddings.npz

Writes ``semantic`` [N, D] float32 (the retrieval embeddings, not normalised; a classifier's
workdir gives ``logits`` [N, C] instead), ``uncertainty_norm`` [N] (IDML's ‖u‖; 0 without an
uncertainty head), ``names`` [N] (paths relative to ``--images``), ``labels`` [N] (each
image's top-level sub-folder, when the images are in class sub-folders: what
``idml_jax.calibrate`` needs), and the run's ISM parameters and checkpoint (``ism_a``,
``ism_b``, ``semantic_distance``, ``workdir``, ``checkpoint``, ``step``). Then
``python -m idml_jax.search`` answers queries.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (run.json + checkpoints).")
_IMAGES = flags.DEFINE_string("images", None, "Folder of images (searched recursively).")
_OUT = flags.DEFINE_string("out", "embeddings.npz", "Output .npz file.")
_LATEST = flags.DEFINE_bool("latest", False, "Use the latest checkpoint, not the best.")


def main(argv):
  del argv
  out_dir = os.path.dirname(os.path.abspath(_OUT.value))
  if not os.path.isdir(out_dir):
    sys.exit(f"embed: --out={_OUT.value}: the folder {out_dir} does not exist; create it first.")
  if not os.path.isdir(_IMAGES.value):
    sys.exit(f"embed: --images={_IMAGES.value} is not a folder.")
  from idml_jax import cli, inference
  from idml_jax.evaluation.inputs import check_finite

  cli.install()
  try:
    inference.run_record(_WORKDIR.value)  # Not a workdir, or no images: said before any
    inference.image_files(_IMAGES.value)  # model is loaded.
    trained = inference.load(_WORKDIR.value, best=not _LATEST.value)
    emb = inference.embed_folder(trained, _IMAGES.value)
    for key in ("logits", "semantic", "uncertainty_norm"):  # Nothing non-finite is stored.
      if key in emb:
        check_finite(emb[key], f"The {key} outputs of the {trained.checkpoint} checkpoint "
                               f"(step {trained.step}) of {_WORKDIR.value}")
  except (ValueError, OSError, KeyError) as e:  # A workdir, checkpoint or folder to fix.
    sys.exit(f"embed: {e}")
  names = [str(n) for n in emb["names"]]
  if all(os.sep in n for n in names):
    emb["labels"] = np.asarray([n.split(os.sep, 1)[0] for n in names])
  ism = trained.config.ism
  np.savez(_OUT.value, **emb, ism_a=ism.a, ism_b=ism.b,
           semantic_distance=ism.semantic_distance, workdir=os.path.abspath(_WORKDIR.value),
           checkpoint=trained.checkpoint, step=trained.step)
  shapes = ", ".join(f"{k} {v.shape}" for k, v in emb.items() if k not in ("names", "labels"))
  print(f"{len(emb['names'])} images -> {_OUT.value} ({shapes}; {trained.checkpoint} "
        f"checkpoint, step {trained.step})")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "images"])
  app.run(main)
