"""Ultralytics' ``semantic`` (YOLO26-sem on a coco8-seg copy: polygon labels) and ``depth`` (YOLO26-depth on a
synthetic 4 + 4 image set of RGB + 16-bit depth PNGs) through ``visionpeft``: a run killed after its first epoch
and resumed, its metrics as Ultralytics' validator reports them, eval, the merged checkpoint in plain Ultralytics
(visionpeft not importable), predict, TensorBoard, a compare (whose ``freeze: n: 10`` run is checked against plain
Ultralytics' ``freeze=10``) and bad labels.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("ultralytics")

import visionpeft  # noqa: E402
from visionpeft.cli import main  # noqa: E402

from ..dense_support import write_depth_dataset, write_mask_dataset  # noqa: E402
from ..ultralytics_support import (  # noqa: E402
    NO_VISIONPEFT,
    copy_dataset,
    killed_after_first_epoch,
    records_reproduce_the_primary_metric,
)

IMGSZ = 64
TINY = (f"{{imgsz: {IMGSZ}, batch: 2, nbs: 2, warmup_epochs: 0, workers: 0, device: cpu, amp: false, "
        "optimizer: SGD, lr0: 0.01, mosaic: 0.0}")
MODELS = {"semantic": "yolo26n-sem.yaml", "depth": "yolo26n-depth.yaml"}
#: Ultralytics' validator keys (``SemanticMetrics.keys`` / ``DepthMetrics.keys``) -> visionpeft's names.
KEYS = {"semantic": {"metrics/mIoU": "miou", "metrics/pixel_acc": "pixel_acc"},
        "depth": {"metrics/delta1": "delta1", "metrics/delta2": "delta2", "metrics/delta3": "delta3",
                  "metrics/abs_rel": "abs_rel", "metrics/rmse": "rmse", "metrics/silog": "silog"}}
PRIMARY = {"semantic": "miou", "depth": "delta1"}
HPARAMS = {"semantic": ("miou", "pixel_acc"), "depth": ("delta1", "abs_rel", "rmse", "silog")}


def _data(task, shared, root):
    if task == "semantic":
        return copy_dataset(shared, "coco8-seg", root)
    return write_depth_dataset(root / "depth8")


def _recipe(root, task, data, strategies, epochs=1, name="r", extra=""):
    path = root / f"{name}.yaml"
    path.write_text(f"task: {task}\nname: {name}\nmodel: {MODELS[task]}\ndata: {data}\noutput: {root / 'runs'}\n"
                    f"{strategies}\nultralytics: {{epochs: {epochs}, {TINY[1:]}\n{extra}")
    return path


@pytest.fixture(scope="module", params=sorted(MODELS))
def run(request, shared, tmp_path_factory):
    """LoRA + head, 2 epochs, killed after the first and resumed with ``visionpeft resume``."""
    task = request.param
    root = tmp_path_factory.mktemp(task)
    data = _data(task, shared, root)
    recipe = _recipe(root, task, data, "strategies: [{method: lora, rank: 4}, {method: head}]", epochs=2)
    with pytest.MonkeyPatch.context() as mp:  # undone when the block ends: the resume runs unpatched
        killed_after_first_epoch(mp)
        assert main(["train", str(recipe)]) == 130  # the CLI's status for an interrupt
    (run_dir,) = (root / "runs").iterdir()
    assert (run_dir / "weights" / "last.pt").is_file() and not (run_dir / "metrics.json").exists()
    assert main(["resume", str(run_dir)]) == 0
    return task, run_dir, data


def _results_csv(run_dir):
    with (run_dir / "results.csv").open(newline="") as fh:
        return [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(fh)]


def test_resumed_run_reports_the_validators_metrics(run):
    task, run_dir, _ = run
    result = json.loads((run_dir / "metrics.json").read_text())
    assert result["extra"]["start_epoch"] == 1 and result["extra"]["epochs"] == 2
    assert set(result["metrics"]) == set(KEYS[task].values())
    rows = _results_csv(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # the killed epoch's row is not repeated
    assert set(KEYS[task]) <= set(rows[0])  # Ultralytics' own columns
    plan = visionpeft.get_plan(_model(run_dir))
    assert set(plan.trainable.values()) == {"lora", "head"}


def _model(run_dir):
    from visionpeft.backends.ultralytics import build_model

    return build_model(run_dir / "weights" / "last.pt")


def test_eval_reproduces_the_reported_metrics(run, capsys):
    task, run_dir, _ = run
    reported = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    evaluated = json.loads(out[out.rindex("\n{") + 1:])
    if task == "semantic":
        assert evaluated == reported
    else:  # best.pt got its output scale calibrated after the reported validation; Ultralytics' depth metrics
        # median-align each image, so the scale changes them by float rounding only
        assert evaluated == pytest.approx(reported, rel=1e-6)


def test_per_image_records_reproduce_the_validators_primary_metric(run):
    # Semantic: per-image confusion matrices summed (Ultralytics sums in float32); depth: per-image delta1 means.
    task, run_dir, _ = run
    value, reported, images = records_reproduce_the_primary_metric(task, run_dir)
    assert value == pytest.approx(reported, rel=1e-6) and images >= 4


def test_tensorboard_has_the_tasks_metrics(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    task, run_dir, _ = run
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for name in KEYS[task].values():
        assert f"metrics/{name}" in tags and f"result/{name}" in tags
    reported = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    (final,) = acc.Scalars(f"result/{PRIMARY[task]}")
    assert final.value == pytest.approx(reported[PRIMARY[task]])


_PLAIN = NO_VISIONPEFT + """
import json
import torch
from ultralytics import YOLO
model = YOLO(sys.argv[1])
x = torch.load(sys.argv[3])
with torch.no_grad():
    y = model.model.double().eval()(x)
