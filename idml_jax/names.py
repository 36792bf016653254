"""One lookup for every name table (losses, backbones, optimisers, datasets, back-ends, …).

Each table is a small ``name -> thing`` dict owned by the module that defines the things
(Scenic's pattern); configs are validated against the same tables, so an unknown name is
refused with the same message wherever it is met.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


def unknown(what: str, name, valid: Iterable) -> str:
  """``"Unknown loss 'arcface'; valid: contrastive, multi_similarity, …."``"""
  return f"Unknown {what} {name!r}; valid: {', '.join(sorted(map(str, valid)))}."


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
  """``table[name]``, or a ValueError that lists the valid names."""
  try:
    return table[name]
  except (KeyError, TypeError):
    raise ValueError(unknown(what, name, table)) from None
