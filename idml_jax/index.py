"""A persistent gallery index: nearest neighbors, calibrated decisions, ISM re-ranking.

    index = GalleryIndex(gallery["semantic"], gallery["names"], gallery["labels"],
                         gallery["uncertainty_norm"])
    index.save("runs/demo/index")                       # ScaNN's files + our metadata
    index = GalleryIndex.load("runs/demo/index")        # no re-embedding, no rebuild
    matches = index.query(queries["semantic"], k=5, uncertainty_norm=queries["uncertainty_norm"])

Search is cosine similarity over the L2-normalised gallery, with a back-end of
``evaluation.SEARCH_BACKENDS``: ``exact_host`` (ScaNN's brute force) on CPU hosts,
``exact_device`` (JAX, tiled over queries × gallery) on accelerators (``idml_jax.platform``),
or ``approximate`` (ScaNN's partitioning + anisotropic quantisation + exact re-ordering).
``query`` adds, per query, its uncertainty and — once :mod:`idml_jax.calibrate` has
stored thresholds — a match / no_match / abstain decision with its reason. ``rerank=True``
re-scores the top-k cosine neighbors with the pairwise introspective similarity (both
sides' uncertainties; ``similarity.introspective_similarity``) and re-orders them.

A saved index is a folder: ``index.json`` (format, sizes, ISM parameters, the checkpoint it
came from, thresholds, the CRC32 of the arrays), ``arrays.npz`` (normalised embeddings,
their norms, names, labels, uncertainties) and ``scann/`` (ScaNN's own serialisation, with
paths relative to the folder so it can be moved). It is written beside the target and
swapped in, so an interrupted save leaves the previous index whole; a damaged one is
refused on loading.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from idml_jax import platform, similarity
from idml_jax.evaluation.confidence import ConfidenceModel
from idml_jax.evaluation.inputs import check_finite
from idml_jax.evaluation.knn import (
    RENAMED_BACKENDS,
    SEARCH_BACKENDS,
    backend_name,
    drop_self,
    jax_search,
    scann_searcher,
)
from idml_jax.ops import l2_normalize_np

FORMAT = 1


@dataclasses.dataclass
class Thresholds:
  """Calibrated decision rules and what they achieved on the held-out split.

  ``rule="similarity"``: match when the top-1 similarity >= ``similarity``, abstain when
  ||u|| > ``uncertainty`` (None: never). ``rule="combined"``: match when the fitted
  confidence (``confidence``, an :class:`evaluation.confidence.ConfidenceModel` as a dict)
  gives the top-1 a probability of being right >= ``combined``, else abstain.
  """

  similarity: float | None = None
  uncertainty: float | None = None  # None: never abstain.
  target_precision: float | None = None  # None: maximal F1.
  heldout: dict = dataclasses.field(default_factory=dict)
  rule: str = "similarity"
  confidence: dict | None = None
  combined: float | None = None

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> Thresholds:
    return cls(**d)


class DecisionsOff(ValueError):
  """The queries lack what the calibrated rule needs (the message says what and why)."""


def top1_scores(top1: np.ndarray, second: np.ndarray | None,
                uncertainty_norm: np.ndarray | None) -> dict[str, np.ndarray]:
  """The confidence scores a query has (``evaluation.confidence_scores``' names): ``nearest``
  [Q], ``gap`` [Q] (with a second neighbor), ``uncertainty`` = -||u|| [Q] (with ||u||)."""
  scores = {"nearest": np.asarray(top1, np.float64)}
  if second is not None and np.all(np.isfinite(second)):
    scores["gap"] = scores["nearest"] - np.asarray(second, np.float64)
  if uncertainty_norm is not None:
    scores["uncertainty"] = -np.asarray(uncertainty_norm, np.float64)
  return scores


def _decide_combined(scores: dict[str, np.ndarray],
                     thresholds: Thresholds) -> tuple[np.ndarray, np.ndarray]:
  model = ConfidenceModel.from_dict(thresholds.confidence)
  missing = [n for n in model.scores if n not in scores]
  if missing:
    need = {"uncertainty": "their uncertainty (embed them with an IDML model: idml_jax.embed "
                           "stores it)", "gap": "a second neighbor (a gallery of two or more)"}
    raise DecisionsOff(f"the index's combined confidence reads {', '.join(model.scores)}; "
                       f"the queries lack {' and '.join(need[m] for m in missing)}")
  p, t = model.probability(scores), thresholds.combined
  inputs = ", ".join(model.scores)
  decision = np.where(p >= t, "match", "abstain")
  reason = np.array([f"confidence {v:.4f} {'>=' if v >= t else '<'} {t:.4f} (combined: {inputs})"
                     for v in p])
  return decision, reason


def decide(similarity: np.ndarray, uncertainty_norm: np.ndarray | None,
           thresholds: Thresholds, second: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
  """Top-1 similarities [Q] (the second neighbors' [Q], the uncertainties [Q]) -> decisions
  and reasons [Q] (str), by the calibrated rule (:class:`Thresholds`).

  Raises :class:`DecisionsOff` where the combined rule reads a score the queries lack. With an
  uncertainty threshold, a query whose uncertainty is NaN or inf abstains."""
  if thresholds.rule == "combined":
    return _decide_combined(top1_scores(similarity, second, uncertainty_norm), thresholds)
  s = np.asarray(similarity, np.float64)
  t, t_u = thresholds.similarity, thresholds.uncertainty
  decision = np.where(s >= t, "match", "no_match").astype(object)
  reason = np.array([f"similarity {v:.4f} {'>=' if v >= t else '<'} {t:.4f}" for v in s],
                    dtype=object)
  if t_u is not None and uncertainty_norm is not None:
    u = np.asarray(uncertainty_norm, np.float64)
    out = u > t_u
    decision[out] = "abstain"
    reason[out] = [f"uncertainty {v:.4f} > {t_u:.4f}" for v in u[out]]
    broken = ~np.isfinite(u)  # Fails closed: an unknown uncertainty never answers.
    decision[broken] = "abstain"
    reason[broken] = [f"uncertainty {v} is not finite" for v in u[broken]]
  return decision.astype(str), reason.astype(str)


class IndexFileError(ValueError):
  """A saved index is missing, damaged or of another format."""


@dataclasses.dataclass
class Matches:
  """Per query [Q] (neighbors [Q, k], best first): gallery ``indices``, ``scores``
  (cosine, or the ISM after re-ranking), ``names``, ``labels`` (None without), the query's
  ``uncertainty`` (None without), ``decision`` and ``reason`` (empty strings before
  calibration, or when the queries lack what the calibrated rule reads); ``note``: why the
  decisions, or the abstention, are off for these queries ("" when they are not)."""

  indices: np.ndarray
  scores: np.ndarray
  names: np.ndarray
  labels: np.ndarray | None
  uncertainty: np.ndarray | None
  decision: np.ndarray
  reason: np.ndarray
  note: str = ""

  def records(self, query_names=None) -> list[dict]:
    """One JSON-ready dict per query."""
    out = []
    for q in range(len(self.indices)):
      rec = {"query": str(query_names[q]) if query_names is not None else q,
             "neighbors": [{"name": str(n), "score": round(float(s), 5),
                             **({"label": str(lab)} if self.labels is not None else {})}
                            for n, s, lab in zip(self.names[q], self.scores[q],
                                                 self.labels[q] if self.labels is not None
                                                 else self.names[q], strict=True)]}
      if self.uncertainty is not None:
        rec["uncertainty"] = round(float(self.uncertainty[q]), 5)
      if self.decision[q]:
        rec["decision"], rec["reason"] = str(self.decision[q]), str(self.reason[q])
      out.append(rec)
    return out


def _crc(path: str) -> int:
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      crc = zlib.crc32(chunk, crc)
  return crc


def read_embeddings(path: str, what: str = "embeddings") -> dict[str, np.ndarray]:
  """The arrays of an ``idml_jax.embed`` ``.npz`` (``semantic`` [N, D], ``names`` [N], ...),
  or a one-line :class:`IndexFileError` naming the file and the fix."""
  redo = f"embed it again with `python -m idml_jax.embed ... --out={path}`"
  if not os.path.isfile(path):
    raise IndexFileError(f"The {what} file {path} does not exist.")
  if os.path.getsize(path) == 0:
    raise IndexFileError(f"The {what} file {path} is empty (0 bytes): {redo}.")
  try:
    with np.load(path) as z:
      arrays = {k: z[k] for k in z.files}
  except Exception as e:  # noqa: BLE001  zipfile/numpy errors of a truncated or foreign file.
    raise IndexFileError(f"The {what} file {path} is not a readable .npz ({type(e).__name__}: "
                         f"{e}; truncated?): {redo}.") from None
  for key in ("semantic", "names"):
    if key not in arrays:
      raise IndexFileError(f"The {what} file {path} has no '{key}' array (it has "
                           f"{', '.join(arrays) or 'none'}): {redo}.")
  if arrays["semantic"].ndim != 2 or len(arrays["semantic"]) == 0:
    raise IndexFileError(f"The {what} file {path} holds {arrays['semantic'].shape} semantic "
                         f"embeddings; [N, D] with N >= 1 is needed: {redo}.")
  return arrays


def _scann_problem(scann_dir: str, crcs: dict | None) -> str | None:
  """What is wrong with a saved ScaNN folder against its recorded checksums, or None."""
  if crcs is None:  # Saved before checksums were recorded: loaded as it is.
    return None
  for name, crc in crcs.items():
    path = os.path.join(scann_dir, name)
    if not os.path.exists(path):
      return f"{name} is missing"
    if _crc(path) != crc:
      return f"{name} does not match its checksum"
  return None


# What an index folder holds (an interrupted save may have written only some of it).
INDEX_FILES = ("index.json", "arrays.npz", "scann", "calibration.png")


def _not_an_index_folder(path: str) -> str | None:
  """Why saving an index at ``path`` would replace something that is not an index: None when
  ``path`` is absent, an empty folder, or holds only an index's files (``INDEX_FILES``)."""
  if not os.path.lexists(path):
    return None
  if not os.path.isdir(path) or os.path.islink(path):
    return "exists and is not a folder"
  others = sorted(set(os.listdir(path)) - set(INDEX_FILES))
  if others:
    return f"is a folder that is not an index (it holds {', '.join(others[:3])}" + (
        ", ..." if len(others) > 3 else "") + ")"
  return None


class GalleryIndex:
  """Gallery embeddings [N, D] (semantic, as embedded) with their metadata, searchable."""

  def __init__(self, embeddings: np.ndarray, names=None, labels=None, uncertainty_norm=None, *,
               max_k: int = 100, backend: str | None = None,
               ism: dict | None = None, source: dict | None = None):
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or len(embeddings) == 0:
      raise ValueError(f"The gallery must be [N, D] with N >= 1; got shape {embeddings.shape}.")
    check_finite(embeddings, "The gallery embeddings")
    n = len(embeddings)
    self.embeddings = l2_normalize_np(embeddings)
    self.semantic_norm = np.linalg.norm(embeddings.astype(np.float64), axis=1)
    self.names = np.asarray(names if names is not None else np.arange(n)).astype(str)
    self.labels = None if labels is None else np.asarray(labels).astype(str)
    self.uncertainty_norm = (None if uncertainty_norm is None
                             else np.asarray(uncertainty_norm, np.float64))
    for what, arr in (("names", self.names), ("labels", self.labels),
                      ("uncertainty_norm", self.uncertainty_norm)):
      if arr is not None and len(arr) != n:
        raise ValueError(f"{what} has {len(arr)} entries for {n} gallery embeddings.")
    if self.uncertainty_norm is not None:
      check_finite(self.uncertainty_norm, "The gallery's uncertainties")
    self.max_k_requested = max_k
    self.backend = backend_name(backend or platform.defaults().search_backend, SEARCH_BACKENDS,
                                "search back-end")
    self.ism = {"a": 4.0, "b": 5.0, "semantic_distance": "raw", **(ism or {})}
    self.source = source or {}
    self.thresholds: Thresholds | None = None
    self._searcher = None
    self._build()

  # ----------------------------------------------------------------------- building
  @property
  def dim(self) -> int:
    return self.embeddings.shape[1]

  @property
  def max_k(self) -> int:
    return min(self.max_k_requested, len(self))

  def __len__(self) -> int:
    return len(self.names)

  def _build(self) -> None:
    self._searcher = (None if self.backend == "exact_device" else scann_searcher(
        self.embeddings, self.max_k, approximate=self.backend == "approximate"))

  def add(self, embeddings: np.ndarray, names=None, labels=None, uncertainty_norm=None) -> None:
    """Appends gallery items (the same model's embeddings; metadata as the gallery has it)
    and rebuilds the search structure. Everything is checked before anything changes."""
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
      raise ValueError(f"Added embeddings must be [M, {self.dim}]; got {embeddings.shape}.")
    check_finite(embeddings, "The added embeddings")
    m = len(embeddings)
    for what, arr in (("names", names), ("labels", labels),
                      ("uncertainty_norm", uncertainty_norm)):
      if arr is not None and len(arr) != m:
        raise ValueError(f"{what} has {len(arr)} entries for {m} added embeddings.")
    if uncertainty_norm is not None:
      check_finite(np.asarray(uncertainty_norm, np.float64), "The added items' uncertainties")
    for what, have, new in (("labels", self.labels, labels),
                            ("uncertainty_norm", self.uncertainty_norm, uncertainty_norm)):
      if (have is None) != (new is None):
        has = have is not None
        raise ValueError(f"The gallery {'has' if has else 'has no'} {what}: pass {what} for "
                         f"the added items {'too' if has else 'neither'}.")
    self.embeddings = np.concatenate([self.embeddings, l2_normalize_np(embeddings)])
    self.semantic_norm = np.concatenate([self.semantic_norm,
                                         np.linalg.norm(embeddings.astype(np.float64), axis=1)])
    start = len(self.names)
    self.names = np.concatenate([self.names, np.asarray(
        names if names is not None else np.arange(start, start + m)).astype(str)])
    if labels is not None:
      self.labels = np.concatenate([self.labels, np.asarray(labels).astype(str)])
    if uncertainty_norm is not None:
      self.uncertainty_norm = np.concatenate([self.uncertainty_norm,
                                              np.asarray(uncertainty_norm, np.float64)])
    self._build()

  # ----------------------------------------------------------------------- searching
  def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Queries [Q, D] -> (cosine scores [Q, k], gallery indices [Q, k]), best first."""
    queries = np.asarray(queries, np.float32)
    if not 0 < k <= self.max_k:
      raise ValueError(f"k={k} must be in 1..{self.max_k} (the gallery has {len(self)} items; "
                       "the index was built for that many neighbors).")
    if queries.ndim != 2 or queries.shape[1] != self.dim:
      raise ValueError(f"The queries must be [Q, {self.dim}] like the gallery; got shape "
                       f"{queries.shape}. Were they embedded by the same model?")
    check_finite(queries, "The query embeddings")
    q = np.ascontiguousarray(l2_normalize_np(queries))
    if self._searcher is None:
      d = platform.defaults()
      return jax_search(q, self.embeddings, k, block_size=d.search_query_block,
                        gallery_block=d.search_gallery_block)
    indices, scores = self._searcher.search_batched_parallel(q, final_num_neighbors=k)
    return scores, indices.astype(np.int64)

  def rerank(self, queries: np.ndarray, query_uncertainty: np.ndarray, indices: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Re-scores neighbors [Q, k] with the pairwise ISM (``du = ||u_q||² + ||u_g||²``, dmu
    from raw or normalised embeddings as the model was trained) and re-orders them (ties
    keep the cosine order)."""
    if self.uncertainty_norm is None:
      raise ValueError("Re-ranking needs the gallery's uncertainties (an IDML model's).")
    q = np.asarray(queries, np.float64)
    g_dir, g_norm = self.embeddings[indices], self.semantic_norm[indices]  # [Q, k, D], [Q, k]
    if self.ism["semantic_distance"] == "normalized":
      q, g = l2_normalize_np(q), g_dir
    else:
      g = g_dir * g_norm[..., None]
    uq = np.asarray(query_uncertainty, np.float64)[:, None, None]  # ||u|| as a 1-d vector:
    ug = self.uncertainty_norm[indices][..., None]  # the ISM uses only ||u||².
    ism = jax.vmap(lambda qa, ua, gb, ub: similarity.introspective_similarity(
        qa[None], ua, gb, ub, a=self.ism["a"], b=self.ism["b"])[0])
    s = np.asarray(ism(jnp.asarray(q, jnp.float32), jnp.asarray(uq, jnp.float32),
                       jnp.asarray(g, jnp.float32), jnp.asarray(ug, jnp.float32)))
    order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(s, order, 1), np.take_along_axis(indices, order, 1)

  def query(self, queries: np.ndarray, k: int = 5, uncertainty_norm: np.ndarray | None = None,
            *, rerank: bool = False, exclude_self: bool = False) -> Matches:
    """Neighbors, scores, the queries' uncertainty and (calibrated) decisions.

    ``exclude_self``: the queries are the gallery itself, each one's own entry left out.
    ``uncertainty_norm`` [Q] must be finite and >= 0 (a norm).
    """
    if uncertainty_norm is not None:
      uncertainty_norm = np.asarray(uncertainty_norm, np.float64)
      if uncertainty_norm.shape != (len(queries),):
        raise ValueError(f"The queries' uncertainty_norm has shape {uncertainty_norm.shape} for "
                         f"{len(queries)} queries.")
      check_finite(uncertainty_norm, "The queries' uncertainties")
      if np.any(uncertainty_norm < 0):
        bad = np.flatnonzero(uncertainty_norm < 0)
        raise ValueError(f"The queries' uncertainties are norms (>= 0); {len(bad)} of "
                         f"{len(uncertainty_norm)} are negative (row {bad[0]}: "
                         f"{uncertainty_norm[bad[0]]}): were they written by idml_jax.embed?")
    need = max(k, 2 if self.thresholds is not None else 1) + int(exclude_self)
    scores, indices = self.search(queries, min(need, self.max_k))
    if exclude_self:
      scores, indices = drop_self(scores, indices, scores.shape[1] - 1)
    top1 = scores[:, 0].copy()  # Decisions use the cosine neighbors, as calibrated.
    second = scores[:, 1].copy() if scores.shape[1] > 1 else None
    scores, indices = scores[:, :k], indices[:, :k]
    if rerank:
      if uncertainty_norm is None:
        raise ValueError("rerank=True needs the queries' uncertainty_norm.")
      scores, indices = self.rerank(queries, uncertainty_norm, indices)
    decision = np.full(len(scores), "", dtype=object)
    reason = np.full(len(scores), "", dtype=object)
    note = ""
    if self.thresholds is not None:
      try:
        decision, reason = decide(top1, uncertainty_norm, self.thresholds, second)
      except DecisionsOff as e:
        note = f"decisions are off: {e}"
      if (self.thresholds.rule == "similarity" and self.thresholds.uncertainty is not None
          and uncertainty_norm is None):
        note = (f"abstention is off: the index abstains when ||u|| > "
                f"{self.thresholds.uncertainty:.4f}, and these queries carry no uncertainty "
                "(embed them with an IDML model: idml_jax.embed stores it)")
    return Matches(indices, scores, self.names[indices],
                   None if self.labels is None else self.labels[indices],
                   uncertainty_norm, np.asarray(decision, str), np.asarray(reason, str), note)

  # ----------------------------------------------------------------------- persistence
  def save(self, directory: str) -> None:
    """Writes the index to ``directory`` (replacing an index there; written beside it, then
    swapped). ``directory`` must be absent, an empty folder, or an index (a folder of only
    an index's own files, ``INDEX_FILES``): anything else is refused, and nothing is renamed
    or deleted."""
    directory = os.path.abspath(directory)
    tmp, old = directory + ".saving", directory + ".old"
    for path, what in ((directory, "--save_index"), (tmp, "its temporary folder"),
                       (old, "its previous copy")):
      problem = _not_an_index_folder(path)
      if problem:
        raise IndexFileError(f"{what} {path} {problem}: choose another path for the index "
                             "(nothing was written, renamed or deleted).")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    arrays = {"embeddings": self.embeddings, "semantic_norm": self.semantic_norm,
              "names": self.names}
    if self.labels is not None:
      arrays["labels"] = self.labels
    if self.uncertainty_norm is not None:
      arrays["uncertainty_norm"] = self.uncertainty_norm
    np.savez(os.path.join(tmp, "arrays.npz"), **arrays)
    if self._searcher is not None:
      scann_dir = os.path.join(tmp, "scann")
      os.makedirs(scann_dir)
      self._searcher.serialize(scann_dir)
      assets = os.path.join(scann_dir, "scann_assets.pbtxt")
      with open(assets) as f:  # ScaNN records absolute paths; relative ones move with us.
        text = re.sub(r'asset_path: "([^"]*/)?([^"/]+)"', r'asset_path: "\2"', f.read())
      with open(assets, "w") as f:
        f.write(text)
    scann_files = (sorted(os.listdir(os.path.join(tmp, "scann")))
                   if self._searcher is not None else [])
    meta = {"format": FORMAT, "size": len(self), "dim": self.dim,
            "max_k": self.max_k_requested,
            "backend": self.backend, "ism": self.ism, "source": self.source,
            "thresholds": None if self.thresholds is None else self.thresholds.to_dict(),
            "arrays_crc32": _crc(os.path.join(tmp, "arrays.npz")),
            "scann_crc32": {f: _crc(os.path.join(tmp, "scann", f)) for f in scann_files}}
    with open(os.path.join(tmp, "index.json"), "w") as f:
      json.dump(meta, f, indent=1)
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(directory):
      os.rename(directory, old)
    os.rename(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)

  @classmethod
  def load(cls, directory: str, backend: str | None = None) -> GalleryIndex:
    """An index saved by :meth:`save` (``backend``: override the saved one)."""
    meta_path = os.path.join(directory, "index.json")
    arrays_path = os.path.join(directory, "arrays.npz")
    old = os.path.abspath(directory) + ".old"
    if not os.path.exists(directory) and os.path.exists(os.path.join(old, "index.json")):
      os.rename(old, directory)  # A save killed between its two renames.
      logging.warning("%s: an interrupted save left it missing; restored the previous index "
                      "from %s.", directory, old)
    if not os.path.exists(meta_path):
      raise IndexFileError(f"{directory!r} holds no index (no index.json): build one with "
                           "`python -m idml_jax.search --gallery=G.npz --save_index=DIR`.")
    try:
      with open(meta_path) as f:
        meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise IndexFileError(f"{meta_path} is damaged ({e}): rebuild the index.") from None
    if meta.get("format") != FORMAT:
      raise IndexFileError(f"{directory} has index format {meta.get('format')}; this version "
                           f"reads {FORMAT}: rebuild the index.")
    missing = [k for k in ("max_k", "ism", "source", "thresholds", "arrays_crc32")
               if k not in meta] + ([] if "backend" in meta or "approximate" in meta
                                    else ["backend"])
    if missing:
      raise IndexFileError(f"{meta_path} lacks {', '.join(missing)}: rebuild the index.")
    if not os.path.exists(arrays_path) or _crc(arrays_path) != meta["arrays_crc32"]:
      raise IndexFileError(f"{arrays_path} is missing or damaged (checksum mismatch): rebuild "
                           "the index.")
    with np.load(arrays_path) as a:
      arrays = {k: a[k] for k in a.files}
    self = cls.__new__(cls)
    self.embeddings, self.semantic_norm = arrays["embeddings"], arrays["semantic_norm"]
    self.names = arrays["names"]
    self.labels = arrays.get("labels")
    self.uncertainty_norm = arrays.get("uncertainty_norm")
    self.max_k_requested = meta["max_k"]
    saved = "scann_ah" if meta.get("approximate") else meta["backend"]  # Older index.json.
    saved = RENAMED_BACKENDS.get(saved, saved)  # Saved under an earlier name.
    self.backend = backend_name(backend or saved, SEARCH_BACKENDS, "search back-end")
    self.ism, self.source = meta["ism"], meta["source"]
    self.thresholds = (None if meta["thresholds"] is None
                       else Thresholds.from_dict(meta["thresholds"]))
    scann_dir = os.path.join(directory, "scann")
    self._searcher = None
    if self.backend == saved != "exact_device" and os.path.isdir(scann_dir):
      problem = _scann_problem(scann_dir, meta.get("scann_crc32"))
      if problem is None:
        try:
          import scann
          self._searcher = scann.scann_ops_pybind.load_searcher(scann_dir)
        except Exception as e:  # noqa: BLE001  Any failure: the arrays are the source of truth.
          problem = f"it does not load ({type(e).__name__})"
      if problem is None and self._searcher.size() != len(self.names):
        problem = f"it holds {self._searcher.size()} items, the index {len(self.names)}"
      if problem is not None:
        logging.warning("%s: %s; the searcher was rebuilt from arrays.npz.", scann_dir, problem)
        self._searcher = None
    if self._searcher is None:
      self._build()
    return self