torch.save(y[0] if isinstance(y, (tuple, list)) else y, sys.argv[4])
results = YOLO(sys.argv[1]).val(**json.loads(sys.argv[2]))
print(json.dumps({"task": model.task, **{k: float(v) for k, v in results.results_dict.items()}}))
"""


def test_merged_checkpoint_is_plain_ultralytics_with_the_same_outputs(run, tmp_path):
    """``merged.pt`` loads as the task in plain Ultralytics, computes (float64) what the trained adapted model
    computes with its adapters folded in (1e-5 relative), and validates to the run's metrics."""
    from visionpeft.tasks.ultralytics.merge import load_run_model, merged_copy

    task, run_dir, data = run
    adapted = load_run_model(run_dir).double()
    assert any(type(m).__name__ == "LoRAConv2d" for m in adapted.modules())
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    merged = merged_copy(adapted)
    with torch.no_grad():
        a, m = adapted(x), merged(x)
        half = merged_copy(load_run_model(run_dir)).half().double()(x)  # the file holds float16 weights
    torch.testing.assert_close(m, a, rtol=1e-5, atol=1e-9)  # the merge is exact
    torch.save(x, tmp_path / "x.pt")
    recorded = json.loads((run_dir / "metrics.json").read_text())
    val = recorded["extra"]["val"]
    args = {k: val[k] for k in ("imgsz", "batch", "rect") if val.get(k) is not None}
    args.update(data=str(data), device="cpu", plots=False, verbose=False, project=str(tmp_path), name="v")
    proc = subprocess.run([sys.executable, "-c", _PLAIN, str(run_dir / "weights" / "merged.pt"), json.dumps(args),
                           str(tmp_path / "x.pt"), str(tmp_path / "y.pt")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plain = json.loads(proc.stdout.strip().splitlines()[-1])
    assert plain.pop("task") == task
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), half, rtol=1e-5, atol=1e-9)
    assert {KEYS[task][k]: v for k, v in plain.items() if k in KEYS[task]} == pytest.approx(recorded["metrics"],
                                                                                          abs=0.02)


