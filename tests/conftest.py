"""Test set-up: 8 forced host devices so sharding tests run on any CPU."""

import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # noqa: E402

import jax  # noqa: E402

# The training tests compile the same small programs many times (fresh runs, resumes):
# a persistent compilation cache turns the repeats into cache hits.
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(tempfile.gettempdir(), "idml_jax_test_xla_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
