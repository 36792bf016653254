"""The README's promises that code can check: its API example runs, its difference table
matches docs/algorithms.md's."""

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


def test_the_difference_tables_agree_and_every_switch_is_a_config_key():
  from idml_jax import config as config_lib
  readme, docs = _table(_read("README.md")), _table(_read("docs/algorithms.md"))
  assert readme == docs
  keys = config_lib.flatten(config_lib.default_config())
  for row in readme[2:]:
    for switch in re.findall(r"`([a-z_.]+)=", row.split("|")[-2]):
      assert switch in keys, switch
