"""What a checkpoint stores of a train state: its arrays by path, packed, with checksums.

orbax costs ~1.5 ms of Python per array and save (0.23 s of CPU for the demo's 161 arrays;
with 2 arrays, 0.03 s: BENCHMARKS.md, "Training"), so a checkpoint holds one array per dtype:
the state's arrays raveled and concatenated in the order of the manifest, a list of
``[path, dtype, shape]`` stored in the checkpoint's metadata with ``"layout": LAYOUT``. The
train state is replicated (data parallel): each process has all of it, and process 0 writes
it. Checkpoints written before (one orbax array per leaf, no ``"layout"``) still restore
(:meth:`idml_jax.train.checkpoint.Checkpoints.restore`).

Every array also has a CRC-32, recomputed on restore (:func:`verify`).
"""

from __future__ import annotations

import collections
import math
import zlib

import flax
import jax
import jax.numpy as jnp
import numpy as np

LAYOUT = "packed"


def flat(state_dict) -> dict:
  """``{"params/model/...": leaf}``, empty nodes kept (``flax.traverse_util.empty_node``)."""
  return flax.traverse_util.flatten_dict(state_dict, sep="/", keep_empty_nodes=True)


def arrays(state_dict) -> dict:
  """``{"params/model/...": array}``: :func:`flat` without its empty nodes."""
  return {k: v for k, v in flat(state_dict).items() if v is not flax.traverse_util.empty_node}


def _crc(v: np.ndarray) -> int:
  return zlib.crc32(np.ascontiguousarray(v).tobytes())


def checksums(leaves: dict[str, np.ndarray]) -> dict[str, int]:
  """CRC-32 of every array's bytes, by path."""
  return {k: _crc(v) for k, v in leaves.items()}


def verify(leaves: dict[str, np.ndarray], expected: dict[str, int]) -> str | None:
  """None if the restored arrays match their checksums and are finite, else what is wrong."""
  for k, v in leaves.items():
    if expected.get(k) != _crc(v):
      return f"{k} does not match its checksum"
    if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v)):
      return f"{k} holds NaN/inf"
  missing = sorted(set(expected) - set(leaves))
  return f"{missing[0]} is missing" if missing else None


def to_host(arrays: dict) -> dict[str, np.ndarray]:
  """Host copies of replicated arrays, fetched together. A sharded array is refused: one
  process's copy would hold only its shards."""
  for k, v in arrays.items():
    if isinstance(v, jax.Array) and not v.sharding.is_fully_replicated:
      raise ValueError(f"{k} is sharded ({v.sharding}); checkpoints hold a replicated (data "
                       "parallel) train state.")
  local = {k: v.addressable_data(0) if isinstance(v, jax.Array) and not v.is_fully_addressable
           else v for k, v in arrays.items()}
  return {k: np.asarray(v) for k, v in zip(local, jax.device_get(list(local.values())),
                                           strict=True)}


def pack(leaves: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list]:
  """``({dtype name: (n,) the raveled arrays of that dtype, concatenated}, manifest)``, in
  the order of ``leaves``. A dtype whose arrays are all empty is left out: orbax cannot save
  an array of size 0."""
  manifest = [[k, v.dtype.name, list(v.shape)] for k, v in leaves.items()]
  groups = collections.defaultdict(list)
  for v in leaves.values():
    if v.size:
      groups[v.dtype.name].append(v.ravel())
  return {k: np.concatenate(v) for k, v in groups.items()}, manifest


def sizes(manifest: list) -> dict[str, int]:
  """The length of each packed array (dtypes of size 0 left out, as :func:`pack` does)."""
  total = collections.Counter()
  for _, dtype, shape in manifest:
    total[dtype] += math.prod(shape)
  return {k: n for k, n in total.items() if n}


def unpack(packed: dict[str, np.ndarray], manifest: list) -> dict[str, np.ndarray]:
  """``{path: array}`` from the packed host arrays (views)."""
  offsets, out = collections.Counter(), {}
  for path, dtype, shape in manifest:
    n, start = math.prod(shape), offsets[dtype]
    out[path] = (packed[dtype][start:start + n] if n else np.zeros(0, jnp.dtype(dtype))).reshape(
        shape)
    offsets[dtype] += n
  return out


def renamed(leaves: dict[str, np.ndarray], renames: dict[str, str | None]) -> dict:
  """``leaves`` with each path under a prefix of ``renames`` moved to its new prefix, or
  dropped where that is None (a checkpoint of an earlier layout of the state)."""
  out = {}
  for path, v in leaves.items():
    for old, new in renames.items():
      if path == old or path.startswith(old + "/"):
        if new is not None:
          out[new + path[len(old):]] = v
        break
    else:
      out[path] = v
  return out


def first_difference(leaves: dict[str, np.ndarray], target: dict, *,
                     subset: bool = False) -> str | None:
  """The first difference between a checkpoint's arrays (a verified one's) and the flat
  target's (``subset``: only the target's paths must be there), or None."""
  want = {k: f"{jnp.dtype(v.dtype).name}{list(v.shape)}" for k, v in target.items()
          if v is not flax.traverse_util.empty_node}  # ``target`` keeps its empty nodes.
  have = {k: f"{v.dtype.name}{list(v.shape)}" for k, v in leaves.items()}
  for k in sorted(set(want) if subset else set(want) | set(have)):
    if want.get(k) != have.get(k):
      return (f"{k}: {have.get(k, 'absent')} in the checkpoint, {want.get(k, 'absent')} in the "
              "model")
  return None


def placed(host: np.ndarray, like) -> jax.Array:
  """``host`` as a global array with ``like``'s sharding (every process holds all of it)."""
  sharding = getattr(like, "sharding", None)
  if sharding is None:
    return jnp.asarray(host)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
