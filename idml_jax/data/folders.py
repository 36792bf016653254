"""The folder layouts of the official PyTorch repositories, and a generic one.

``load_folder(name, root)`` -> ``{split: FileSource}`` with the class-disjoint splits of
docs/algorithms.md §3. ``root`` is the folder that *contains* the dataset folder (or the
dataset folder itself). A missing or malformed file names what was expected where.
"""

from __future__ import annotations

import os
import re

import numpy as np

from idml_jax import names
from idml_jax.data import specs
from idml_jax.data.sources import FileSource, relabel

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _dataset_dir(name: str, root: str) -> str:
  """``root/<folder>``, or ``root`` itself when it is the dataset folder."""
  spec = specs.get_spec(name)
  for cand in (os.path.join(root, spec.folder), root):
    if os.path.isdir(cand) and os.path.basename(os.path.normpath(cand)) == spec.folder:
      return cand
  raise FileNotFoundError(
      f"{name}: expected the folder {os.path.join(root, spec.folder)!r}. Get the dataset from "
      f"{spec.how_to_get}, unpack it there, and set config.data.data_dir={root!r}.")


def _require(path: str, what: str, name: str) -> str:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{name}: expected {what} at {path!r}. Get it from "
                            f"{specs.get_spec(name).how_to_get}.")
  return path


def _is_image(fname: str) -> bool:
  return not fname.startswith("._") and fname.lower().endswith(IMAGE_EXTENSIONS)


def cub(root: str) -> dict[str, FileSource]:
  """``CUB_200_2011/images/NNN.Name/*.jpg``; classes 1–100 train, 101–200 test."""
  images = _require(os.path.join(_dataset_dir("cub", root), "images"), "the images/ folder",
                    "cub")
  paths, labels = [], []
  for d in sorted(os.listdir(images)):
    m = re.match(r"(\d+)\.", d)
    if not m or not os.path.isdir(os.path.join(images, d)):
      continue
    for f in sorted(os.listdir(os.path.join(images, d))):
      if _is_image(f):
        paths.append(os.path.join(images, d, f))
        labels.append(int(m.group(1)))
  if not paths:
    raise FileNotFoundError(f"cub: no NNN.Name/*.jpg class folders under {images!r}.")
  labels = np.asarray(labels)
  return _split_by_label(paths, labels, lambda y: y <= 100)


def cars(root: str) -> dict[str, FileSource]:
  """``cars196/car_ims/*.jpg`` + ``cars196/cars_annos.mat``; classes 1–98 train, 99–196 test."""
  from scipy.io import loadmat
  base = _dataset_dir("cars", root)
  mat = loadmat(_require(os.path.join(base, "cars_annos.mat"), "cars_annos.mat", "cars"))
  if "annotations" not in mat:
    raise ValueError(f"cars: {os.path.join(base, 'cars_annos.mat')} has no 'annotations' "
                     "struct; is it the original cars_annos.mat?")
  ann = mat["annotations"][0]
  paths = [os.path.join(base, str(a["relative_im_path"][0])) for a in ann]
  labels = np.asarray([int(np.squeeze(a["class"])) for a in ann])
  _require(os.path.dirname(paths[0]), "the car_ims/ folder", "cars")
  return _split_by_label(paths, labels, lambda y: y <= 98)


def sop(root: str) -> dict[str, FileSource]:
  """``Stanford_Online_Products/Ebay_{train,test}.txt`` (label = class_id)."""
  base = _dataset_dir("sop", root)
  out = {}
  for split in ("train", "test"):
    txt = _require(os.path.join(base, f"Ebay_{split}.txt"), f"Ebay_{split}.txt", "sop")
    rows = [line.split() for line in open(txt).read().splitlines()[1:] if line.strip()]
    if any(len(r) != 4 for r in rows):
      raise ValueError(f"sop: {txt} must have 4 columns: image_id class_id super_class_id path.")
    out[split] = FileSource([os.path.join(base, r[3]) for r in rows], [int(r[1]) for r in rows])
  return out


def inshop(root: str) -> dict[str, FileSource]:
  """``InShop/Eval/list_eval_partition.txt`` + images; train, query and gallery splits.

  Query and gallery share one class numbering (a query's positives are gallery items
  with the same item id).
  """
  base = _dataset_dir("inshop", root)
  txt = _require(os.path.join(base, "Eval", "list_eval_partition.txt"),
                 "Eval/list_eval_partition.txt", "inshop")
  rows = [line.split() for line in open(txt).read().splitlines()[2:] if line.strip()]
  if any(len(r) != 3 for r in rows):
    raise ValueError(f"inshop: {txt} must have 3 columns: image_name item_id evaluation_status.")
  img_root = next((d for d in (base, os.path.join(base, "Img")) if os.path.exists(
      os.path.join(d, rows[0][0]))), None)
  if img_root is None:
    raise FileNotFoundError(f"inshop: image {rows[0][0]!r} found neither under {base!r} nor "
                            f"{os.path.join(base, 'Img')!r}; unpack img.zip there.")
  item = lambda s: int(s.split("_")[-1])
  out = {"train": FileSource([os.path.join(img_root, r[0]) for r in rows if r[2] == "train"],
                             [item(r[1]) for r in rows if r[2] == "train"])}
  qg = [r for r in rows if r[2] in ("query", "gallery")]
  joint = relabel([item(r[1]) for r in qg])
  for split in ("query", "gallery"):
    keep = [i for i, r in enumerate(qg) if r[2] == split]
    out[split] = FileSource([os.path.join(img_root, qg[i][0]) for i in keep], joint[keep],
                            renumber=False)
  return out


def image_folder(root: str) -> dict[str, FileSource]:
  """Users' own data: ``root/<split>/<class>/<image>`` for splits train, test (or query,
  gallery); class names are folder names, classes should differ between train and test."""
  splits = [s for s in ("train", "test", "query", "gallery")
            if os.path.isdir(os.path.join(root, s))]
  if "train" not in splits or not ({"test"} <= set(splits) or {"query", "gallery"} <= set(splits)):
    found = sorted(os.listdir(root)) if os.path.isdir(root) else "no such folder"
    raise FileNotFoundError(
        f"image_folder: expected {root!r} to hold train/<class>/<images> and test/<class>/... "
        f"(or query/ and gallery/); found {found}.")
  out, names = {}, {}
  for split in splits:
    paths, labels = [], []
    for c in sorted(os.listdir(os.path.join(root, split))):
      d = os.path.join(root, split, c)
      if os.path.isdir(d):
        files = [f for f in sorted(os.listdir(d)) if _is_image(f)]
        paths += [os.path.join(d, f) for f in files]
        labels += [names.setdefault(c, len(names))] * len(files)
    if not paths:
      raise FileNotFoundError(f"image_folder: no images under {os.path.join(root, split)!r}.")
    # Query and gallery keep one shared numbering (the folder names').
    out[split] = FileSource(paths, labels, renumber=split not in ("query", "gallery"))
  return out


def _split_by_label(paths, labels, is_train) -> dict[str, FileSource]:
  train = is_train(labels)
  pick = lambda mask: [p for p, m in zip(paths, mask, strict=True) if m]
  return {"train": FileSource(pick(train), labels[train]),
          "test": FileSource(pick(~train), labels[~train])}


LOADERS = {"cub": cub, "cars": cars, "sop": sop, "inshop": inshop, "image_folder": image_folder}


def load_folder(name: str, root: str) -> dict[str, FileSource]:
  out = names.lookup(LOADERS, name, "folder dataset")(root)
  for split, source in out.items():
    specs.check_counts(name, split, source.labels)
  return out
