"""Real-image benchmark sets, class-disjoint, generated from Debian's packages (not shipped).

    apt-get install $(python benchmarks/studies/realdata/make_sets.py --packages)
    python benchmarks/studies/realdata/make_sets.py --out ~/realdata      # ~2 minutes on 2 cores

Writes image-folder datasets (``OUT/<set>/{train,test}/<class>/*.png``, what
``--config.data.source=folder --config.data.name=image_folder`` reads), each with
``counts.json`` (the counts it produced, and the packages it read) and ``preview.png``.

* ``icons``: the same freedesktop icon name drawn by different icon themes (a small
  Stanford-Online-Products: class = icon name, images = the themes' drawings; a neighbor must
  be the same concept, e.g. ``edit-copy``, drawn by another theme). One image per theme (its
  largest drawing: scalable SVG, else the largest PNG), rendered at 48 px on white; names
  drawn by at least 10 themes. An image is kept once, in one class: a theme that inherits
  another's file, an alias (``gtk-copy`` linked to ``edit-copy``) or a fallback drawing used
  for many names never puts the same picture under two names.
* ``glyphs``: the same character as drawn by different fonts (class = character, images = font
  faces, at most two of a family; ``idml_jax.data.glyphs``), from the fonts of
  ``FONT_PACKAGES``.

Two sets whose images show their class to very different degrees (image-level ambiguity):

* ``glyphs_degraded`` (controlled): ``glyphs`` with half of the images of every class, train
  and test, degraded at a level 1–3 drawn per image (``DEGRADATIONS``: occlusion of 25 / 50 /
  75 % of the area by a grey box, a crop to 75 / 50 / 25 % of the area, down-scaling to 24 /
  14 / 8 px and back, Gaussian blur of radius 1.5 / 3 / 5 px; the kind drawn per image).
* ``fonts`` (natural): class = a typeface (one face per family, clones of an earlier face left
  out), images = the characters of ``STYLE_CHARS`` in it. A ``g`` or an ``&`` shows much of a
  typeface, a ``.`` or an ``l`` little.

A pretraining corpus, for the miniature's backbone (``benchmarks/studies/miniature``):

* ``scripts``: the letters of writing systems other than the glyph sets' (``SCRIPTS``:
  Arabic, Hebrew, Devanagari, Georgian, ...) as drawn by the same fonts (class = letter,
  images = font faces, 8–24 of them) — the glyph sets' domain with none of their classes, as
  ImageNet is CUB's. A letter drawn like one of ``glyphs.CHARS`` (Armenian ``Օ`` and ``O``,
  Arabic ``ا`` and ``l``: mean absolute difference under ``LEAK_DIFFERENCE`` grey levels in
  DejaVu Sans or in the first font that draws it) is left out; so are combining marks and
  positional forms.

Every set writes ``images.json``: per image (``split/class/file``) what it shows — its
degradation ``level`` (0 = clean) and ``kind``; its ``char``; and ``ink``, the fraction of its
pixels darker than mid-grey — so a benchmark can read ‖u‖ and the misses against them.

Deterministic: files are read in sorted order and classes split by ``crc32(name)``
(``idml_jax.data.glyphs.test_class``). A re-run replaces each set's folder (before, it wrote
over it: images of an earlier version stayed in their classes).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))
from idml_jax.data import glyphs  # noqa: E402

ICON_ROOT = "/usr/share/icons"
# Base themes only (their colour variants, e.g. Papirus-Dark, repeat the same drawings).
THEMES = {
    "Adwaita": "adwaita-icon-theme", "breeze": "breeze-icon-theme",
    "elementary": "elementary-icon-theme", "elementary-xfce": "elementary-xfce-icon-theme",
    "Faenza": "faenza-icon-theme", "gnome": "gnome-icon-theme", "mate": "mate-icon-theme",
    "Moka": "moka-icon-theme", "Faba": "faba-icon-theme", "Numix": "numix-icon-theme",
    "oxygen": "oxygen-icon-theme", "Papirus": "papirus-icon-theme", "Tango": "tango-icon-theme",
    "nuoveXT2": "lxde-icon-theme", "Obsidian": "obsidian-icon-theme",
    "bloom": "deepin-icon-theme", "Paper": "paper-icon-theme",
    "gartoon": "gnome-icon-theme-gartoon",
    "yasis": "gnome-icon-theme-yasis", "suru": "suru-icon-theme",
}
FONT_PACKAGES = (
    "fontconfig fonts-dejavu fonts-dejavu-extra fonts-liberation fonts-freefont-ttf "
    "fonts-urw-base35 fonts-texgyre fonts-linuxlibertine fonts-crosextra-caladea "
    "fonts-crosextra-carlito fonts-cantarell fonts-noto-core fonts-croscore fonts-ebgaramond "
    "fonts-gfs-didot fonts-gfs-artemisia fonts-comic-neue fonts-open-sans "
    "fonts-roboto-unhinted fonts-paratype fonts-go fonts-hack fonts-inconsolata "
    "fonts-lato fonts-stix fonts-junicode fonts-mplus fonts-firacode fonts-adf-accanthis "
    "fonts-adf-gillius fonts-adf-universalis").split()
SIZE = 48  # Stored size; runs resize (the benchmarks train at 32 px).
# The ``fonts`` set's characters: ones that show much of a typeface, then fewer, then little.
STYLE_CHARS = "agRQk&eSWM2G" + "oOsC0" + ".,-:'|lI1"
# kind -> its parameter at levels 1, 2, 3 (``degrade``).
DEGRADATIONS = {"occlusion": (0.25, 0.5, 0.75),  # Area covered by a grey box.
                "crop": (0.75, 0.5, 0.25),  # Area kept, resized back to SIZE.
                "downscale": (24, 14, 8),  # Pixels per side, then back to SIZE.
                "blur": (1.5, 3.0, 5.0)}  # Gaussian radius, px.
DEGRADED_FRACTION = 0.5
# The ``scripts`` corpus: Unicode names' first word; letters only (category L*).
SCRIPTS = ("ARABIC", "HEBREW", "DEVANAGARI", "GEORGIAN", "ARMENIAN", "BENGALI", "THAI",
           "GURMUKHI", "LAO", "TIFINAGH", "TAMIL", "ETHIOPIC", "KANNADA", "TELUGU", "GUJARATI",
           "ORIYA", "MALAYALAM", "SINHALA", "KHMER", "MYANMAR", "TIBETAN", "HANGUL")
DEJAVU_SANS = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"  # The glyph sets' reference.
LEAK_DIFFERENCE = 10.0  # Grey levels (0-255), mean over a SIZE² image (Armenian Ա vs U: < 10).


def _icon_size(path: str) -> int:
  """The drawing's size from its folder (``48x48``, ``48``, ``scalable`` = 512)."""
  parts = path.split(os.sep)
  if any(p in ("scalable", "symbolic") for p in parts) and path.endswith(".svg"):
    return 512
  for p in reversed(parts[:-1]):
    m = re.fullmatch(r"(\d+)(x\d+)?(@\d+x)?", p)
    if m:
      return int(m.group(1)) * (int(m.group(3)[1:-1]) if m.group(3) else 1)
  return 256 if path.endswith(".svg") else 0


