"""Every strategy on Ultralytics' YOLO26 models of the five box/label tasks (``yolo26n.yaml``, ``-seg``, ``-pose``,
``-obb``, ``-cls``), built from the yamls shipped with Ultralytics as the YOLO11 tests build theirs.

YOLO26 differs from YOLO11 where visionpeft reads the model: the heads are end-to-end (``end2end: True``: a
``one2one_`` copy of every prediction branch beside the one-to-many one), ``reg_max: 1`` (no DFL parameters),
new heads (``Segment26`` with ``Proto26`` and its nc-wide semantic branch, ``Pose26`` with ``RealNVP`` and
keypoint-sigma convs, ``OBB26``); like YOLO11 it ends its backbone in C2PSA attention. Checked here, per task:

* ``freeze: {n: N}`` freezes exactly what Ultralytics' trainer freezes for ``freeze=N`` (its substring rule
  from ``BaseTrainer._setup_train``, written out again below), the backbone length included;
* LoRA's default targets are every ``Conv`` block's conv outside the stem and the head, the attention's
  included; with the head opened up, both head branches (one-to-many and one-to-one) are adapted;
* ``head`` trains every tensor Ultralytics re-initialises for a new ``nc`` (both branches, Proto26's semantic
  conv): exactly the tensors whose shape depends on ``nc``;
* every method merges exactly (float64) into the plain Ultralytics architecture: adapters are moved by random
  noise first (a fresh adapter is the identity, so a no-op merge would pass otherwise), and the output must move
  by far more than the tolerance before the merge; the merged model saved as an Ultralytics checkpoint loads
  back as its task;
* every YOLO26 yaml shipped (``cfg/models/26``, every scale) names its task; YOLOE-26 is refused in one line;
* end to end on ``yolo26n.yaml``: one epoch of ``visionpeft train`` on generated images, ``visionpeft merge`` into
  a checkpoint plain Ultralytics loads (visionpeft blocked) and ``visionpeft predict``, merged or not.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("ultralytics")

from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.tasks import yaml_model_load  # noqa: E402

import visionpeft  # noqa: E402
from tests.strategies.test_lora_models import _run, _tensors  # noqa: E402
from visionpeft import ultralytics_tasks  # noqa: E402
from visionpeft.backends.ultralytics import (  # noqa: E402
    build_model,
    model_task,
    save_plain_checkpoint,
    ultralytics_spec,
    yaml_task,
)
from visionpeft.cli import main  # noqa: E402
from visionpeft.tasks.ultralytics.merge import load_run_model, merged_copy  # noqa: E402

from ..ultralytics_support import EVERY_METHOD, NO_VISIONPEFT, make_dataset  # noqa: E402

MODELS = {"detect": "yolo26n.yaml", "segment": "yolo26n-seg.yaml", "pose": "yolo26n-pose.yaml",
          "obb": "yolo26n-obb.yaml", "classify": "yolo26n-cls.yaml"}
METHODS = EVERY_METHOD
NC = 3
IMGSZ = 64
#: float64 merge tolerance, relative to the largest magnitude of each output tensor.
TOL = 1e-10
#: Smallest relative change the perturbed adapters must cause (many orders of magnitude above ``TOL``).
MOVED = 1e-4


@functools.cache
def _built(task: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return _calibrated(build_model(MODELS[task], nc=NC, task=task).double())


def _calibrated(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm statistics of the model's own activations, as a trained model has them. On initial statistics
    (mean 0, variance 1) a random deep network shrinks its signal layer by layer: the classifier's output then
    hardly depends on its input, nor on any adapter in the backbone, and the merge checks would check nothing."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for seed in range(2):
            model(torch.rand(4, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(100 + seed),
                             dtype=torch.float64))
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    return model.eval()


def fresh(task: str) -> torch.nn.Module:
    """A new plain float64 model of the task's yaml (a copy of one built model: building probes strides)."""
    return copy.deepcopy(_built(task))


def ultralytics_frozen(model: torch.nn.Module, freeze: int | list[int]) -> set[str]:
    """What Ultralytics' ``_setup_train`` freezes for ``freeze`` (its substring rule, as written there)."""
    idx = range(freeze) if isinstance(freeze, int) else freeze
    names = [f"model.{x}." for x in idx] + [".dfl"]
    return {k for k, _ in model.named_parameters() if any(x in k for x in names)}


def rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest difference of two output lists, each tensor's relative to its largest magnitude in ``b``."""
    assert len(a) == len(b) and a
    return max(float((u - v).abs().max() / v.abs().max().clamp_min(1e-12)) for u, v in zip(a, b) if v.numel())


def _perturb(model: torch.nn.Module, names: set[str], seed: int) -> None:
    """Move the named tensors by noise of 20% of their mean magnitude (0.05 for zero-initialised ones: LoRA's B,
    SSF's shift): a step a few updates could take, not one that blows the activations up over 14 layers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in names:
                scale = float(p.abs().mean())
                p.add_((0.2 * scale if scale > 0 else 0.05) * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _x() -> torch.Tensor:
    return torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- task, spec
@pytest.mark.parametrize("task", sorted(MODELS))
def test_yaml_names_its_task_and_spec(task):
    """The model's class gives its task; the spec sees every layer of the yaml (24, 11 for classify) as a block,
    the last as the head, and no ``.dfl`` (``reg_max: 1``: DFL is an ``Identity`` without parameters)."""
    model = _built(task)
    assert model_task(model) == task and type(model).__name__ == ultralytics_tasks.TASKS[task].model_class
    spec = ultralytics_spec(model)
    n = len(yaml_model_load(MODELS[task])["backbone"]) + len(yaml_model_load(MODELS[task])["head"])
    assert spec.blocks == tuple(f"model.{i}" for i in range(n)) and spec.head == (f"model.{n - 1}",)
    assert spec.always_frozen == () and not any(".dfl" in k for k in model.state_dict())


#: Every YOLO26 yaml's task by its name's suffix (Ultralytics' file naming; ``-p2``/``-p6``: more detect scales).
SUFFIX_TASK = {"": "detect", "-p2": "detect", "-p6": "detect", "-seg": "segment", "-pose": "pose", "-obb": "obb",
               "-cls": "classify", "-sem": "semantic", "-depth": "depth"}


def _yolo26_yamls() -> list[str]:
    """The file names of the YOLO26 yamls installed with Ultralytics (``cfg/models/26``; unscaled)."""
    from ultralytics.utils import ROOT

    return sorted(p.name for p in (ROOT / "cfg" / "models" / "26").glob("*.yaml"))


@pytest.mark.parametrize("name", _yolo26_yamls())
def test_every_yolo26_yaml_names_its_task(name):
    """Every YOLO26 yaml Ultralytics ships, at every scale, gives its task from the yaml alone (its output module:
    ``Segment26``, ``Pose26``, ``OBB26``, ``SemanticSegment``, ``Depth``); the ``n`` scale builds as that task's
    model class and is refused for another task. YOLOE-26 (open vocabulary, its own model class) is refused in one
    line instead of Ultralytics' assertion from inside the wrong model class."""
    stem = name.removesuffix(".yaml")
    if stem.startswith("yoloe-"):
        with pytest.raises(visionpeft.ConfigError, match="YOLO-World / YOLOE open-vocabulary model"):
            build_model(stem.replace("26", "26n") + ".yaml")
        return
    suffix = stem.removeprefix("yolo26")
    assert suffix in SUFFIX_TASK, f"a new YOLO26 yaml {name}: add its task to SUFFIX_TASK"
    task = SUFFIX_TASK[suffix]
    for scale in "nsmlx":
        assert yaml_task(yaml_model_load(f"yolo26{scale}{suffix}.yaml")) == task, scale
    model = build_model(f"yolo26n{suffix}.yaml", nc=NC if task != "depth" else None, task=task)
    assert model_task(model) == task and type(model).__name__ == ultralytics_tasks.TASKS[task].model_class
    other = "detect" if task != "detect" else "segment"
    with pytest.raises(visionpeft.ConfigError, match=f"of task '{task}', but the recipe's task trains '{other}'"):
        build_model(f"yolo26n{suffix}.yaml", task=other)


def _freeze_values(task: str) -> list[int | list[int]]:
    backbone = len(yaml_model_load(MODELS[task])["backbone"])
    last = len(_built(task).model) - 1
    return [1, 2, 3, backbone - 1, backbone, last, [0, 3, 5], [1, last]]


