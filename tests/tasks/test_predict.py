"""``visionpeft predict``: a classification run and an Ultralytics detection run, merged and unmerged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from visionpeft.cli import main
from visionpeft.data.toy import make_toy_imagefolder
from visionpeft.recipe import parse_recipe
from visionpeft.tasks.classification import TASK as CLS

from .ultralytics_support import copy_dataset


# ------------------------------------------------------------------------------------------ classification
@pytest.fixture(scope="module")
def one_thread():
    """Module fixtures run before conftest's per-test one-thread setting: 2 threads on a busy machine crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory, one_thread) -> Path:
    """A trained LoRA + head run of timm's tiny test_efficientnet on a 3-class toy set (seconds)."""
    root = tmp_path_factory.mktemp("cls")
    toy = make_toy_imagefolder(root / "toy", classes=3, train_per_class=12, val_per_class=6, size=24)
    recipe = parse_recipe({
        "name": "toy", "model": "test_efficientnet", "data": str(toy), "output": str(root), "seed": 0,
        "strategies": [{"method": "lora", "rank": 2}, {"method": "head"}],
        "train": {"epochs": 2, "batch_size": 8, "workers": 0, "progress": False},
        "optim": {"lr": 0.01, "head_lr": 0.05, "warmup_epochs": 0},
        "augment": {"img_size": 32, "random_resized_crop": False, "hflip": 0.0, "color_jitter": 0.0}})
    CLS.train(recipe, list(recipe.strategies), root / "run", "lora")
    return root / "run"


def _predict(run: Path, *options: str) -> dict:
    assert main(["predict", str(run), *options]) == 0
    out = next(o.split("=", 1)[1] for o in options if o.startswith("out="))
    return json.loads((Path(out) / "predictions.json").read_text())


def test_classification_predict_matches_eval_and_merged_equals_unmerged(cls_run, tmp_path):
    source = str(cls_run.parent / "toy" / "val" / "*" / "*.png")
    merged = _predict(cls_run, f"source={source}", f"out={tmp_path / 'm'}", "topk=3")
    plain = _predict(cls_run, f"source={source}", f"out={tmp_path / 'u'}", "merged=false", "topk=3")
    assert merged["merged"] is True and plain["merged"] is False and merged["task"] == "classification"
    assert len(merged["images"]) == 18 and [r["file"] for r in merged["images"]] == [r["file"] for r in plain["images"]]
    for a, b in zip(merged["images"], plain["images"]):
        assert [p["class"] for p in a["predictions"]] == [p["class"] for p in b["predictions"]]
        assert [p["prob"] for p in a["predictions"]] == pytest.approx([p["prob"] for p in b["predictions"]], abs=1e-5)
        assert sum(p["prob"] for p in a["predictions"]) == pytest.approx(1.0, abs=1e-5)  # 3 of 3 classes
    # The run's own eval preprocessing: predict's top-1 on val is exactly eval's top-1.
    hits = [r["predictions"][0]["class"] == Path(r["file"]).parent.name for r in merged["images"]]
    assert sum(hits) / len(hits) == pytest.approx(CLS.evaluate(cls_run, "val")["top1"], abs=1e-9)


