"""The task seam: the train loop asks the task, never ``config.task``."""

import numpy as np
import pytest
from conftest import tiny

from idml_jax import config as config_lib
from idml_jax import tasks
from idml_jax.tasks.retrieval import RetrievalTask
from idml_jax.train import loop
from idml_jax.train.reporting import read_metrics
from idml_jax.train.workdir import Workdir


def test_every_task_trains_what_it_can():
  assert config_lib.task_methods("retrieval") == ("baseline", "idml", "iaa", "idml+iaa")
  assert config_lib.task_methods("classification") == ("baseline", "idml")
  for task in tasks.TASKS.values():
    assert issubclass(task, tasks.Task) and task.primary_metric and task.embed_outputs


class _LowestAurc(RetrievalTask):
  """A third task in a few lines: retrieval whose best checkpoint minimises an error."""

  primary_metric = "aurc_nearest"
  higher_is_better = False


def test_a_new_task_is_one_class_and_the_loop_follows_its_metric(tmp_path, monkeypatch):
  monkeypatch.setitem(tasks.TASKS, "lowest_aurc", _LowestAurc)
  c = tiny(method="baseline", loss="contrastive", task="lowest_aurc", num_epochs=3)
  results = loop.train_and_evaluate(c, str(tmp_path))
  evaluated = [r["eval/aurc_nearest"] for r in read_metrics(Workdir(tmp_path))
               if "eval/aurc_nearest" in r]
  assert len(evaluated) == 3
  assert results["best"]["aurc_nearest"] == pytest.approx(min(evaluated))
  assert results["best"]["epoch"] == 1 + int(np.argmin(evaluated))


def test_an_unknown_task_is_refused_with_the_valid_ones():
  c = config_lib.default_config()
  c.task = "detection"
  with pytest.raises(ValueError, match="task: Unknown value 'detection'; valid: classification"):
    config_lib.validate(c)
