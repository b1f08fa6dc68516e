"""Adapted (unmerged) detectors inside Ultralytics' own code paths, and ``visionpeft eval`` of a detection run.

A run leaves ``weights/best.pt`` and ``last.pt`` holding the *adapted* EMA model (LoRA wrappers, visionpeft's
plan). Users load them with ``YOLO(path)`` and predict, validate or export; each of those fuses Conv+BN through
``fuse_conv_and_bn``, which reads and assigns ``conv.weight``. The LoRA wrapper folds its update on that path, so
every result must equal the one of the same checkpoint with the adapters merged first.

One real 3-epoch run on coco8 (copied to tmp, a single class so mAP is not zero after 3 epochs at 128 px) serves
every test of the module.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("ultralytics")

from ultralytics import YOLO  # noqa: E402

import visionpeft  # noqa: E402
from visionpeft.cli import main  # noqa: E402
from visionpeft.tasks.ultralytics.merge import merged_copy  # noqa: E402

from ..ultralytics_support import copy_dataset  # noqa: E402

IMGSZ = 128


@pytest.fixture(scope="module")
def run(shared, weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapted")
    data = copy_dataset(shared, "coco8", root)
    for label in (data.parent / "labels").rglob("*.txt"):  # one class: a 3-epoch run finds some objects
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()]
        label.write_text("".join(" ".join(["0", *r[1:]]) + "\n" for r in rows))
    data.write_text("train: images/train\nval: images/val\nnames: [thing]\n")
    recipe = root / "det.yaml"
    recipe.write_text(
        f"task: detection\nname: adapted\nmodel: {weights}\ndata: {data}\noutput: {root / 'runs'}\n"
        "strategies: [{method: lora, rank: 4}, {method: head}]\n"
        f"ultralytics: {{epochs: 3, imgsz: {IMGSZ}, batch: 2, nbs: 2, warmup_epochs: 0, workers: 0, device: cpu, "
        "amp: false, optimizer: SGD, lr0: 0.01}\n"
    )
    assert main(["train", str(recipe)]) == 0
    (run_dir,) = (root / "runs").iterdir()
    return run_dir, data


def _images(data):
    return sorted(str(p) for p in (data.parent / "images" / "val").iterdir())


def _merged_yolo(path):
    """The same checkpoint, adapters merged in float32 before Ultralytics sees the model."""
    ref = YOLO(str(path))
    ref.model = merged_copy(ref.model)
    assert visionpeft.get_plan(ref.model) is None
    return ref


#: The conv-capable methods: each wraps Ultralytics' convs (or, SSF, their BatchNorms) and must fuse exactly.
CONV_METHODS = [{"method": "lora", "rank": 4}, {"method": "dora", "rank": 4}, {"method": "loha", "rank": 2},
                {"method": "lokr", "rank": 4}, {"method": "ssf"}]


@pytest.mark.parametrize("entry", CONV_METHODS, ids=lambda e: e["method"])
def test_fuse_of_an_adapted_model_equals_merge_then_fuse(entry):
    """``DetectionModel("yolov8n.yaml")`` + an adapter, then ``fuse()``: the issue's AttributeError, now exact.

    Ultralytics' ``fuse_conv_and_bn`` reads ``conv.weight`` / ``bn.weight`` ... of the wrappers and assigns the
    folded tensors back; the result must be bit-identical to merging first.
    """
    from ultralytics.nn.tasks import DetectionModel

    from visionpeft.snapshot import mergeable_layers

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", verbose=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # BN statistics that are not the identity: a fuse that ignored them would differ
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1 + 0.1 * torch.rand(m.running_var.shape, generator=g))
    base = copy.deepcopy(model).eval()
    visionpeft.apply(model, [entry])
    plan = visionpeft.get_plan(model)
    with torch.no_grad():  # non-trivial adapters: a fuse that dropped the update would differ
        for name, p in model.named_parameters():
            if plan.trainable.get(name) == entry["method"]:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    model.eval()
    kinds = {type(m) for m in mergeable_layers(model)}
    x = torch.rand(2, 3, 64, 64, generator=g)
    reference = visionpeft.merge(copy.deepcopy(model)).fuse(verbose=False)
    fused = copy.deepcopy(model).fuse(verbose=False)
    with torch.no_grad():
        out, ref, unadapted = fused(x)[0], reference(x)[0], base.fuse(verbose=False)(x)[0]
    assert (ref - unadapted).abs().max() > 1e-2  # the adapters matter (outputs are boxes in pixels)
    assert torch.equal(out, ref)
    layers = [m for m in fused.modules() if type(m) in kinds]
    assert layers or entry["method"] == "ssf"
    assert all(m.folded and m.merged for m in layers)  # SSF's BatchNorm wrappers are gone: fuse() removed the BNs
    if layers:
        with pytest.raises(RuntimeError, match="cannot be taken out again"):
            layers[0].unmerge()
    plain = visionpeft.merge(fused)  # a fused adapted model still merges into a plain one
    assert not mergeable_layers(plain)
    with torch.no_grad():
        assert torch.equal(plain(x)[0], ref)


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_predict_of_run_checkpoints_equals_the_merged_model(run, name):
    run_dir, data = run
    path = run_dir / "weights" / name
    adapted = YOLO(str(path))
    lora_b = [p for n, p in adapted.model.named_parameters() if n.endswith("lora_B")]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b)  # trained adapters, not a no-op
    kwargs = dict(imgsz=IMGSZ, conf=0.01, device="cpu", verbose=False)
    got = adapted.predict(_images(data), **kwargs)
    want = _merged_yolo(path).predict(_images(data), **kwargs)
    assert sum(len(r.boxes) for r in want) > 0
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a.boxes.data, b.boxes.data)


def test_val_of_best_pt_equals_the_merged_model(run):
    run_dir, data = run
    path = run_dir / "weights" / "best.pt"
    kwargs = dict(data=str(data), imgsz=IMGSZ, batch=4, device="cpu", plots=False, verbose=False,
                  project=str(run_dir.parent / "val"), exist_ok=True)
    got = YOLO(str(path)).val(**kwargs).results_dict
    want = _merged_yolo(path).val(**kwargs).results_dict
    assert got == want and want["metrics/mAP50(B)"] > 0


def test_export_of_best_pt_equals_the_merged_model(run, tmp_path):
    run_dir, _ = run
    for name in ("adapted", "merged"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "best.pt").write_bytes((run_dir / "weights" / "best.pt").read_bytes())
    adapted = YOLO(str(tmp_path / "adapted" / "best.pt")).export(format="torchscript", imgsz=IMGSZ, device="cpu")
    merged = _merged_yolo(tmp_path / "merged" / "best.pt").export(format="torchscript", imgsz=IMGSZ, device="cpu")
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = torch.jit.load(adapted)(x), torch.jit.load(merged)(x)
    assert torch.equal(a, b)


def test_merged_pt_matches_the_adapted_checkpoint(run):
    """``weights/merged.pt`` (plain Ultralytics, float16 like every Ultralytics checkpoint) vs ``best.pt``."""
    run_dir, _ = run
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    adapted = YOLO(str(run_dir / "weights" / "best.pt")).model.float().eval().fuse(verbose=False)
    plain = YOLO(str(run_dir / "weights" / "merged.pt")).model.float().eval().fuse(verbose=False)
    assert visionpeft.get_plan(plain) is None
    with torch.no_grad():
        torch.testing.assert_close(plain(x)[0], adapted(x)[0], rtol=2e-2, atol=2e-2)  # merged weights rounded to fp16


def test_eval_reproduces_the_reported_metrics(run, capsys):
    """``visionpeft eval RUN_DIR``: the validator settings of training's final validation, so equal numbers."""
    run_dir, data = run
    reported = json.loads((run_dir / "metrics.json").read_text())
    settings = reported["extra"]["val"]
    assert settings["rect"] is True and settings["batch"] == 4 and settings["imgsz"] == IMGSZ
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    again = json.loads(out[out.rindex("\n{") + 1:])  # the JSON after Ultralytics' log lines
    assert again == reported["metrics"] and again["map50"] > 0
    # A default standalone validation (square batches of 16) gives other numbers on the same weights.
    naive = _merged_yolo(run_dir / "weights" / "best.pt").val(
        data=str(data), imgsz=IMGSZ, batch=16, rect=False, device="cpu", plots=False, verbose=False,
        project=str(run_dir.parent / "naive"), exist_ok=True).results_dict
    assert naive["metrics/mAP50-95(B)"] != reported["metrics"]["map50_95"]
