"""``run.json``: what a workdir records of its run, how an earlier version's record is read,
and which changes a resume may make.

A workdir holds one run: :func:`run_changes` compares a resumed run's config with the one
``run.json`` recorded and refuses every change outside ``RESUMABLE_KEYS``. A record written
by an earlier version is read with today's schema (:func:`read_config`): a key added since
takes today's default, a key renamed since is translated, the recorded values never change.
"""

from __future__ import annotations

import json
import logging

import ml_collections

from idml_jax import config as config_lib
from idml_jax import evaluation

# Keys a resumed run (or ``--mode=eval``) may change: how long to train, how to evaluate and
# log, where the data, weights and compiled programs live, and the input pipeline's
# parallelism and prefetch (older runs' run.json lack the last two keys). Any other
# change makes a different run, which must start in a new workdir. A key ending in "." is
# a prefix (every key of that sub-config).
RESUMABLE_KEYS = ("num_epochs", "eval.", "log_every_steps", "checkpoint_every_epochs",
                  "data.data_dir", "data.num_threads", "data.worker_count",
                  "data.device_prefetch", "model.pretrained", "compile_cache_dir")


class ConfigMismatchError(ValueError):
  """A workdir holds a run of another config."""


def _comparable(c) -> dict:
  """Flat config with JSON's value types (tuples -> lists), as run.json stores it."""
  as_dict = c.to_dict() if isinstance(c, ml_collections.ConfigDict) else c
  return config_lib.flatten(
      ml_collections.ConfigDict(json.loads(json.dumps(as_dict, default=str))))


def run_changes(recorded: dict, config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """``{key: (recorded value, new value)}`` of every key ``config`` changes from the
  ``recorded`` config (a ``to_dict()``); raises :class:`ConfigMismatchError` listing the
  changes outside ``RESUMABLE_KEYS``."""
  old, new = _comparable(recorded), _comparable(config)
  changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k)}
  allowed = lambda k: any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_KEYS)
  refused = {k: v for k, v in changed.items() if not allowed(k)}
  if refused:
    listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in refused.items())
    may = ", ".join(k + "*" if k.endswith(".") else k for k in RESUMABLE_KEYS)
    raise ConfigMismatchError(
        f"This workdir's run was trained with another config ({listed}), so it cannot be "
        f"resumed or evaluated with this one: use a new --workdir, or drop those overrides. "
        f"A resume may change only {may}.")
  return changed


# Keys of earlier schemas (config.RENAMED) whose recorded value needs translating too.
_TRANSLATED_VALUES = {"idml.mixup": lambda v: "mixup" if v else "none"}


def read_config(recorded: dict, where="run.json") -> ml_collections.ConfigDict:
  """The config a run recorded (a ``to_dict()``), read with today's schema: today's default
  for each key added since it was written, a key renamed since (``config.RENAMED``) moved to
  its new name. A key this version does not know is refused (ValueError naming it)."""
  config = config_lib.default_config()
  schema = config_lib.flatten(config)
  got = config_lib.flatten(ml_collections.ConfigDict(recorded))
  unknown, added = [], sorted(set(schema) - set(got))
  for key, value in got.items():
    if key not in schema and key in config_lib.RENAMED:
      key, value = config_lib.RENAMED[key].split()[0], _TRANSLATED_VALUES.get(
          key, lambda v: v)(value)
    if key not in schema:
      unknown.append(key)
      continue
    *path, last = key.split(".")
    node = config
    for p in path:
      node = node[p]
    if key in config_lib.FREE_KEYS:
      value = ml_collections.ConfigDict(value)
    elif isinstance(schema[key], tuple) and isinstance(value, list):
      value = tuple(value)  # JSON stores tuples as lists.
    node[last] = value
  if unknown:
    raise ValueError(f"{where} records key(s) {', '.join(unknown)} that this version does not "
                     "know: read the run with the version that trained it.")
  config.eval.backend = evaluation.RENAMED_BACKENDS.get(config.eval.backend,
                                                        config.eval.backend)
  added = [k for k in added if not any(k.startswith(f + ".") for f in config_lib.FREE_KEYS)]
  if added:
    logging.info("%s predates key(s) %s: read with today's defaults.", where, ", ".join(added))
  return config
