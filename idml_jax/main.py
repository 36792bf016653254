"""Entry point: ``python -m idml_jax.main --config=configs/demo.py --workdir=/tmp/demo``.

Flags: ``--config`` (an ml-collections config file, ``file.py:arg`` passes ``arg`` to its
``get_config``; override any value with ``--config.key=value``), ``--workdir`` (checkpoints,
TensorBoard, results.json, figures; re-running resumes), ``--mode=train|eval``.
Multi-host (TPU pod slices, SLURM GPU clusters): ``jax.distributed.initialize()`` runs
when ``--multihost`` is set (no arguments needed on TPU VMs).
"""

from __future__ import annotations

import json
import logging

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (resumes from it).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (and evaluate) or "
                          "evaluate the best checkpoint.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize().")


def main(argv):
  del argv
  import jax

  if _MULTIHOST.value:
    jax.distributed.initialize()
  logging.getLogger().setLevel(logging.INFO)
  for handler in logging.getLogger().handlers:  # Orbax logs every save at INFO.
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or "orbax" not in r.pathname)
  from idml_jax.train.loop import evaluate_only, train_and_evaluate

  if _MODE.value == "train":
    results = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    print(json.dumps({"final": results["final"], "best": results["best"]}, indent=1))
  else:
    print(json.dumps(evaluate_only(_CONFIG.value, _WORKDIR.value), indent=1))


def run():
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)


if __name__ == "__main__":
  run()
