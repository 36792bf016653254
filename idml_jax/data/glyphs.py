"""Glyph retrieval from real fonts: a class is a character, its images are that character as
different type designers drew it (one image per font face).

:func:`render_glyphs` draws each character of ``chars`` in each font that maps it (its
``cmap``, read with fontTools) at a fixed size centred on the font's own metrics, so case
and size differences (``o`` / ``O``) survive; characters drawn identically to an earlier
one in the reference font (Latin ``A``, Greek ``Α``, Cyrillic ``А``) are dropped, and so are
images that repeat within a class (a font that aliases another). Deterministic.

:func:`glyphs` is the shipped demo set: the fonts bundled with matplotlib (DejaVu, STIX,
Computer Modern), which ``pip install`` brings; classes split by character into disjoint
train and test sets.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from idml_jax.data.sources import ArraySource

# Two characters whose drawings in one font differ by less than this mean absolute pixel
# difference (of 255) are the same shape (Latin "y" and Cyrillic "у" in DejaVu Sans).
LOOK_ALIKE = 4.0
# Two different letters whose ink has a cosine above this are one placeholder drawing.
PLACEHOLDER_COSINE = 0.95

# Latin, digits and symbols, then Greek and Cyrillic letters (their Latin look-alikes are
# dropped by rendering, not by a hand-made list).
CHARS = ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789&@#$%?!§¶ßæøðþ€£¥"
         "ΓΔΘΛΞΠΣΦΨΩαβγδεζηθικλμνξπρστυφχψω"
         "БГДЖЗИЙЛПФЦЧШЩЪЫЬЭЮЯбвгдежзийклмнптфцчшщъыьэюя")


def font_chars(path: str) -> set[str]:
  """The characters a font file maps to a glyph (its best Unicode cmap)."""
  from fontTools.ttLib import TTFont
  try:
    with TTFont(path, lazy=True, fontNumber=0) as font:
      cmap = font.getBestCmap() or {}
  except Exception:  # noqa: BLE001  An unreadable font contributes nothing.
    return set()
  return {chr(c) for c in cmap}


def render(path: str, char: str, size: int = 48, em: float = 0.7) -> np.ndarray:
  """``char`` in the font at ``path``: black on white, uint8 [size, size, 3], the text's
  middle (advance width, ascender-to-descender) at the centre, at ``em`` × size points."""
  font = ImageFont.truetype(path, max(1, int(round(size * em))))
  img = Image.new("L", (size, size), 255)
  ImageDraw.Draw(img).text((size / 2, size / 2), char, font=font, fill=0, anchor="mm")
  return np.repeat(np.asarray(img)[..., None], 3, axis=-1)


def placeholder_font(path: str, chars: set[str], size: int) -> bool:
  """The font draws two different letters it maps (of A, B, E, a, b, e) alike: the cosine of
  their ink exceeds ``PLACEHOLDER_COSINE``."""
  ink = [255.0 - render(path, c, size)[..., 0].astype(np.float64).ravel()
         for c in "ABEabe" if c in chars]
  ink = [v / n for v in ink if (n := np.linalg.norm(v)) > 0]
  return any(float(x @ y) > PLACEHOLDER_COSINE for i, x in enumerate(ink) for y in ink[i + 1:])


def render_glyphs(font_paths: Sequence[str], chars: str = CHARS, *, size: int = 48,
                  min_fonts: int = 2, max_fonts: int | None = None,
                  reference: str | None = None) -> tuple[np.ndarray, list[str], list[str]]:
  """Every character of ``chars`` in every font of ``font_paths`` that maps it.

  Returns ``(images uint8 [N, size, size, 3], characters [N], font file names [N])``.
  Fonts that draw different letters alike (placeholder fonts) are left out. Characters drawn
  like an earlier one (``LOOK_ALIKE``) in ``reference`` (or, for a character it lacks, in the
  first font that maps it) are dropped; so are blank images and
  images repeated within a character; a character with fewer than ``min_fonts`` images is
  dropped; at most ``max_fonts`` per character (fonts in the given order).
  """
  maps = {p: font_chars(p) for p in font_paths}
  # A placeholder font (a "last resort" font draws one box per Unicode block) draws different
  # letters alike: its images would be near-copies under many classes. Left out.
  font_paths = [p for p in font_paths if not placeholder_font(p, maps[p], size)]
  if reference is not None and reference not in maps:
    maps[reference] = font_chars(reference)
  kept, looks = [], {}  # looks: font -> [images of the kept characters drawn in it]
  for ch in dict.fromkeys(chars):
    ref = reference if reference is not None and ch in maps[reference] else \
        next((p for p in font_paths if ch in maps[p]), None)
    if ref is None:
      continue
    img = render(ref, ch, size).astype(np.float32)
    if any(np.mean(np.abs(img - other)) < LOOK_ALIKE for other in looks.get(ref, [])):
      continue  # Drawn like an earlier character in the same font.
    looks.setdefault(ref, []).append(img)
    kept.append(ch)
  images, labels, fonts = [], [], []
  for ch in kept:
    rows, digests = [], set()
    for p in font_paths:
      if ch not in maps[p]:
        continue
      img = render(p, ch, size)
      digest = hashlib.sha1(img.tobytes()).hexdigest()
      if img.min() > 128 or digest in digests:  # Blank (an empty glyph) or a repeat.
        continue
      digests.add(digest)
      rows.append((img, os.path.basename(p)))
      if max_fonts and len(rows) == max_fonts:
        break
    if len(rows) >= min_fonts:
      for img, name in rows:
        images.append(img)
        labels.append(ch)
        fonts.append(name)
  empty = np.zeros((0, size, size, 3), np.uint8)
  return (np.stack(images) if images else empty), labels, fonts


def test_class(name: str, test_percent: int = 45) -> bool:
  """The deterministic class-disjoint split: a class tests iff crc32(name) % 100 <
  ``test_percent`` (independent of the order classes are met)."""
  return zlib.crc32(name.encode("utf-8")) % 100 < test_percent


def _matplotlib_fonts() -> list[str]:
  import matplotlib
  folder = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
  return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".ttf"))


def glyphs(size: int = 32, min_fonts: int = 8, seed: int = 0) -> dict[str, ArraySource]:
  """The demo set: characters in matplotlib's bundled fonts, split by character."""
  del seed  # Deterministic: nothing is sampled.
  fonts = _matplotlib_fonts()
  reference = next(f for f in fonts if os.path.basename(f) == "DejaVuSans.ttf")
  images, chars, fonts = render_glyphs(fonts, size=size, min_fonts=min_fonts,
                                       reference=reference)
  classes = sorted(set(chars))
  label = {c: i for i, c in enumerate(classes)}
  y = np.asarray([label[c] for c in chars], np.int32)
  names = [f"U+{ord(c):04X} {f}" for c, f in zip(chars, fonts, strict=True)]
  test = np.asarray([test_class(c) for c in chars])
  pick = lambda m: ArraySource(images[m], y[m],
                               [n for n, k in zip(names, m, strict=True) if k])
  return {"train": pick(~test), "test": pick(test)}