@pytest.mark.parametrize("run", ["depth"], indirect=True)
def test_depth_calibration_reaches_the_merged_checkpoint(run):
    """Ultralytics' depth trainer calibrates best.pt after validating it: merged.pt carries the same scale."""
    _, run_dir, _ = run
    best = torch.load(run_dir / "weights" / "best.pt", weights_only=False)
    merged = torch.load(run_dir / "weights" / "merged.pt", weights_only=False)
    cal = best["depth_calibration"]
    assert cal["candidate"] != "identity" and cal["b"] != 0  # else this test could not tell stale from fresh
    head = merged["ema"].model[-1]
    assert float(head.cal_b) == pytest.approx(cal["b"], abs=1e-3) and float(head.cal_a) == pytest.approx(cal["a"])


def test_predict_merged_equals_unmerged(run, tmp_path):
    task, run_dir, data = run
    folder = data.parent / "images" / "val"
    docs = {}
    for merged in ("true", "false"):
        out = tmp_path / merged
        assert main(["predict", str(run_dir), f"source={folder}", f"merged={merged}", f"out={out}"]) == 0
        docs[merged] = json.loads((out / "predictions.json").read_text())
    on, off = docs["true"], docs["false"]
    assert on["ultralytics_task"] == task and on["imgsz"] == IMGSZ
    assert len(on["images"]) == len(list(folder.iterdir()))
    for a, b in zip(on["images"], off["images"]):
        assert a["file"] == b["file"] and a["predictions"]
        if task == "semantic":
            assert all({"name", "class", "pixel_ratio"} <= set(p) for p in a["predictions"])
            assert sum(p["pixel_ratio"] for p in a["predictions"]) == pytest.approx(1.0, abs=1e-3)
        else:
            (pa,), (pb,) = a["predictions"], b["predictions"]
            assert 0 < pa["min_m"] <= pa["median_m"] <= pa["max_m"]
            assert pa["median_m"] == pytest.approx(pb["median_m"], rel=1e-2)  # float16 merge rounding only
    assert sorted(p.name for p in (tmp_path / "true" / "images").iterdir()) == sorted(p.name for p in folder.iterdir())


def test_bad_labels_one_line_exit_2(shared, tmp_path, capsys):
    def err(recipe):
        assert main(["train", str(recipe)]) == 2
        text = capsys.readouterr().err
        assert text.count("\n") == 1 and "Traceback" not in text
        return text

    strategies = "strategies: [{method: lora}, {method: head}]"
    data = write_mask_dataset(tmp_path / "masks", ["road", "car"], n_train=2, n_val=1, size=32)
    mask = sorted((data.parent / "masks" / "val").iterdir())[0]
    from PIL import Image

    Image.fromarray((torch.ones(32, 32, dtype=torch.uint8) * 4).numpy()).save(mask)
    text = err(_recipe(tmp_path, "semantic", data, strategies))
    assert f"{mask}: mask values [4] are outside the classes: expected class ids 0..1" in text
    data = write_depth_dataset(tmp_path / "depth", n_train=2, n_val=1, size=32)
    dmap = sorted((data.parent / "depth" / "train").iterdir())[0]
    Image.fromarray((torch.ones(32, 32, dtype=torch.uint8)).numpy()).save(dmap)
    assert "16-bit PNG" in err(_recipe(tmp_path, "depth", data, strategies))
    Image.fromarray((torch.ones(16, 32, dtype=torch.int32)).numpy().astype("uint16")).save(dmap)
    assert "depth map size 32x16 does not match" in err(_recipe(tmp_path, "depth", data, strategies))
    dmap.unlink()
    assert f"no depth map {dmap}" in err(_recipe(tmp_path, "depth", data, strategies))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.fixture(scope="module", params=sorted(MODELS))