@pytest.mark.parametrize("task", sorted(MODELS))
def test_freeze_n_is_ultralytics_freeze(task):
    """``{method: freeze, n: N}`` freezes what Ultralytics' ``freeze=N`` freezes, for N up to the backbone's length
    (``model.0`` ... ``model.10``: the backbone of the yaml) and to the head, and for lists of indices."""
    for n in _freeze_values(task):
        model = fresh(task)
        expected = ultralytics_frozen(model, n)
        plan = visionpeft.apply(model, [{"method": "freeze", "n": n}])
        frozen = {k for k, _ in model.named_parameters()} - set(plan.trainable)
        assert frozen == expected, n
        assert {k for k, p in model.named_parameters() if not p.requires_grad} == expected
    backbone = len(yaml_model_load(MODELS[task])["backbone"])
    body = {k for k, _ in fresh(task).named_parameters() if int(k.split(".")[1]) < backbone}
    assert ultralytics_frozen(fresh(task), backbone) == body  # the rule's N = backbone: the whole backbone


# ------------------------------------------------------------------------------------------------ targets
def _convs(model: torch.nn.Module, prefix: str = "") -> dict[str, torch.nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and n.startswith(prefix)}


@pytest.mark.parametrize("task", sorted(MODELS))
def test_default_lora_targets_are_the_conv_blocks_attention_included(task):
    """Default LoRA: the conv of every ``Conv`` block outside the stem and the head (the C2PSA attention's qkv /
    proj / ffn convs included), depthwise ones skipped (the adapter would outgrow the layer)."""
    plain = _built(task)
    head = f"model.{len(plain.model) - 1}."
    expected = {n for n, m in _convs(plain).items()
                if n.endswith(".conv") and not n.startswith(("model.0.", head)) and m.groups == 1}
    model = fresh(task)
    plan = visionpeft.apply(model, [{"method": "lora", "rank": 4}])
    wrapped = {n for n, m in model.named_modules() if type(m).__name__ == "LoRAConv2d"}
    assert wrapped == expected and len(wrapped) > 30
    attention = {n for n in wrapped if ".attn." in n}
    assert {n.rsplit(".", 2)[1] for n in attention} == {"qkv", "proj"}
    count = sum(4 * (c.in_channels * c.kernel_size[0] * c.kernel_size[1] + c.out_channels)
                for c in (plain.get_submodule(n) for n in expected))
    assert plan.trainable_count == count


@pytest.mark.parametrize("task", ["detect", "segment", "pose", "obb"])
def test_lora_reaches_both_head_branches(task):
    """With the head opened to LoRA (spec ``head=()``), both end-to-end branches' stacked ``Conv`` layers are
    adapted alike: every ``one2one_cv<k>`` conv where its ``cv<k>`` twin is, and the prediction convs neither."""
    model = fresh(task)
    spec = dataclasses.replace(ultralytics_spec(model), head=())
    visionpeft.apply(model, [{"method": "lora", "rank": 2, "max_param_fraction": None}], spec=spec)
    head = f"model.{len(model.model) - 1}."
    wrapped = {n[len(head):] for n, m in model.named_modules()
               if type(m).__name__ == "LoRAConv2d" and n.startswith(head)}
    one2one = {n for n in wrapped if n.startswith("one2one_")}
    assert one2one and {n.removeprefix("one2one_") for n in one2one} == {
        n for n in wrapped if n.startswith("cv")}
    bare = {n[len(head):] for n in _convs(_built(task), head) if not n.endswith(".conv")}
    assert bare and not bare & wrapped  # cv3.<j>.2, cv4_kpts.<j>, proto.semseg.2, ...: re-initialised per nc


@pytest.mark.parametrize("task", sorted(MODELS))
def test_head_trains_what_a_new_nc_reinitialises(task):
    """Ultralytics transfers pretrained tensors by name and shape: those whose shape depends on ``nc`` start new.
    The ``head`` strategy trains all of them (both branches) and nothing outside the last layer."""
    small, large = build_model(MODELS[task], nc=NC, task=task), build_model(MODELS[task], nc=NC + 4, task=task)
    shapes = {k: v.shape for k, v in large.state_dict().items()}
    renewed = {k for k, v in small.named_parameters() if shapes[k] != v.shape}
    assert renewed
    if task != "classify":
        assert any(k.split(".")[2].startswith("one2one_") for k in renewed)  # the end-to-end branch too
    model = fresh(task)
    plan = visionpeft.apply(model, [{"method": "head"}])
    head = f"model.{len(model.model) - 1}."
    assert renewed <= set(plan.trainable)
    assert set(plan.trainable) == {k for k, _ in model.named_parameters() if k.startswith(head)}


