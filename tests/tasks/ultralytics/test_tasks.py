"""Every Ultralytics task through the engine seam: segment, pose, OBB (the shipped YOLOv5n task yamls with the
COCO-pretrained YOLOv5n backbone+neck transferred by Ultralytics' ``pretrained``) and classify, each trained with
LoRA + head, evaluated, merged, and loaded in plain Ultralytics.

One tiny run per task (coco8-seg / coco8-pose / dota8 copied to tmp, labels folded to one class so a few epochs
at 128 px find something; classify on a 2-class ImageFolder cut from flowers5_128).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("ultralytics")

from ultralytics import YOLO  # noqa: E402

import visionpeft  # noqa: E402
from visionpeft.backends.ultralytics import build_model  # noqa: E402
from visionpeft.cli import main  # noqa: E402
from visionpeft.packaged import ASSETS  # noqa: E402

from ..ultralytics_support import (  # noqa: E402
    NO_VISIONPEFT,
    capture_setup,
    copy_dataset,
    killed_after_first_epoch,
    records_reproduce_the_primary_metric,
    ultralytics_setup,
)

IMGSZ = 128
ARGS = (f"{{epochs: 3, imgsz: {IMGSZ}, batch: 2, nbs: 2, warmup_epochs: 0, workers: 0, device: cpu, amp: false, "
        "optimizer: SGD, lr0: 0.01, mosaic: 0.0}")
DATASETS = {"segment": "coco8-seg", "pose": "coco8-pose", "obb": "dota8"}
PRIMARY = {"segment": "mask_map50_95", "pose": "pose_map50_95", "obb": "map50_95", "classify": "top1"}
SUFFIX = {"segment": "seg", "pose": "pose", "obb": "obb"}


def _on_coco_backbone(shared, task: str) -> str:
    """Recipe lines: the shipped YOLOv5n task yaml + the COCO detect checkpoint as Ultralytics' ``pretrained``."""
    return (f"model: models/yolov5nu-{SUFFIX[task]}.yaml\n"
            f"pretrained: {shared / 'weights' / 'yolov5nu-cocobackbone.pt'}\n")


def _one_class(data):
    """Fold every label row to class 0 (same geometry) and name one class."""
    for label in (data.parent / "labels").rglob("*.txt"):
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()]
        label.write_text("".join(" ".join(["0", *r[1:]]) + "\n" for r in rows))
    text = data.read_text()
    head, _, _ = text.partition("names:")
    extra = "\n".join(line for line in head.splitlines() if line.startswith(("kpt_shape", "flip_idx")))
    data.write_text(f"train: images/train\nval: images/val\n{extra}\nnames: [thing]\n")


def _cls_folder(shared, root):
    """2 classes x (4 train + 2 val) images of flowers5_128."""
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("daisy", "rose"):
            src = sorted((shared / "data" / "flowers5_128" / split / cls).iterdir())[:n]
            (root / split / cls).mkdir(parents=True)
            for f in src:
                shutil.copy(f, root / split / cls / f.name)
    return root


@pytest.fixture(scope="module", params=["segment", "pose", "obb", "classify"])
def run(request, shared, tmp_path_factory):
    task = request.param
    root = tmp_path_factory.mktemp(task)
    if task == "classify":
        data, model = _cls_folder(shared, root / "flowers"), "model: yolov8n-cls.yaml\n"
    else:
        data = copy_dataset(shared, DATASETS[task], root)
        _one_class(data)
        model = _on_coco_backbone(shared, task)
    # No pretrained YOLO classifier exists offline: a frozen random backbone with BatchNorm on its initial running
    # statistics passes (almost) nothing on, so classify also trains the norms with batch statistics.
    strategies = "[{method: lora, rank: 4}" + (", {method: norm, bn: train}" if task == "classify" else "") + \
        ", {method: head}]"
    recipe = root / "r.yaml"
    recipe.write_text(f"task: {task}\nname: {task}\n{model}data: {data}\noutput: {root / 'runs'}\n"
                      f"strategies: {strategies}\nultralytics: {ARGS}\n")
    assert main(["train", str(recipe)]) == 0
    (run_dir,) = (root / "runs").iterdir()
    return task, run_dir, data