def _theme_icons(theme: str) -> dict[str, str]:
  """``{icon name: the theme's largest drawing of it}`` (no symbolic icons)."""
  best: dict[str, tuple[int, str]] = {}
  for root, _, files in sorted(os.walk(os.path.join(ICON_ROOT, theme))):
    for f in sorted(files):
      if not f.endswith((".png", ".svg")) or "symbolic" in f or "symbolic" in root:
        continue
      path = os.path.join(root, f)
      if not os.path.exists(path):  # A dangling link.
        continue
      size = _icon_size(path)
      name = f.rsplit(".", 1)[0]
      if size >= 24 and size > best.get(name, (-1, ""))[0]:
        best[name] = (size, path)
  return {n: p for n, (s, p) in best.items()}


def _render_icon(path: str) -> np.ndarray | None:
  """The icon at ``SIZE`` px on white, uint8 [SIZE, SIZE, 3] (None if it cannot be read)."""
  try:
    if path.endswith(".svg"):
      png = subprocess.run(["rsvg-convert", "-w", str(SIZE), "-h", str(SIZE), "-a", path],
                           capture_output=True, timeout=30, check=True).stdout
      img = Image.open(io.BytesIO(png))
    else:
      img = Image.open(path)
    img = img.convert("RGBA")
    img.thumbnail((SIZE, SIZE), Image.LANCZOS)
    canvas = Image.new("RGBA", (SIZE, SIZE), (255, 255, 255, 255))
    canvas.alpha_composite(img, ((SIZE - img.width) // 2, (SIZE - img.height) // 2))
    out = np.asarray(canvas.convert("RGB"))
  except Exception:  # noqa: BLE001  A broken file is left out.
    return None
  return None if out.min() > 245 else out  # An empty drawing.


def make_icons(out: str, min_images: int = 10, max_images: int = 16) -> dict:
  icons = {t: _theme_icons(t) for t in THEMES if os.path.isdir(os.path.join(ICON_ROOT, t))}
  themes_of = collections.defaultdict(list)
  for theme, table in sorted(icons.items()):
    for name in table:
      themes_of[name].append(theme)
  names = sorted((n for n, ts in themes_of.items() if len(ts) >= min_images),
                 key=lambda n: (-len(themes_of[n]), len(n), n))  # The owner order (below).
  jobs = [(n, t, icons[t][n]) for n in names for t in themes_of[n]]
  with ThreadPoolExecutor(4) as pool:
    rendered = list(pool.map(lambda j: _render_icon(j[2]), jobs))
  # An image is kept once: in the first class (most themes, then shortest name) that has it,
  # so an alias (gtk-copy -> edit-copy) or a theme's fallback drawing used for many names
  # never sits in two classes.
  owner, dataset, kept = {}, collections.defaultdict(list), set()
  for (name, theme, _), img in zip(jobs, rendered, strict=True):
    if img is None:
      continue
    digest = hashlib.sha1(img.tobytes()).hexdigest()
    if owner.setdefault(digest, name) == name and digest not in kept:
      kept.add(digest)  # Owned by this class: kept once.
      dataset[name].append((theme, img, {"ink": _ink(img)}))
  dataset = {n: rows[:max_images] for n, rows in dataset.items() if len(rows) >= min_images}
  return _write(out, "icons", dataset, {"source": "Debian icon themes", "packages": sorted(
      THEMES[t] for t in icons), "themes": sorted(icons), "one image per theme": True})


def _font_files(per_family: int) -> list[str]:
  """The installed font files, at most ``per_family`` faces of a family (the file name before
  its first "-"), in a fixed pseudo-random order."""
  listing = subprocess.run(["fc-list", "--format", "%{file}\n"], capture_output=True, text=True,
                           check=True).stdout.split()
  families = collections.defaultdict(list)
  for f in sorted({f for f in listing if f.endswith((".ttf", ".otf"))}):
    families[os.path.basename(f).split("-")[0].split(".")[0]].append(f)
  return sorted((f for fs in families.values() for f in fs[:per_family]),
                key=lambda f: (zlib.crc32(os.path.basename(f).encode()), f))


def _ink(img: np.ndarray) -> float:
  return float(np.mean(img[..., 0] < 128))


def glyph_dataset(min_images: int = 16, max_images: int = 24) -> dict[str, list]:
  """``{"U+0041": [(font name, image uint8 [SIZE, SIZE, 3], info), ...]}``: a class is a
  character, a neighbor the same character in another font (at most two faces of a family:
  a character's images are many designs, not one family's weights)."""
  fonts = _font_files(per_family=2)
  return _by_character(*glyphs.render_glyphs(
      fonts, size=SIZE, min_fonts=min_images, max_fonts=max_images, reference=DEJAVU_SANS))


def _by_character(images: np.ndarray, chars: list[str], names: list[str]) -> dict[str, list]:
  """``render_glyphs``' output as a set: ``{"U+0041": [(font name, image, info), ...]}``."""
  dataset = collections.defaultdict(list)
  for img, ch, name in zip(images, chars, names, strict=True):
    dataset[f"U+{ord(ch):04X}"].append((name.rsplit(".", 1)[0], img, {"ink": _ink(img)}))
  return dict(dataset)


def make_glyphs(out: str) -> dict:
  return _write(out, "glyphs", glyph_dataset(), {"source": "Debian font packages",
                                                 "packages": list(FONT_PACKAGES)})


def degrade(img: np.ndarray, kind: str, level: int, rng: np.random.Generator) -> np.ndarray:
  """``img`` uint8 [S, S, 3] degraded by ``kind`` at ``level`` 1–3 (``DEGRADATIONS``), with
  the box's or crop's shape and place drawn from ``rng``."""
  size = img.shape[0]
  value = DEGRADATIONS[kind][level - 1]
  pil = Image.fromarray(img)
  if kind in ("occlusion", "crop"):
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    w = int(round(min(size, size * np.sqrt(value * aspect))))
    h = int(round(min(size, size * size * value / max(w, 1))))
    x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    if kind == "crop":
      return np.asarray(pil.crop((x, y, x + w, y + h)).resize((size, size), Image.BILINEAR))
    out = img.copy()
    out[y:y + h, x:x + w] = 128
    return out
  if kind == "downscale":
    return np.asarray(pil.resize((value, value), Image.BOX).resize((size, size), Image.BILINEAR))
  return np.asarray(pil.filter(ImageFilter.GaussianBlur(value)))


def make_glyphs_degraded(out: str) -> dict:
  """``glyphs`` with ``DEGRADED_FRACTION`` of every class's images degraded (module doc); the
  draws are a function of the image's class and font only."""
  dataset = {}
  for cname, rows in glyph_dataset().items():
    dataset[cname] = []
    for source, img, info in rows:
      rng = np.random.default_rng(zlib.crc32(f"{cname}/{source}".encode()))
      level, kind = 0, "none"
      if rng.random() < DEGRADED_FRACTION:
        level, kind = int(rng.integers(1, 4)), str(rng.choice(sorted(DEGRADATIONS)))
        img = degrade(img, kind, level, rng)
      dataset[cname].append((source, img, {**info, "level": level, "kind": kind}))
  return _write(out, "glyphs_degraded", dataset, {
      "source": "Debian font packages (the glyphs set), degraded", "degradations":
      DEGRADATIONS, "degraded fraction": DEGRADED_FRACTION})


def make_fonts(out: str, min_images: int = 20, clone_difference: float = 8.0) -> dict:
  """Class = a typeface, images = ``STYLE_CHARS`` drawn in it (module doc). A face that maps
  fewer than ``min_images`` of the characters, draws different letters alike (a placeholder
  font), or draws the first twelve characters within ``clone_difference`` (mean absolute
  pixel difference of 255) of an earlier kept face (a metric clone: Arimo and Liberation
  Sans) is left out; an image that two faces draw alike is kept in the first only."""
  kept, looks, owner, dataset = [], [], {}, {}
  for path in _font_files(per_family=1):
    chars = glyphs.font_chars(path)
    have = [c for c in STYLE_CHARS if c in chars]
    if len(have) < min_images or glyphs.placeholder_font(path, chars, SIZE):
      continue
    rich = np.stack([glyphs.render(path, c, SIZE)[..., 0] for c in STYLE_CHARS[:12]
                     if c in chars]).astype(np.float32)
    if any(r.shape == rich.shape and np.mean(np.abs(r - rich)) < clone_difference
           for r in looks):
      continue
    rows = []
    for c in have:
      img = glyphs.render(path, c, SIZE)
      digest = hashlib.sha1(img.tobytes()).hexdigest()
      if img.min() > 128 or owner.setdefault(digest, path) != path:
        continue  # Blank, or drawn alike by an earlier face (or twice by this one).
      rows.append((f"U+{ord(c):04X}", img, {"char": c, "ink": _ink(img)}))
    if len(rows) >= min_images:
      kept.append(path)
      looks.append(rich)
      dataset[os.path.basename(path).rsplit(".", 1)[0]] = rows
  return _write(out, "fonts", dataset, {"source": "Debian font packages", "packages":
                                        list(FONT_PACKAGES), "characters": STYLE_CHARS})


def _write(out: str, set_name: str, dataset: dict[str, list], about: dict) -> dict:
  root = os.path.join(out, set_name)
  if os.path.exists(root):  # A re-run replaces the set: stale images would join its classes.
    if not os.path.exists(os.path.join(root, "counts.json")):
      raise SystemExit(f"{root} exists and was not written by make_sets.py: choose another "
                       "--out.")
    shutil.rmtree(root)
  counts = {"train": {"classes": 0, "images": 0}, "test": {"classes": 0, "images": 0}}
  images = {}  # "split/class/file" -> what the image shows (module doc).
  for cname, rows in sorted(dataset.items()):
    split = "test" if glyphs.test_class(cname) else "train"
    folder = os.path.join(split, re.sub(r"[^\w.+-]", "_", cname))
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    for source, img, info in rows:
      name = os.path.join(folder, re.sub(r"[^\w.+-]", "_", source) + ".png")
      Image.fromarray(img).save(os.path.join(root, name))
      images[name] = info
    counts[split]["classes"] += 1
    counts[split]["images"] += len(rows)
  _preview(dataset, os.path.join(root, "preview.png"))
  summary = {"set": set_name, **counts, **about}
  with open(os.path.join(root, "images.json"), "w") as f:
    json.dump(images, f, indent=0, sort_keys=True)
  with open(os.path.join(root, "counts.json"), "w") as f:  # Last: the set is complete.
    json.dump(summary, f, indent=1)
  return summary


def _preview(dataset: dict[str, list], path: str, rows: int = 8, cols: int = 10) -> None:
  """A few classes (rows, evenly spaced in name order) and ten of their images each."""
  names = sorted(dataset)
  picked = [names[i] for i in np.linspace(0, len(names) - 1, min(rows, len(names))).astype(int)]
  grid = np.full((len(picked) * SIZE, cols * SIZE, 3), 255, np.uint8)
  for r, name in enumerate(picked):
    rows_of = dataset[name]
    shown = np.unique(np.linspace(0, len(rows_of) - 1, min(cols, len(rows_of))).astype(int))
    for c, i in enumerate(shown):  # Evenly spread over the class's images.
      grid[r * SIZE:(r + 1) * SIZE, c * SIZE:(c + 1) * SIZE] = rows_of[i][1]
  Image.fromarray(grid).save(path)


def _scripts_letters(fonts: list[str], reference: str) -> str:
  """The letters of ``SCRIPTS`` that fonts draw, less the look-alikes of ``glyphs.CHARS``
  (module doc)."""
  import unicodedata
  maps = {p: glyphs.font_chars(p) for p in [reference, *fonts]}
  drawn = sorted({c for p in fonts for c in maps[p]})
  letters = []
  for c in drawn:
    name = unicodedata.name(c, "")
    if (name.split(" ")[0] in SCRIPTS and unicodedata.category(c).startswith("L")
        and "FORM" not in name and "LIGATURE" not in name):
      letters.append(c)
  rendered = {}  # font -> {char: float image}

  def image(p, c):
    return rendered.setdefault(p, {}).setdefault(
        c, glyphs.render(p, c, SIZE)[..., 0].astype(np.float32))

  kept = []
  for c in letters:
    first = next(p for p in fonts if c in maps[p])
    near = any(np.mean(np.abs(image(p, c) - image(p, x))) < LEAK_DIFFERENCE
               for p in dict.fromkeys((reference, first)) if c in maps[p]
               for x in glyphs.CHARS if x in maps[p])
    if not near:
      kept.append(c)
  return "".join(kept)


def make_scripts(out: str, min_images: int = 8, max_images: int = 24) -> dict:
  """Writes the pretraining corpus (module doc); returns its summary."""
  fonts = _font_files(per_family=2)
  dataset = _by_character(*glyphs.render_glyphs(
      fonts, _scripts_letters(fonts, DEJAVU_SANS), size=SIZE, min_fonts=min_images,
      max_fonts=max_images))
  return _write(out, "scripts", dataset, {
      "source": "Debian font packages", "packages": list(FONT_PACKAGES),
      "scripts": list(SCRIPTS), "use": "pretraining (class-disjoint from the glyph sets)"})


SETS = {"icons": make_icons, "glyphs": make_glyphs, "glyphs_degraded": make_glyphs_degraded,
        "fonts": make_fonts, "scripts": make_scripts}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=os.path.expanduser("~/realdata"))
  p.add_argument("--sets", default=",".join(SETS))
  p.add_argument("--packages", action="store_true", help="Print the Debian packages to install.")
  args = p.parse_args()
  if args.packages:
    print(" ".join(["librsvg2-bin", *THEMES.values(), *FONT_PACKAGES]))
    return
  for name in args.sets.split(","):
    t = time.perf_counter()
    summary = SETS[name](args.out)
    print(json.dumps({**summary, "seconds": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
  main()
