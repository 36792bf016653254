"""Entry point: ``python -m idml_jax.main --config=configs/demo.py --workdir=/tmp/demo``.

Flags: ``--config`` (an ml-collections config file, ``file.py:arg`` passes ``arg`` to its
``get_config``; override any value with ``--config.key=value``), ``--workdir`` (checkpoints,
TensorBoard, results.json, figures; re-running resumes), ``--mode=train|eval``.
Multi-host (TPU pod slices, SLURM GPU clusters): ``jax.distributed.initialize()`` runs
when ``--multihost`` is set (no arguments needed on TPU VMs; ``--coordinator_address``,
``--num_processes``, ``--process_id`` elsewhere). Start the same command on every host; the
workdir must be a filesystem all hosts share (NFS, a gcsfuse-mounted bucket).
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
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (one "
                                "process per host; TPU VMs and SLURM are detected).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 "
                                   "(--multihost; default: detected from TPU/SLURM/MPI).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "--multihost: process count.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "--multihost: this process's index.")


def main(argv):
  del argv
  import jax

  if _MULTIHOST.value:
    # CPU hosts (and the 2-process test) need gloo collectives; accelerators ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
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