def test_run_reports_the_tasks_metrics(run):
    task, run_dir, _ = run
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert PRIMARY[task] in metrics
    if task in ("segment", "pose"):
        assert metrics["map50"] > 0  # boxes found after 3 epochs on the COCO backbone (DOTA's tiny objects at
        # 128 px are not: OBB's numbers stay 0 here; the merged-output test below checks OBB's head exactly)
    plan = visionpeft.get_plan(build_model(run_dir / "weights" / "last.pt"))
    assert set(plan.trainable.values()) == {"lora", "head"} | ({"norm"} if task == "classify" else set())


def test_eval_reproduces_the_reported_metrics(run, capsys):
    task, run_dir, _ = run
    reported = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.rindex("\n{") + 1:]) == reported


def test_per_image_records_reproduce_the_validators_primary_metric(run):
    # What the compare's bootstrap resamples: the validator's own per-image pieces (TP flags of masks / keypoints /
    # oriented boxes, or classify's top-1), which over every image once give its reported value.
    task, run_dir, _ = run
    value, reported, images = records_reproduce_the_primary_metric(task, run_dir)
    assert value == pytest.approx(reported, abs=1e-9) and images >= 4


def test_merged_checkpoint_is_plain_ultralytics_with_the_same_outputs(run, tmp_path):
    """``weights/merged.pt`` loads in plain Ultralytics, equals the adapted best.pt and validates the same."""
    task, run_dir, data = run
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    plain = YOLO(str(run_dir / "weights" / "merged.pt"))
    assert plain.task == task and visionpeft.get_plan(plain.model) is None
    assert not any(type(m).__module__.startswith("visionpeft") for m in plain.model.modules())
    adapted = build_model(run_dir / "weights" / "best.pt")
    lora = [m for m in adapted.modules() if type(m).__name__ == "LoRAConv2d"]
    assert lora and any(float(m.lora_B.abs().sum()) > 0 for m in lora)  # training moved the adapters
    with torch.no_grad():
        a = adapted.float().eval()(x)
        b = plain.model.float().eval()(x)
    a, b = (a[0] if isinstance(a, (tuple, list)) else a), (b[0] if isinstance(b, (tuple, list)) else b)
    torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2)  # merged weights rounded to fp16 like Ultralytics'
    # `visionpeft merge` writes the same kind of file.
    assert main(["merge", str(run_dir), "-o", str(tmp_path / "m.pt")]) == 0
    assert YOLO(str(tmp_path / "m.pt")).task == task


PREDICTION_KEY = {"segment": "segments", "pose": "keypoints", "obb": "box", "classify": "confidence"}


def _top(records: list[dict], k: int = 5) -> list[float]:
    return sorted((p["confidence"] for r in records for p in r["predictions"]), reverse=True)[:k]


def test_predict_on_the_trained_run_merged_equals_unmerged(run, tmp_path):
    """``visionpeft predict RUN source=DIR`` on each task's trained run: the task's own predictions in JSON,
    Ultralytics' annotated images for detection-like tasks, and the same answers merged or not."""
    task, run_dir, data = run
    folder = data / "val" if task == "classify" else data.parent / "images" / "val"
    # An ImageFolder split has its images one level down: a glob reaches them (a bare folder is not recursed).
    source = f"{folder}/**/*.jpg" if task == "classify" else str(folder)
    docs = {}
    for merged in ("true", "false"):
        out = tmp_path / merged
        assert main(["predict", str(run_dir), f"source={source}", "conf=0.01", f"merged={merged}",
                     f"out={out}"]) == 0
        docs[merged] = json.loads((out / "predictions.json").read_text())
    on, off = docs["true"], docs["false"]
    assert on["merged"] is True and off["merged"] is False
    assert on["ultralytics_task"] == task and on["imgsz"] == IMGSZ  # the run's training size by default
    files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    assert sorted(r["file"] for r in on["images"]) == files
    assert [r["file"] for r in on["images"]] == [r["file"] for r in off["images"]]
    found = [p for r in on["images"] for p in r["predictions"]]
    assert found and all(PREDICTION_KEY[task] in p for p in found)
    if task == "pose":
        assert all(len(p["keypoints"]["x"]) == 17 for p in found)  # the model's kpt_shape (17, 3)
    # Merged weights differ from base + adapter by float rounding only: the same top answers.
    assert _top(on["images"]) == pytest.approx(_top(off["images"]), abs=2e-3)
    annotated = tmp_path / "true" / "images"
    assert annotated.is_dir() == (task != "classify")
    if task != "classify":
        assert sorted(p.name for p in annotated.iterdir()) == sorted(r["file"].rsplit("/", 1)[1]
                                                                     for r in on["images"])


