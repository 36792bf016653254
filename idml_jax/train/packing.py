"""What a checkpoint stores of a train state: its arrays by path, packed, with checksums, as
an orbax handler (:class:`PackedHandler`).

orbax costs ~1.5 ms of Python per array and save through its array handlers (0.23 s of CPU
for the demo's ~160 arrays: BENCHMARKS.md, "Training speed"; orbax's own performance guide
says per-parameter saving "performs poorly for models with many distinct arrays"), so a
checkpoint holds one raw file per dtype: the state's arrays raveled and concatenated in the
order of the manifest, a list of ``[path, dtype, shape]`` stored in the checkpoint's
``meta.json`` with every array's CRC-32 (recomputed on restore: :func:`verify`). The handler
runs inside orbax's asynchronous save, so the packing and the checksums happen on orbax's
thread, off the train loop: the demo's save costs 13–17 ms of CPU this way, against 27 ms when a
thread of our own packed the state and handed it to orbax's array handler (BENCHMARKS.md).
The train state is replicated (data parallel): each process has all of it, and process 0
writes it. Checkpoints written before still restore
(:meth:`idml_jax.train.checkpoint.Checkpoints.restore`): orbax arrays packed by dtype
(``LAYOUT``), or one per leaf.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import zlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

LAYOUT = "packed"  # Checkpoints of the previous version: orbax arrays, one per dtype.


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


# ----------------------------------------------------------------------------- orbax handler
LAYOUT_FILES = "packed-files"  # The handler's layout: raw files, no TensorStore.


@dataclasses.dataclass
class _PackedItem:
  arrays: dict  # {path: jax.Array or np.ndarray}: the flat state (a device copy of it).
  meta: dict  # JSON-able: stored beside the manifest and the checksums.


def _manifest_crc(manifest: list) -> int:
  return zlib.crc32(json.dumps(manifest).encode())


class PackedHandler(ocp.AsyncCheckpointHandler):
  """The packed layout as an orbax handler (``CheckpointManager`` saves it asynchronously:
  ``async_save`` returns a commit future at once; orbax runs it on its own thread and renames
  the checkpoint into place when it is complete).

  The future fetches the arrays to the host, packs them (:func:`pack`), computes their
  checksums, and writes one raw file per dtype (``<dtype>.bin``) and ``meta.json`` (the
  layout, the manifest and its own CRC-32, the checksums and the caller's ``meta``). Process 0
  writes: the state is replicated. :meth:`restore` returns ``{"leaves": {path: host array},
  "meta": ...}`` as saved; a damaged manifest or a file of the wrong size is refused (a
  damaged checkpoint, never mistaken for another model's).
  """

  def __init__(self):
    self._primary = jax.process_index() == 0

  async def _write(self, directory: epath.Path, item: _PackedItem) -> None:
    leaves = to_host(item.arrays)
    if not self._primary:
      return
    packed, manifest = pack(leaves)
    for dtype, values in packed.items():
      with (directory / f"{dtype}.bin").open("wb") as f:
        f.write(np.ascontiguousarray(values).tobytes())
    meta = {"layout": LAYOUT_FILES, "arrays": manifest, "manifest_crc32": _manifest_crc(manifest),
            "checksums": checksums(leaves), **item.meta}
    (directory / "meta.json").write_text(json.dumps(meta))

  async def async_save(self, directory: epath.Path, args: PackedSave) -> list:
    return [ocp.future.CommitFutureAwaitingContractedSignals(
        self._write(directory, args.item), name="packed_save")]

  def save(self, directory: epath.Path, args: PackedSave) -> None:
    asyncio.run(self._write(directory, args.item))

  def restore(self, directory: epath.Path, args: PackedRestore | None = None) -> dict:
    meta = json.loads((directory / "meta.json").read_text())
    if _manifest_crc(meta["arrays"]) != meta["manifest_crc32"]:
      raise ValueError("the manifest does not match its checksum")
    packed = {}
    for dtype, n in sizes(meta["arrays"]).items():
      raw = (directory / f"{dtype}.bin").read_bytes()
      values = np.frombuffer(raw, jnp.dtype(dtype))
      if values.size != n:
        raise ValueError(f"{dtype}.bin holds {values.size} values; the manifest says {n}")
      packed[dtype] = values
    return {"leaves": unpack(packed, meta["arrays"]), "meta": meta}

  def metadata(self, directory: epath.Path) -> dict | None:
    path = directory / "meta.json"
    return json.loads(path.read_text()) if path.exists() else None


@ocp.args.register_with_handler(PackedHandler, for_save=True)
@dataclasses.dataclass
class PackedSave(ocp.args.CheckpointArgs):
  """Save ``item`` (:class:`_PackedItem`) with :class:`PackedHandler`."""

  item: _PackedItem


@ocp.args.register_with_handler(PackedHandler, for_restore=True)
@dataclasses.dataclass
class PackedRestore(ocp.args.CheckpointArgs):
  """Restore with :class:`PackedHandler`."""


def save_args(arrays: dict, meta: dict) -> ocp.args.Composite:
  """The ``CheckpointManager.save`` arguments of the flat state ``arrays`` with ``meta``."""
  return ocp.args.Composite(packed=PackedSave(_PackedItem(arrays, meta)))
