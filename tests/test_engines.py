"""The engine registry: timm classification plus one engine per row of the Ultralytics task table; recipe schemas,
runners, backends, TensorBoard metrics per task, and the former task name ``detection``."""

from __future__ import annotations

import pytest

from visionpeft import ultralytics_tasks
from visionpeft.engines import ENGINES, get_engine, load_attr
from visionpeft.errors import ConfigError
from visionpeft.logging.hparams import task_metrics
from visionpeft.recipe import TASK_SCHEMAS
from visionpeft.recipe.loader import schema_for
from visionpeft.run_dir import engine_of_run
from visionpeft.tasks import TASKS, TaskRunner, get_task


def test_views_are_the_registry():
    assert {n: e.runner for n, e in ENGINES.items()} == TASKS
    assert {n: e.schema for n, e in ENGINES.items()} == TASK_SCHEMAS
    assert set(ENGINES) == {"classification", *ultralytics_tasks.TASKS}
    # Ultralytics' names: every task of Ultralytics 8.4.190's YOLO.task_map
    assert set(ultralytics_tasks.TASKS) == {"detect", "segment", "pose", "obb", "classify", "semantic", "depth"}


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_every_engine_resolves(name):
    pytest.importorskip("ultralytics")
    engine = get_engine(name)
    schema = schema_for(name)
    data = "folder" if name in ("classify", "classification") else "data.yaml"
    model = "resnet18" if name == "classification" else "yolo11n.yaml"
    assert schema.model_validate({"task": name, "model": model, "data": data}).task == name
    runner = get_task(name)
    assert isinstance(runner, TaskRunner) and runner.primary_metric in runner.metric_names
    assert task_metrics(name)[0].tag == f"result/{runner.primary_metric}"  # TensorBoard's first column
    from visionpeft.backends import backend_named

    assert backend_named(engine.backend).name == engine.backend


def test_unknown_task_names_the_engines(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown task 'detcet'.*did you mean 'detect'"):
        get_engine("detcet")
    with pytest.raises(ConfigError, match=r"unknown task 'segmnet'.*did you mean 'segment'"):
        schema_for("segmnet")
    (tmp_path / "recipe.yaml").write_text("task: keypoints\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml: task: unknown task 'keypoints'"):
        engine_of_run(tmp_path)
    with pytest.raises(ConfigError, match="not a run directory"):
        engine_of_run(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="is not available"):
        load_attr("visionpeft.nothing:X", "runner")


def test_former_task_name_detection_reads_as_detect(tmp_path):
    """Recipes and run directories written before the task table say ``task: detection``."""
    assert get_engine("detection") is get_engine("detect")
    assert schema_for("detection").model_validate({"task": "detection", "model": "yolo11n.yaml",
                                                   "data": "d.yaml"}).task == "detect"
    (tmp_path / "recipe.yaml").write_text("task: detection\n")
    assert engine_of_run(tmp_path).task == "detect"
    assert task_metrics("detection") == task_metrics("detect")
