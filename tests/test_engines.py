"""The engine registry is the one table: recipe schemas, runners, backends, TensorBoard metrics per task."""

from __future__ import annotations

import pytest

from visionpeft.engines import ENGINES, engine_of_run, get_engine, load_attr
from visionpeft.errors import ConfigError
from visionpeft.logging.hparams import task_metrics
from visionpeft.recipe import TASK_SCHEMAS
from visionpeft.recipe.loader import schema_for
from visionpeft.tasks import TASKS, TaskRunner, get_task


def test_views_are_the_registry():
    assert {n: e.runner for n, e in ENGINES.items()} == TASKS
    assert {n: e.schema for n, e in ENGINES.items()} == TASK_SCHEMAS
    assert set(ENGINES) == {"classification", "detection", "segment", "pose", "obb", "classify"}


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_every_engine_resolves(name):
    pytest.importorskip("ultralytics")
    engine = get_engine(name)
    schema = schema_for(name)
    assert schema.model_fields["task"].default == name
    runner = get_task(name)
    assert isinstance(runner, TaskRunner) and runner.primary_metric in runner.metric_names
    assert task_metrics(name)[0].tag == f"result/{runner.primary_metric}"  # TensorBoard's first column
    from visionpeft.backends import backend_named

    assert backend_named(engine.backend).name == engine.backend


def test_unknown_task_names_the_engines(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown task 'detect'.*did you mean 'detection'"):
        get_engine("detect")
    with pytest.raises(ConfigError, match=r"unknown task 'segmnet'.*did you mean 'segment'"):
        schema_for("segmnet")
    (tmp_path / "recipe.yaml").write_text("task: keypoints\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml: task: unknown task 'keypoints'"):
        engine_of_run(tmp_path)
    with pytest.raises(ConfigError, match="not a run directory"):
        engine_of_run(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="is not available"):
        load_attr("visionpeft.nothing:X", "runner")