@pytest.mark.parametrize("task", ["segment", "pose", "obb"])
def test_freeze_n_is_ultralytics_freeze_and_holds_for_the_run(task, shared, tmp_path, monkeypatch):
    """On a task yaml with Ultralytics' ``pretrained`` detect checkpoint, ``{method: freeze, n: 10}`` starts from
    the tensors plain Ultralytics starts from and trains exactly what its ``freeze=10`` trains (everything outside
    ``model.0.`` .. ``model.9.`` and ``.dfl``); the frozen tensors leave the run bit-identical."""
    data = copy_dataset(shared, DATASETS[task], tmp_path)
    _one_class(data)
    ckpt = shared / "weights" / "yolov5nu-cocobackbone.pt"
    args = dict(epochs=1, imgsz=64, batch=2, nbs=2, warmup_epochs=0, workers=0, device="cpu", amp=False,
                optimizer="SGD", lr0=0.01)
    plain = ultralytics_setup(str(ASSETS / "models" / f"yolov5nu-{SUFFIX[task]}.yaml"), tmp_path / "plain",
                              data=str(data), pretrained=str(ckpt), freeze=10, **args)
    seen = capture_setup(monkeypatch)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: {task}\nname: f\n{_on_coco_backbone(shared, task)}data: {data}\n"
                      f"output: {tmp_path / 'runs'}\nstrategies: [{{method: freeze, n: 10}}]\nultralytics: "
                      f"{json.dumps(args)}\n")
    assert main(["train", str(recipe)]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    frozen_prefixes = tuple(f"model.{i}." for i in range(10))
    assert seen["trainable"] == plain["trainable"]
    assert plain["trainable"] == {n for n in plain["trainable"] | set(seen["trainable"])
                                  if not n.startswith(frozen_prefixes) and ".dfl" not in n}
    coco = build_model(ckpt).state_dict()
    body = [k for k in coco if int(k.split(".")[1]) < 24]  # backbone + neck: transferred by name and shape
    assert len(body) == 342 and all(torch.equal(seen["state"][k], coco[k].float()) for k in body)
    trained = build_model(run_dir / "weights" / "last.pt")
    assert set(visionpeft.get_plan(trained).trainable) == plain["trainable"]
    after = trained.state_dict()
    frozen = [k for k in body if k.startswith(frozen_prefixes)]
    assert frozen and all(torch.equal(after[k].half(), coco[k].half()) for k in frozen)  # BN statistics included
    # The rest trained: the adapter file holds the EMA's trainable tensors in float32.
    from safetensors.torch import load_file

    saved = load_file(str(run_dir / "adapter" / "adapter.safetensors"))
    assert set(saved) >= plain["trainable"]
    assert any(not torch.equal(saved[k], coco[k].float()) for k in plain["trainable"] if k.startswith("model.13."))


def _first_tensor(out):
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def test_merged_checkpoint_exports_to_onnx_with_the_same_outputs(run, tmp_path):
    """Ultralytics' ONNX export of ``merged.pt``, run by ONNX's reference evaluator, matches the PyTorch model."""
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    task, run_dir, _ = run
    shutil.copy(run_dir / "weights" / "merged.pt", tmp_path / "merged.pt")
    path = YOLO(str(tmp_path / "merged.pt")).export(format="onnx", imgsz=64, device="cpu", simplify=False)
    graph = onnx.load(path)
    onnx.checker.check_model(graph)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    (ours, *_) = ReferenceEvaluator(graph).run(None, {graph.graph.input[0].name: x.numpy()})
    with torch.no_grad():
        ref = _first_tensor(YOLO(str(tmp_path / "merged.pt")).model.float().eval().fuse(verbose=False)(x))
    torch.testing.assert_close(torch.from_numpy(ours), ref, rtol=1e-3, atol=1e-3)


_PLAIN_VAL = NO_VISIONPEFT + """
import json
from ultralytics import YOLO
results = YOLO(sys.argv[1]).val(**json.loads(sys.argv[2]))
print(json.dumps({k: float(v) for k, v in results.results_dict.items()}))
"""


def test_merged_checkpoint_validates_in_plain_ultralytics_to_the_reported_metrics(run, tmp_path):
    """``YOLO(merged.pt).val(...)`` in a process where visionpeft cannot be imported, with the settings the run's
    final validation recorded, gives the run's metrics (up to the float16 rounding of the saved weights)."""
    from visionpeft.tasks.ultralytics.callbacks import metrics_from_ultralytics

    task, run_dir, data = run
    recorded = json.loads((run_dir / "metrics.json").read_text())
    val = recorded["extra"]["val"]
    args = {k: val[k] for k in ("imgsz", "batch", "rect", "conf", "iou", "max_det") if val.get(k) is not None}
    args.update(data=str(data), device="cpu", plots=False, verbose=False, project=str(tmp_path), name="v")
    proc = subprocess.run([sys.executable, "-c", _PLAIN_VAL, str(run_dir / "weights" / "merged.pt"),
                           json.dumps(args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plain = metrics_from_ultralytics(json.loads(proc.stdout.strip().splitlines()[-1]), task)
    assert plain.keys() == recorded["metrics"].keys()
    assert plain == pytest.approx(recorded["metrics"], abs=0.02)


def test_a_killed_pose_run_resumes(shared, tmp_path, monkeypatch):
    """``visionpeft resume`` of a pose run killed after its first epoch continues it with the pose trainer, its
    frozen tensors rebuilt from the model yaml + ``pretrained`` (none taken from last.pt's float16 copies)."""
    import visionpeft.tasks.ultralytics.resume as resume_mod
    import visionpeft.tasks.ultralytics.trainer as trainer_mod

    data = copy_dataset(shared, "coco8-pose", tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: pose\nname: p\n{_on_coco_backbone(shared, 'pose')}data: {data}\n"
                      f"output: {tmp_path / 'runs'}\n"
                      "strategies: [{method: lora, rank: 4}, {method: head}]\nultralytics: {epochs: 2, imgsz: 64, "
                      "batch: 2, nbs: 2, warmup_epochs: 0, workers: 0, device: cpu, amp: false}\n")
    original = killed_after_first_epoch(monkeypatch)
    assert main(["train", str(recipe)]) == 130  # the CLI's status for an interrupt
    monkeypatch.setattr(trainer_mod, "make_callbacks", original)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "weights" / "last.pt").is_file() and not (run_dir / "metrics.json").exists()
    taken, load = [], resume_mod.load_resumed_state
    monkeypatch.setattr(resume_mod, "load_resumed_state", lambda *a, **k: taken.append(load(*a, **k)) or
                        taken[-1])
    assert main(["resume", str(run_dir)]) == 0
    assert taken == [[]]  # a base rebuilt without `pretrained` would differ in every frozen backbone tensor
    result = json.loads((run_dir / "metrics.json").read_text())
    assert result["extra"]["start_epoch"] == 1 and result["extra"]["epochs"] == 2
    assert "pose_map50_95" in result["metrics"]
    assert type(build_model(run_dir / "weights" / "last.pt")).__name__ == "PoseModel"
