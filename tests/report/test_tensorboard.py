"""TensorBoard output read back with TensorBoard's own readers: the event accumulator and the HParams backend.

The HParams checks use the experiment TensorBoard's server hands to the browser (``tb_readback``): its
hyper-parameters come sorted with the differing ones first, and the browser ticks the first five columns.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata

from visionpeft.logging import RunLogger
from visionpeft.logging.hparams import HPARAMS, check_hparams
from visionpeft.logging.tensorboard import write_experiment

from .tb_readback import hparams_view, tensorboard_runs

IDENTITY = ["methods", "strategy", "trainable_params", "trainable_pct"]  # what a compare is about


class FakePlan:
    def summary(self) -> str:
        return "strategies: freeze 10 blocks -> lora r8 -> head"


def _session(strategy: str, methods: str, trainable: int) -> dict:
    return {"strategy": strategy, "methods": methods, "trainable_params": trainable,
            "trainable_pct": 100.0 * trainable / 10_000, "total_params": 10_000, "model": "m", "epochs": 2,
            "batch_size": 8, "lr": 1e-3, "optimizer": "adamw", "img_size": 32, "seed": 0}


def test_scalars_text_and_session(tmp_path):
    log = RunLogger(tmp_path / "run")
    log.scalars({"loss/train": 2.5, "optim/lr_head": 0.01}, step=3)
    log.plan(FakePlan())
    log.session_start(_session("lora", "lora r8 + head", 1234))
    log.session_end(ok=True)
    log.close()
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"loss/train", "optim/lr_head"}  # no single-dot hparam/params charts
    assert acc.Scalars("loss/train")[0].value == pytest.approx(2.5) and acc.Scalars("loss/train")[0].step == 3
    assert b"freeze 10 blocks -> lora r8" in acc.Tensors("plan/text_summary")[0].tensor_proto.string_val[0]
    content = acc.PluginTagToContent("hparams")
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG]).hparams
    assert start["trainable_params"].number_value == 1234 and start["methods"].string_value == "lora r8 + head"
    assert start["trainable_pct"].number_value == pytest.approx(12.34)
    assert metadata.SESSION_END_INFO_TAG in content


def test_unknown_hparam_names_are_refused():
    with pytest.raises(ValueError, match="imgsz"):
        check_hparams({"imgsz": 640})
    # Numbers stay numbers (parallel coordinates order their axes), whole ones as whole numbers.
    checked = check_hparams({"epochs": 3.0, "strategy": 1, "total_params": 2654800, "lr": 0.01})
    assert checked == {"strategy": "1", "total_params": 2654800, "epochs": 3, "lr": 0.01}
    assert [type(v) for v in checked.values()] == [str, int, int, float]


def test_experiment_declares_what_differs(tmp_path):
    sessions = [_session("full", "full", 10_000), _session("lora", "lora r8 + head", 700)]
    for i, hp in enumerate(sessions):
        log = RunLogger(tmp_path / f"{i:02d}-{hp['strategy']}")
        log.session_start(hp)
        log.scalars({"result/top1": 0.5 + i / 10, "result/top5": 0.9, "perf/img_per_s": 100.0}, step=10)
        log.close()
    write_experiment(tmp_path, "classification", sessions)
    experiment, metrics, values = hparams_view(tmp_path)
    infos = list(experiment.hparam_infos)
    assert [h.name for h in infos[:4]] == IDENTITY and all(h.differs for h in infos[:4])
    assert not any(h.differs for h in infos[4:]) and {h.name for h in infos} == {h.name for h in HPARAMS} - {"head_lr"}
    display = {h.name: h.display_name for h in infos}
    assert display["trainable_pct"] == "trainable %" and display["batch_size"] == "batch size"
    assert [(m.name.tag, m.display_name) for m in experiment.metric_infos[:2]] == [
        ("result/top1", "top-1"), ("result/top5", "top-5")]
    assert metrics["01-lora"]["result/top1"] == pytest.approx(0.6)
    assert values["01-lora"]["methods"] == "lora r8 + head" and values["01-lora"]["trainable_params"] == 700
    numeric = {h.name for h in infos if h.type == api_pb2.DATA_TYPE_FLOAT64}
    assert {"trainable_params", "trainable_pct", "total_params", "lr", "epochs", "img_size", "seed"} <= numeric
    by_name = {h.name: h for h in infos}
    assert (by_name["trainable_params"].domain_interval.min_value,
            by_name["trainable_params"].domain_interval.max_value) == (700, 10_000)


def _tiny_classification(tmp_path: Path) -> Path:
    from visionpeft.data.toy import make_toy_imagefolder

    data = make_toy_imagefolder(tmp_path / "toy", classes=3, train_per_class=8, val_per_class=4, size=16)
    doc = {"name": "tiny-compare", "model": "test_efficientnet", "data": str(data), "output": str(tmp_path / "runs"),
           "compare": {"probe": [{"method": "head"}], "lora": [{"method": "lora", "rank": 2}, {"method": "head"}]},
           "train": {"epochs": 1, "batch_size": 8, "workers": 0, "progress": False},
           "augment": {"img_size": 32, "random_resized_crop": False, "hflip": 0.0}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _check_compare(cdir: Path, runs: list[str], primary: tuple[str, str]) -> tuple[dict, dict]:
    """The HParams tab of a compare directory: one session per run folder, identity columns first."""
    import json

    experiment, metrics, values = hparams_view(cdir)
    assert sorted(values) == runs  # run names are the run folders (no '/tb' suffix)
    assert sorted(tensorboard_runs(cdir)) == runs  # and no stray '.' run for the compare folder itself
    infos = list(experiment.hparam_infos)
    differing = [h.name for h in infos if h.differs]
    assert [h.name for h in infos[:len(differing)]] == differing and set(IDENTITY) <= set(differing[:5])
    assert {h.name: h.display_name for h in infos}["trainable_pct"] == "trainable %"
    first = experiment.metric_infos[0]
    assert (first.name.tag, first.display_name) == primary
    report = {r["strategy"]: r for r in json.loads((cdir / "report.json").read_text())["runs"]}
    for run in runs:
        name = run.split("-", 1)[1]
        assert values[run]["strategy"] == name
        assert values[run]["trainable_params"] == report[name]["trainable_params"]
        assert values[run]["trainable_pct"] == pytest.approx(report[name]["trainable_pct"], abs=1e-4)
        metric = primary[0].split("/")[1]
        assert metrics[run][primary[0]] == pytest.approx(report[name][f"{metric}_val"], abs=1e-6)
        assert metrics[run]["perf/peak_mem_mb"] == pytest.approx(report[name]["peak_mem_mb"], abs=0.06)
    return values, metrics


def test_classification_compare_hparams(tmp_path):
    from visionpeft.cli import main

    assert main(["compare", str(_tiny_classification(tmp_path))]) == 0
    (cdir,) = (tmp_path / "runs").iterdir()
    assert cdir.name.startswith("tiny-compare-2")  # not tiny-compare-compare-<time>
    values, _ = _check_compare(cdir, ["00-full", "01-probe", "02-lora"], ("result/top1", "top-1"))
    assert values["02-lora"]["methods"] == "lora r2 + head" and values["01-probe"]["methods"] == "head"
    assert values["00-full"]["img_size"] == 32 and values["00-full"]["batch_size"] == 8


def test_failed_compare_leaves_no_empty_folder(tmp_path, monkeypatch):
    from visionpeft.cli import main
    from visionpeft.errors import ConfigError
    from visionpeft.tasks.classification import TASK

    def fail(*args, **kwargs):
        raise ConfigError("data: broken")

    monkeypatch.setattr(TASK, "train", fail)
    assert main(["compare", str(_tiny_classification(tmp_path))]) == 2
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_detection_compare_hparams(shared, tmp_path):
    pytest.importorskip("ultralytics")
    from tests.tasks.ultralytics_support import copy_dataset
    from visionpeft.cli import main

    data = copy_dataset(shared, "coco8", tmp_path)
    recipe = tmp_path / "det.yaml"
    recipe.write_text(
        "task: detection\nname: det\n"
        f"model: {shared / 'weights' / 'yolov5nu-cocobackbone.pt'}\ndata: {data}\noutput: {tmp_path / 'runs'}\n"
        "compare: {freeze: [{method: freeze, n: 10}]}\n"
        "ultralytics: {epochs: 1, imgsz: 64, batch: 4, nbs: 4, warmup_epochs: 0, workers: 0, device: cpu, "
        "amp: false, plots: false}\n")
    assert main(["compare", str(recipe)]) == 0
    (cdir,) = (tmp_path / "runs").iterdir()
    values, _ = _check_compare(cdir, ["00-full", "01-freeze"], ("result/map50_95", "mAP50-95"))
    assert values["01-freeze"]["methods"] == "freeze 10 blocks"
    assert values["01-freeze"]["img_size"] == 64 and values["01-freeze"]["batch_size"] == 4
    assert values["01-freeze"]["model"] == "yolov5nu-cocobackbone.pt"
    acc = EventAccumulator(str(cdir / "01-freeze"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/val", "metrics/map50_95", "result/map50_95", "progress/epoch"} <= tags
    # Ultralytics' three groups (biases, norm weights, other weights) all hold what freeze leaves trainable:
    # named by that owner plus the group's kind (the bias group warms up differently).
    assert {t for t in tags if t.startswith("optim/")} == {"optim/lr_freeze_bias", "optim/lr_freeze_bn",
                                                           "optim/lr_freeze_weight"}
