"""What the command-line entry points (``main``, ``embed``) set up process-wide, and only
they: a library call (``train_and_evaluate``, ``Checkpoints.restore``, a notebook) changes no
hook or handler of the process."""

from __future__ import annotations

import logging
import os
import sys

from absl import logging as absl_logging


def _is_orbax_leftover(u) -> bool:
  """An unraisable exception (``sys.unraisablehook``'s argument) that a failed orbax restore
  leaves behind: its unfinished read coroutines, closed by the garbage collector, raise the
  read error again, or find their event loop closed."""
  code = getattr(u.object, "cr_code", None)
  from_orbax = code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
  closed_loop = isinstance(u.exc_value, RuntimeError) and "Event loop is closed" in str(
      u.exc_value)
  return from_orbax or closed_loop


def quiet_orbax_leftovers() -> None:
  """Keeps a failed restore's leftovers (:func:`_is_orbax_leftover`: up to thousands of
  traceback lines, collected at any later moment) from the user's terminal: a damaged
  checkpoint is one warning line. Every other unraisable exception still reaches the
  previous hook. Idempotent."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_orbax_leftovers", False):
    return

  def hook(u):
    if _is_orbax_leftover(u):
      logging.debug("Dropped what a failed checkpoint read left: %s", u.exc_value)
      return
    previous(u)

  hook.drops_orbax_leftovers = True
  sys.unraisablehook = hook


def _orbax_record(record: logging.LogRecord) -> bool:
  """Orbax logs every save and restore at INFO, and a failed background save as errors with
  tracebacks; that failure is raised again when the save is awaited, and reported then in one
  line. So orbax's warnings are kept, its errors only at debug verbosity."""
  if "orbax" not in record.pathname:
    return True
  return record.levelno == logging.WARNING or (record.levelno > logging.WARNING and
                                               absl_logging.level_debug())


def install() -> None:
  """INFO logging without orbax's own chatter, and :func:`quiet_orbax_leftovers`."""
  logging.getLogger().setLevel(logging.INFO)
  for handler in logging.getLogger().handlers:
    if _orbax_record not in handler.filters:
      handler.addFilter(_orbax_record)
  quiet_orbax_leftovers()
