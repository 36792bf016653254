"""Per-platform defaults: the one place that picks code paths by ``jax.default_backend()``.

Some paths were tuned for XLA:CPU and are slow elsewhere, or the reverse. Every choice
here changes speed only, never a result: tests/test_platform.py runs every path on CPU
and checks they agree.

* ``top_k_group``: :func:`idml_jax.ops.top_k` takes the max of groups of this many
  columns before ``lax.top_k`` (2–5× faster on XLA:CPU, whose top-k sorts whole rows);
  0 calls ``lax.top_k`` directly (GPUs and TPUs have fast top-k kernels).
* ``retrieval_block``: the square block of exact retrieval evaluation (cache-sized on
  CPU; device-memory-sized elsewhere).
* ``search_backend``: the gallery index's search (ScaNN is a CPU library; on accelerators
  the exact tiled JAX search runs on the device), with ``search_query_block`` ×
  ``search_gallery_block`` score tiles.
"""

from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class PlatformDefaults:
  top_k_group: int
  retrieval_block: int
  search_backend: str
  search_query_block: int
  search_gallery_block: int | None


DEFAULTS = {
    "cpu": PlatformDefaults(top_k_group=32, retrieval_block=4096, search_backend="exact_host",
                            search_query_block=1024, search_gallery_block=None),
    "gpu": PlatformDefaults(top_k_group=0, retrieval_block=16384, search_backend="exact_device",
                            search_query_block=4096, search_gallery_block=262144),
    "tpu": PlatformDefaults(top_k_group=0, retrieval_block=16384, search_backend="exact_device",
                            search_query_block=4096, search_gallery_block=262144),
}


def defaults(backend: str | None = None) -> PlatformDefaults:
  """The defaults of ``backend`` (default: ``jax.default_backend()``; unknown: GPU's)."""
  name = backend or jax.default_backend()
  return DEFAULTS.get(name, DEFAULTS["gpu"])