def compared(request, shared, tmp_path_factory):
    task = request.param
    root = tmp_path_factory.mktemp(f"{task}-compare")
    data = _data(task, shared, root)
    recipe = _recipe(root, task, data, "compare: {freeze10: [{method: freeze, n: 10}], lora: [{method: lora, "
                     "rank: 4}, {method: head}]}", name="c")
    assert main(["compare", str(recipe)]) == 0
    (cdir,) = (root / "runs").glob("c-compare-*")
    return task, cdir, data


def test_compare_reports_the_tasks_metrics(compared):
    task, cdir, _ = compared
    report = json.loads((cdir / "report.json").read_text())
    assert report["primary_metric"] == PRIMARY[task]
    assert [r["strategy"] for r in report["runs"]] == ["full", "freeze10", "lora"]
    assert all(f"{PRIMARY[task]}_val" in r for r in report["runs"])
    assert PRIMARY[task] in (cdir / "report.md").read_text()
    # TensorBoard's HParams tab: the task's own columns, one session per run with its primary metric
    from ...report.tb_readback import hparams_view

    experiment, metrics, _ = hparams_view(cdir)
    assert {f"result/{name}" for name in HPARAMS[task]} <= {m.name.tag for m in experiment.metric_infos}
    assert len(metrics) == 3 and all(f"result/{PRIMARY[task]}" in m for m in metrics.values())


def test_freeze_n_is_plain_ultralytics_freeze_n(compared, tmp_path):
    """The compare's ``{method: freeze, n: 10}`` run trained exactly what plain Ultralytics' ``freeze=10`` trains
    (read from Ultralytics' own trainer after its setup, before the first step)."""
    task, cdir, data = compared
    from ultralytics.models import YOLO

    class Stop(Exception):
        pass

    seen = {}

    def grab(trainer):
        seen["trainable"] = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
        raise Stop

    trainer = YOLO.task_map.fget(None)[task]["trainer"](overrides=dict(
        model=MODELS[task], data=str(data), epochs=1, imgsz=IMGSZ, batch=2, workers=0, device="cpu", amp=False,
        plots=False, project=str(tmp_path), name="plain", freeze=10))
    trainer.add_callback("on_pretrain_routine_end", grab)
    with pytest.raises(Stop):
        trainer.train()
    plan = json.loads((cdir / "01-freeze10" / "plan.json").read_text())
    ours = {n for n, owner in plan["trainable"].items()}
    assert seen["trainable"] and ours == seen["trainable"]


def test_semantic_from_mask_pngs_on_a_pretrained_checkpoint(tmp_path, capsys):
    """``masks_dir`` data (Ultralytics' SemanticDataset: no background class added) and a ``.pt`` of another class
    count (yolo26n-sem's 19 Cityscapes classes, saved by Ultralytics): the head is rebuilt for the data's 2 classes
    as Ultralytics does, the run reports the validator's metrics and merges into a plain semantic checkpoint."""
    from ultralytics import YOLO

    YOLO("yolo26n-sem.yaml").save(str(tmp_path / "sem19.pt"))
    data = write_mask_dataset(tmp_path / "masks", ["road", "car"], n_train=4, n_val=2, size=64)
    recipe = tmp_path / "m.yaml"
    recipe.write_text(f"task: semantic\nname: m\nmodel: {tmp_path / 'sem19.pt'}\ndata: {data}\n"
                      f"output: {tmp_path / 'runs'}\nstrategies: [{{method: lora, rank: 4}}, {{method: head}}]\n"
                      f"ultralytics: {{epochs: 1, {TINY[1:]}\n")
    assert main(["train", str(recipe)]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert set(json.loads((run_dir / "metrics.json").read_text())["metrics"]) == {"miou", "pixel_acc"}
    assert _model(run_dir).names == {0: "road", 1: "car"}
    assert main(["merge", str(run_dir), "-o", str(tmp_path / "m.pt")]) == 0
    plain = YOLO(str(tmp_path / "m.pt"))
    assert plain.task == "semantic" and plain.model.names == {0: "road", 1: "car"}
    assert plain.model.model[-1].classifier[1].out_channels == 2
