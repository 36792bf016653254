"""Test set-up: 8 forced host devices so sharding tests run on any CPU."""

import os
import tempfile

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The training tests compile the same small programs many times (fresh runs, resumes, the
# entry point in subprocesses, the notebook's kernel): a persistent compilation cache, set
# through the environment so child processes share it, turns the repeats into cache hits.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "idml_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402, F401  (initialised with the settings above)