def test_classification_predict_prints_a_line_per_image_with_speed(cls_run, tmp_path, capsys):
    images = sorted((cls_run.parent / "toy" / "val" / "class_1").glob("*.png"))[:3]
    folder = tmp_path / "three"
    folder.mkdir()
    for image in images:
        (folder / image.name).write_bytes(image.read_bytes())
    assert main(["predict", str(cls_run), f"source={folder}", f"out={tmp_path / 'o'}", "topk=2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    doc = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert len(lines) == 5, lines  # 3 images, the speed line, where the predictions are
    for i, (line, record) in enumerate(zip(lines, doc["images"])):
        best, second = record["predictions"]
        assert re.fullmatch(rf"image {i + 1}/3 {re.escape(record['file'])}: {best['class']} {best['prob']:.2f}, "
                            rf"{second['class']} {second['prob']:.2f} \d+\.\dms", line), line
    assert re.fullmatch(r"Speed: [\d.]+ms preprocess, [\d.]+ms inference, [\d.]+ms postprocess per image \(3 images\)",
                        lines[3]), lines[3]
    assert set(doc["speed_ms"]) == {"preprocess", "inference", "postprocess"} and doc["speed_ms"]["inference"] > 0
    assert lines[4] == f"predictions written to {tmp_path / 'o' / 'predictions.json'}"


def test_classification_predict_against_a_direct_forward(cls_run, tmp_path):
    """Probabilities equal softmax(model(x)) for x built independently with timm's own eval transform."""
    import timm.data
    from PIL import Image

    image = cls_run.parent / "toy" / "val" / "class_1" / "img_000.png"
    got = _predict(cls_run, f"source={image}", f"out={tmp_path / 'one'}")["images"][0]["predictions"]
    _, model, _, meta = CLS.load_run(cls_run)
    pre = meta["preprocess"]
    tf = timm.data.create_transform(input_size=(3, pre.img_size, pre.img_size), interpolation=pre.interpolation,
                                    mean=pre.mean, std=pre.std, crop_pct=pre.crop_pct)
    with torch.no_grad():
        probs = model.eval()(tf(Image.open(image).convert("RGB"))[None]).softmax(1)[0]
    top = probs.topk(3)
    assert [p["index"] for p in got] == top.indices.tolist()
    # albumentations (the run's resize) vs PIL (timm's) bicubic differ by a few grey levels: close, not equal
    assert [p["prob"] for p in got] == pytest.approx(top.values.tolist(), abs=0.05)


@pytest.mark.parametrize(("options", "message"), [
    (["source=/no/such/dir"], "source: /no/such/dir does not exist"),
    (["source={tmp}/empty"], "holds no images"),
    (["source={tmp}/split"], "its subfolders do (e.g. rose/r.png): pass a glob such as '{tmp}/split/**/*.png'"),
    (["source={tmp}/bad.png"], "bad.png: cannot read this image"),
    (["source={tmp}/notes.txt"], "notes.txt is not an image"),
    (["source={tmp}/*.jpeg"], "holds no images"),
    (["merged=maybe", "source=x"], "merged=maybe: expected true or false"),
    (["sorce=x"], "unknown option 'sorce'; did you mean 'source'?"),
    (["source=x", "device=gpu"], "device=gpu: expected cpu, mps, cuda"),
    (["source=x", "imgsz=16"], "imgsz=16: expected an image size of 32..8192"),
    ([], "source= is required"),
    (["source={tmp}/ok.png", "conf=0.5"], "conf= applies to Ultralytics runs"),
])
def test_bad_predict_input_is_one_line_exit_2(cls_run, tmp_path, capsys, options, message):
    from PIL import Image

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (tmp_path / "notes.txt").write_text("x")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "split" / "rose").mkdir(parents=True)  # an ImageFolder split: images one level down
    Image.new("RGB", (8, 8)).save(tmp_path / "split" / "rose" / "r.png")
    before = sorted(p.name for p in cls_run.iterdir())
    assert main(["predict", str(cls_run), *[o.format(tmp=tmp_path) for o in options]]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and err.count("\n") == 1
    assert "Traceback" not in err and "skip_bad_images" not in err
    assert sorted(p.name for p in cls_run.iterdir()) == before  # nothing left behind in the run


# ------------------------------------------------------------------------------------------------ detection
@pytest.fixture(scope="module")
def det_run(shared, tmp_path_factory, one_thread) -> Path:
    """A 1-epoch LoRA + head run of the COCO-backbone YOLOv5nu on a tmp copy of coco8 (64 px, CPU)."""
    root = tmp_path_factory.mktemp("det")
    data = copy_dataset(shared, "coco8", root)
    recipe = root / "det.yaml"
    recipe.write_text(
        f"task: detection\nname: tiny\nmodel: {shared / 'weights' / 'yolov5nu-cocobackbone.pt'}\ndata: {data}\n"
        f"output: {root / 'runs'}\nstrategies: [{{method: lora, rank: 4}}, {{method: head}}]\n"
        "ultralytics: {epochs: 1, imgsz: 64, batch: 2, nbs: 2, warmup_epochs: 0, workers: 0, device: cpu, "
        "amp: false}\n")
    assert main(["train", str(recipe)]) == 0
    (run,) = (root / "runs").iterdir()
    _make_decisive(run / "weights" / "best.pt")
    return run


def _make_decisive(best: Path) -> None:
    """Give the run's model non-trivial LoRA updates and confident, varied class scores.

    One epoch on 4 images leaves LoRA's B near zero (merge would be close to a no-op) and the new head's scores
    all at its prior (~1e-4, ties everywhere): random B factors and class biases spread over [-3, 3] make merged
    vs unmerged a real comparison of confident, distinct detections.
    """
    ckpt = torch.load(best, weights_only=False)  # the test's own file
    model = ckpt.get("ema") or ckpt["model"]  # Ultralytics moves the EMA to "model" when it strips a run
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        lora = [p for n, p in model.named_parameters() if n.endswith("lora_B")]
        for p in lora:
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        for seq in model.model[-1].cv3:
            bias = seq[-1].bias
            bias.copy_(torch.rand(bias.shape, generator=g) * 6 - 3)
    assert lora
    torch.save(ckpt, best)


def _same_detections(a: list[dict], b: list[dict], tol: float = 1e-3) -> bool:
    """Every detection of ``a`` has its own partner in ``b``: same class, confidence and box within ``tol``."""
    def values(p: dict) -> list[float]:
        return [p["confidence"], *p["box"].values()]

    left = list(b)
    for p in a:
        match = next((q for q in left if q["class"] == p["class"]
                      and all(abs(x - y) <= tol * max(1.0, abs(x)) for x, y in zip(values(p), values(q)))), None)
        if match is None:
            return False
        left.remove(match)
    return not left


def test_detection_predict_merged_equals_unmerged(det_run, shared, tmp_path):
    source = str(det_run.parent.parent / "coco8" / "images" / "val")
    options = [f"source={source}", "conf=0.5", "imgsz=128"]
    merged = _predict(det_run, *options, f"out={tmp_path / 'm'}")
    plain = _predict(det_run, *options, f"out={tmp_path / 'u'}", "merged=false")
    assert merged["merged"] is True and plain["merged"] is False and merged["ultralytics_task"] == "detect"
    assert merged["imgsz"] == 128 and merged["conf"] == 0.5 and len(merged["images"]) == 4
    for a, b in zip(merged["images"], plain["images"]):
        assert a["file"] == b["file"]
        assert a["predictions"] and set(a["predictions"][0]) >= {"name", "class", "confidence", "box"}
        assert _same_detections(a["predictions"], b["predictions"])
    images = sorted(p.name for p in (tmp_path / "m" / "images").iterdir())
    assert images == sorted(Path(r["file"]).name for r in merged["images"])  # Ultralytics' annotated images


def test_detection_predict_default_out_and_one_image(det_run, capsys):
    image = det_run.parent.parent / "coco8" / "images" / "val" / "000000000036.jpg"
    assert main(["predict", str(det_run), f"source={image}"]) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1].split(" to ")[1]).parent
    assert out.parent == det_run and out.name.startswith("predict-")
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["imgsz"] == 64 and doc["conf"] == 0.25  # the run's training imgsz, Ultralytics' default conf
    assert [r["file"] for r in doc["images"]] == [str(image)] and (out / "images" / image.name).is_file()


