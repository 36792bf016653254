"""Entry point: ``python -m idml_jax.main --config=configs/demo.py --workdir=/tmp/demo``.

Flags: ``--config`` (an ml-collections config file, ``file.py:arg`` passes ``arg`` to its
``get_config``; override any value with ``--config.key=value``), ``--workdir`` (checkpoints,
TensorBoard, results.json, figures; re-running resumes), ``--mode=train|eval``.
Multi-host (TPU pod slices, SLURM GPU clusters): ``jax.distributed.initialize()`` runs
when ``--multihost`` is set (no arguments needed on TPU VMs; ``--coordinator_address``,
``--num_processes``, ``--process_id`` elsewhere). Start the same command on every host; the
workdir must be a filesystem all hosts share (NFS, a gcsfuse-mounted bucket).

A failure the user can fix (a bad config, a missing dataset, a refused resume, a full
disk) ends in one or two lines saying what to do; ``--verbosity=1`` shows the traceback.
"""

from __future__ import annotations

import errno
import json
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
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


def _user_error(e: BaseException) -> str | None:
  """The one-line message of a failure the user can act on, or None for a bug."""
  from idml_jax.evaluation import NonFiniteEmbeddingsError
  from idml_jax.train.checkpoint import CheckpointError
  from idml_jax.train.loop import NonFiniteLossError
  from idml_jax.train.workdir import WorkdirBusyError

  if isinstance(e, OSError) and e.errno == errno.ENOSPC:
    return (f"No space left on device ({e.filename or e}). Completed checkpoints are intact: "
            "free some space and re-run the same command to resume.")
  if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    return (f"Cannot write {e.filename or e} ({e.strerror}): make --workdir writable or "
            "choose another --workdir.")
  if isinstance(e, (ValueError, FileNotFoundError, CheckpointError, NonFiniteLossError,
                    NonFiniteEmbeddingsError, WorkdirBusyError)):
    return str(e)
  return None


def main(argv):
  del argv
  import jax

  if _MULTIHOST.value:
    # CPU hosts (and the 2-process test) need gloo collectives; accelerators ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from idml_jax import cli
  from idml_jax.train.loop import evaluate_only, train_and_evaluate

  cli.install()

  config = _CONFIG.value
  try:
    config.keys()  # ml_collections defers a config file that failed to load: raised here.
  except OSError as e:
    logging.error("--config: %s", _root_cause(str(e)))
    sys.exit(1)
  if config.get("compile_cache_dir"):  # A re-run or resumed job does not recompile.
    jax.config.update("jax_compilation_cache_dir", config.compile_cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  try:
    if _MODE.value == "train":
      results = train_and_evaluate(config, _WORKDIR.value)
      print(json.dumps({"final": results["final"], "best": results["best"]}, indent=1))
    else:
      print(json.dumps(evaluate_only(config, _WORKDIR.value), indent=1))
  except KeyboardInterrupt:
    sys.exit(130)  # The loop has said which checkpoint is kept.
  except Exception as e:  # noqa: BLE001
    message = _user_error(e) if not absl_logging.level_debug() else None
    if message is None:
      raise
    logging.error("%s", message)
    sys.exit(1)


def _root_cause(message: str) -> str:
  """The last line of a message that embeds a traceback: the error that started it."""
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  return lines[-1] if lines else message


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with an override of a key the schema does not have (a typo, or a
  key of an older schema) reported in one line naming the key to use."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    if "Traceback (most recent call last)" in message:  # The config file's get_config failed.
      message = f"{message.split(': Error whilst', 1)[0]}: {_root_cause(message)}"
    sys.exit(f"FATAL Flags parsing error: {message}\nPass --helpfull to see help on flags.")
  except ImportError as e:  # A config file of an earlier version imports a removed name.
    from idml_jax import config as config_lib

    moved = config_lib.REMOVED_NAMES.get(e.name or "", "") or next(
        (v for k, v in config_lib.REMOVED_NAMES.items() if f"'{k}'" in str(e)), "")
    sys.exit(f"FATAL --config: the config file failed to import ({e}). It may be of an earlier "
             f"version: {'use ' + moved if moved else 'update its imports'}.")
  except (AttributeError, KeyError) as e:
    from idml_jax import config as config_lib

    schema = config_lib.flatten(config_lib.default_config())
    keys = [a.split("=")[0].removeprefix("--config.") for a in argv if a.startswith("--config.")]
    free = [k for k in keys if any(k.startswith(f + ".") for f in config_lib.FREE_KEYS)]
    unknown = [config_lib.unknown_key(k) for k in keys if k not in schema and k not in free]
    if not unknown and free:  # ml_collections cannot add a key from the command line.
      unknown = [f"{k}: not set by the config file (only its keys can be overridden; set it "
                 f"in the config file)" for k in free]
    if not unknown:
      raise e from None  # Not an override's fault: the config file itself (a traceback helps).
    sys.exit("FATAL Flags parsing error: " + "; ".join(f"--config.{u}" for u in unknown) + ".")


def run():
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
