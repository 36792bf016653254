"""The README's promises that code can check: its API example runs; the differences from the
official code are one table (docs/algorithms.md §4, which the README links) whose every
switch is a config key."""

import contextlib
import io
import os
import re

ROOT = os.path.dirname(os.path.dirname(__file__))


def _read(name):
  with open(os.path.join(ROOT, name)) as f:
    return f.read()


def test_the_core_api_example_runs():
  section = _read("README.md").split("## The core API", 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README.md", "exec"), {})
  assert "recall@1" in out.getvalue() and "nmi" in out.getvalue()


def _table(text: str) -> list[str]:
  start = text.index("| method | default (paper)")
  return [line for line in text[start:].splitlines() if line.startswith("|")]


def test_the_difference_table_is_written_once_and_every_switch_is_a_config_key():
  from idml_jax import config as config_lib
  assert "| method | default (paper)" not in _read("README.md")
  assert "docs/algorithms.md#4-where-we-differ-from-the-official-code" in _read("README.md")
  docs = _table(_read("docs/algorithms.md"))
  keys = config_lib.flatten(config_lib.default_config())
  assert len(docs) > 10
  for row in docs[2:]:
    for switch in re.findall(r"`([a-z_.]+)=", row.split("|")[-2]):
      assert switch in keys, switch