def test_adapters_that_cannot_be_folded_predict_unmerged():
    """VPT prompts cannot be merged: predict keeps the adapted model and records why."""
    import timm

    import visionpeft
    from visionpeft.tasks.predict import merged_or_adapted

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32)
    visionpeft.apply(model, [{"method": "vpt", "tokens": 2}, {"method": "head"}])
    same, info = merged_or_adapted(model, True)
    assert same is model and info["merged"] is False and "vpt" in info["not_merged_because"].lower()
    assert visionpeft.get_plan(model) is not None  # still adapted, untouched


@pytest.mark.parametrize(("yaml", "predictor", "key"), [
    ("yolov8n-seg.yaml", "SegmentationPredictor", "segments"),
    ("yolov8n-pose.yaml", "PosePredictor", "keypoints"),
    ("yolov8n-obb.yaml", "OBBPredictor", "box"),
    ("yolov8n-cls.yaml", "ClassificationPredictor", "confidence"),
])
def test_every_ultralytics_task_predicts_through_its_own_predictor(shared, tmp_path, yaml, predictor, key):
    """Written against the model's task: segment / pose / obb / classify models take the same path."""
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    from visionpeft.tasks.ultralytics.predict import predictor_class, ultralytics_predict

    cfg = tasks.yaml_model_load(yaml)
    model_cls = {"segment": tasks.SegmentationModel, "pose": tasks.PoseModel, "obb": tasks.OBBModel,
                 "classify": tasks.ClassificationModel}[tasks.guess_model_task(cfg)]
    torch.manual_seed(0)
    model = model_cls(cfg, nc=2, verbose=False).eval()
    task, cls = predictor_class(model)
    assert cls.__name__ == predictor
    image = shared / "data" / "coco8" / "images" / "val" / "000000000036.jpg"
    over = {"mode": "predict", "imgsz": 64, "conf": 0.0, "device": "cpu", "save": False, "verbose": False,
            "batch": 1, "project": str(tmp_path), "name": "u", "exist_ok": True}
    records, info = ultralytics_predict(model, [image], over, tmp_path)
    assert info["ultralytics_task"] == task and records[0]["file"] == str(image)
    assert records[0]["predictions"] and key in records[0]["predictions"][0]  # conf=0: a random head still answers
    assert (tmp_path / "images" / image.name).is_file() == (task != "classify")


def test_detection_bad_sources_are_one_line(det_run, tmp_path, capsys):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 16)
    for options, message in ((["source={tmp}/bad.jpg"], "bad.jpg: cannot read this image"),
                             (["source={tmp}/bad.jpg", "topk=3"], "topk= applies to classification runs")):
        assert main(["predict", str(det_run), *[o.format(tmp=tmp_path) for o in options]]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "skip_bad_images" not in err
    assert not [p for p in det_run.glob("predict-*") if not (p / "predictions.json").is_file()]  # none left empty
