"""The benchmark studies' own data rules: the pretraining corpus never holds a test class."""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks", "studies", "realdata"))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks", "studies", "miniature"))
import make_sets  # noqa: E402

from idml_jax.data import glyphs  # noqa: E402


def test_the_scripts_corpus_leaves_out_the_look_alikes_of_the_glyph_classes():
  fonts = glyphs._matplotlib_fonts()
  dejavu = next(f for f in fonts if os.path.basename(f) == "DejaVuSans.ttf")
  kept = make_sets._scripts_letters([dejavu], dejavu)
  # Drawn as a glyph class (DejaVu Sans): Armenian OH as O, SEH as U; Arabic ALEF as l;
  # Hebrew VAV as i.
  for look_alike in "ՕՍاו":
    assert look_alike not in kept
  for letter in "אשბდԺ":  # Hebrew ALEF, SHIN; Georgian BAN, DON; Armenian capital ZHE.
    assert letter in kept
  assert not set(kept) & set(glyphs.CHARS)
  assert all(ord(c) > 0x0500 for c in kept)  # No Latin, Greek or Cyrillic letter at all.


def test_each_pretraining_class_holds_out_every_eighth_image():
  import pretrain
  y = np.array([0] * 17 + [1] * 7 + [2] * 8)
  mask = pretrain.held_out(y, 8)
  assert [int(mask[y == c].sum()) for c in range(3)] == [2, 0, 1]
  assert list(np.flatnonzero(mask)) == [7, 15, 31]
  assert not pretrain.held_out(y, None).any()