# -------------------------------------------------------------------------------------------------- merge
#: Measured relative errors, printed at the end of the module (``pytest -s``) for the record.
ERRORS: dict[tuple[str, str], float] = {}


def _adapted(task: str, method: dict) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """The task's model with ``method`` (+ ``head`` for the adapter methods) applied and moved off the identity:
    the method's own tensors first (they alone must change the output), then the head's."""
    model = fresh(task)
    x = _x()
    base_out = _run(model, x)
    alone = method["method"] in ("head", "freeze")
    plan = visionpeft.apply(model, [method] if alone else [method, {"method": "head"}])
    own = {n for n, s in plan.trainable.items() if s == method["method"]}
    assert own and 0 < plan.trainable_count < plan.total
    assert rel_diff(_run(model, x), base_out) <= TOL, "a fresh strategy must not change the output"
    _perturb(model, own, seed=2)
    moved = _run(model, x)
    assert rel_diff(moved, base_out) > MOVED, "the method's tensors must change the output"
    if not alone:
        _perturb(model, set(plan.trainable) - own, seed=3)
        assert rel_diff(_run(model, x), moved) > MOVED, "the head's tensors must change the output"
    return model, _run(model, x)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m["method"])
@pytest.mark.parametrize("task", sorted(MODELS))
def test_merges_exactly_into_the_plain_architecture(task, method):
    """``visionpeft.merge`` leaves the plain Ultralytics model (no visionpeft module, the same state-dict keys, a
    strict load into a freshly built model of the yaml) computing the adapted outputs - every tensor of them, both
    head branches' raw predictions included - within ``TOL`` in float64, also after Ultralytics' ``fuse()``."""
    model, adapted = _adapted(task, method)
    x = _x()
    merged = visionpeft.merge(model)
    assert not any(type(m).__module__.startswith("visionpeft") for m in merged.modules())
    assert visionpeft.get_plan(merged) is None
    plain = fresh(task)
    assert list(merged.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(merged.state_dict(), strict=True)
    err = max(rel_diff(_run(merged, x), adapted), rel_diff(_run(plain, x), adapted))
    ERRORS[(task, method["method"])] = err
    assert err <= TOL
    fused = copy.deepcopy(plain).fuse(verbose=False)  # Conv+BN folding (predict/val/export); one branch left
    out, ref = _run(fused, x)[0], adapted[0]
    assert float((out - ref).abs().max() / ref.abs().max()) <= TOL


@pytest.mark.parametrize("task", sorted(MODELS))
def test_merged_checkpoint_names_its_task(task, tmp_path):
    """A merged YOLO26 model saved in Ultralytics' checkpoint layout loads back (restricted unpickling: every
    YOLO26 module is on the allow-list) as the task's model, for visionpeft and for plain Ultralytics' ``YOLO``,
    computing what the merged model computes with its weights rounded to float16 as the file stores them."""
    model, _ = _adapted(task, METHODS[0])
    merged = visionpeft.merge(model)
    path = save_plain_checkpoint(merged, tmp_path / "yolo26n-ft.pt")
    loaded = build_model(path, task=task)
    assert model_task(loaded) == task and YOLO(str(path)).task == task and visionpeft.get_plan(loaded) is None
    x = _x()
    assert rel_diff(_run(loaded.double().eval(), x), _run(copy.deepcopy(merged).half().double(), x)) <= TOL


# ------------------------------------------------------------------------------------------- end to end
_PLAIN = NO_VISIONPEFT + """
import torch
from ultralytics import YOLO
model = YOLO(sys.argv[1])
assert model.task == "detect", model.task
with torch.no_grad():
    y = model.model.double().eval()(torch.load(sys.argv[2]))
torch.save(y, sys.argv[3])  # every output: the post-processed boxes and both branches' raw maps
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch of LoRA + head on ``yolo26n.yaml`` through ``visionpeft train``: 4 + 2 generated 32 px images."""
    root = tmp_path_factory.mktemp("yolo26")
    box = ["0 0.5 0.5 0.5 0.5", "1 0.3 0.3 0.2 0.2"]
    data = make_dataset(root / "data", {f"{s}/{i}": box for s in ("train", "val") for i in range(4 if s == "train"
                                                                                                  else 2)}, ["a", "b"])
    recipe = root / "r.yaml"
    recipe.write_text(f"task: detect\nname: y26\nmodel: yolo26n.yaml\ndata: {data}\noutput: {root / 'runs'}\n"
                      "strategies: [{method: lora, rank: 4}, {method: head}]\nultralytics: {epochs: 1, "
                      f"imgsz: {IMGSZ}, batch: 2, nbs: 2, warmup_epochs: 0, workers: 0, device: cpu, amp: false, "
                      "optimizer: SGD, lr0: 0.01, mosaic: 0.0}\nseed: 0\n")
    assert main(["train", str(recipe)]) == 0
    (run_dir,) = (root / "runs").iterdir()
    return run_dir, data


def test_run_merges_into_a_plain_ultralytics_checkpoint(run, tmp_path):
    """``visionpeft merge`` of the YOLO26 run writes a checkpoint that plain Ultralytics loads as a detect model
    (visionpeft not importable); it computes what the trained adapted model computes, up to the float16 rounding
    of Ultralytics' checkpoint format: in float64 the in-memory merge equals the adapted model (1e-10 relative)
    and the file equals that merge rounded to float16 (1e-5 relative)."""
    run_dir, _ = run
    out = tmp_path / "merged.pt"
    assert main(["merge", str(run_dir), "-o", str(out)]) == 0
    adapted = load_run_model(run_dir).double()
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = _run(adapted, x)
    untrained = copy.deepcopy(adapted)
    for layer in (m for m in untrained.modules() if type(m).__name__ == "LoRAConv2d"):
        layer.lora_B.data.zero_()
    # The epoch moved the adapters by far more than the merge tolerance (best.pt holds the EMA in float16, where
    # the smallest of two steps' updates round to zero: enough of them are left).
    ERRORS[("detect run", "lora moved")] = rel_diff(_run(untrained, x), a)
    assert ERRORS[("detect run", "lora moved")] > 1e3 * TOL
    ERRORS[("detect run", "merge")] = rel_diff(_run(merged_copy(adapted), x), a)
    assert ERRORS[("detect run", "merge")] <= TOL
    half = _run(merged_copy(load_run_model(run_dir)).half().double(), x)  # the file holds float16 weights
    torch.save(x, tmp_path / "x.pt")
    proc = subprocess.run([sys.executable, "-c", _PLAIN, str(out), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plain = _tensors(torch.load(tmp_path / "y.pt"))
    ERRORS[("detect run", "file")] = rel_diff(plain, half)
    ERRORS[("detect run", "file vs adapted")] = rel_diff(plain, a)  # the float16 rounding, for the record
    assert ERRORS[("detect run", "file")] <= 1e-5
    assert model_task(build_model(out)) == "detect"  # and visionpeft reads it back as a plain detect model
    assert visionpeft.get_plan(build_model(out)) is None


def test_run_predicts_the_same_merged_or_not(run, tmp_path):
    """``visionpeft predict`` on the YOLO26 run: every image answered, boxes in JSON, the same top confidences
    with the adapters merged (float16 file) or applied."""
    run_dir, data = run
    folder = data.parent / "images" / "val"
    docs = {}
    for merged in ("true", "false"):
        assert main(["predict", str(run_dir), f"source={folder}", "conf=0.0001", f"merged={merged}",
                     f"out={tmp_path / merged}"]) == 0
        docs[merged] = json.loads((tmp_path / merged / "predictions.json").read_text())
    on, off = docs["true"], docs["false"]
    assert on["ultralytics_task"] == "detect" and on["merged"] is True and off["merged"] is False
    assert [r["file"] for r in on["images"]] == [r["file"] for r in off["images"]] == sorted(
        str(p) for p in folder.iterdir())
    found = [p for r in on["images"] for p in r["predictions"]]
    assert found and all("box" in p for p in found)
    top = [sorted((p["confidence"] for r in d["images"] for p in r["predictions"]), reverse=True)[:5]
           for d in (on, off)]
    assert top[0] == pytest.approx(top[1], rel=1e-2)


def teardown_module() -> None:
    for (task, method), err in sorted(ERRORS.items()):
        print(f"yolo26 {task:10s} {method:16s} max relative difference {err:.2e}")
