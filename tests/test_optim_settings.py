"""Per-strategy optimizer settings: lr / weight decay per owner, no_weight_decay, VPT prompts, LoRA+, defaults."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import visionpeft
from visionpeft.errors import ConfigError
from visionpeft.optim_settings import DEFAULT_LR, default_lr, shared_lr_problem
from visionpeft.recipe.classification import OptimSection
from visionpeft.tasks.classification.optim import build_optimizer, build_scheduler, param_groups


def vit(seed: int = 0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model("test_vit", num_classes=3)


def groups_of(model, optim: OptimSection) -> dict[str, dict]:
    spec = visionpeft.api.get_state(model).spec
    heads = tuple(spec.extra.get("head_modules") or spec.head)
    gs = param_groups(model, visionpeft.get_plan(model), heads, optim)
    by_param = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for g in gs:
        for p in g["params"]:
            by_param[names[id(p)]] = {"lr": g["lr"] * g["lr_scale"], "wd": g["weight_decay"], "owner": g["owner"]}
    return by_param


def test_entry_lr_and_weight_decay_override_recipe_head_keeps_head_lr():
    model = vit()
    visionpeft.apply(model, [{"method": "vpt", "tokens": 2, "mode": "deep", "lr": 5e-3},
                             {"method": "lora", "rank": 2, "lr": 2e-4, "weight_decay": 0.3},
                             {"method": "head"}])
    g = groups_of(model, OptimSection(lr=1e-3, head_lr=7e-3, weight_decay=0.05))
    assert g["vpt.prompts"] == {"lr": pytest.approx(5e-3), "wd": 0.0, "owner": "vpt"}  # prompts: no decay
    lora = [n for n in g if n.endswith("lora_A")]
    assert lora and all(g[n]["lr"] == pytest.approx(2e-4) and g[n]["wd"] == 0.3 for n in lora)
    assert g["head.weight"] == {"lr": pytest.approx(7e-3), "wd": 0.05, "owner": "head"}
    assert g["head.bias"]["wd"] == 0.0


def test_timm_no_weight_decay_respected_under_full_finetuning():
    model = vit()
    assert {"pos_embed", "cls_token"} <= set(model.no_weight_decay())
    visionpeft.apply(model, [{"method": "full", "weight_decay": 0.2}])
    g = groups_of(model, OptimSection(weight_decay=0.05))
    assert g["pos_embed"]["wd"] == 0.0 and g["cls_token"]["wd"] == 0.0
    assert g["blocks.0.attn.qkv.weight"]["wd"] == 0.2 and g["blocks.0.attn.qkv.bias"]["wd"] == 0.0
    # No lr anywhere: full fine-tuning runs at its own default, the classifier at the head default.
    assert g["blocks.0.attn.qkv.weight"]["lr"] == pytest.approx(DEFAULT_LR["full"])
    assert g["head.weight"]["lr"] == pytest.approx(DEFAULT_LR["head"])


def test_vpt_weight_decay_can_be_set():
    model = vit()
    visionpeft.apply(model, [{"method": "vpt", "tokens": 2, "weight_decay": 0.1}, {"method": "head"}])
    assert groups_of(model, OptimSection(weight_decay=0.05))["vpt.prompts"]["wd"] == 0.1


def test_method_defaults_full_much_lower_than_adapters():
    assert DEFAULT_LR["full"] * 5 <= min(DEFAULT_LR[m] for m in ("lora", "vpt", "bitfit", "norm"))
    assert default_lr("lora", "sgd") == pytest.approx(10 * DEFAULT_LR["lora"])
    model = vit()
    visionpeft.apply(model, [{"method": "lora", "rank": 2}, {"method": "head"}])
    g = groups_of(model, OptimSection())
    assert g["blocks.0.attn.qkv.lora_A"]["lr"] == pytest.approx(DEFAULT_LR["lora"])
    # A recipe-wide optim.lr still applies to every owner without its own lr (single runs).
    g = groups_of(model, OptimSection(lr=4e-4))
    assert g["blocks.0.attn.qkv.lora_A"]["lr"] == pytest.approx(4e-4) and g["head.weight"]["lr"] == 4e-4


@pytest.mark.parametrize("ratio", [None, 16.0])
def test_loraplus_ratio_on_lora_b(ratio):
    model = vit()
    visionpeft.apply(model, [{"method": "lora", "rank": 2, "lr": 1e-3, "loraplus_lr_ratio": ratio},
                             {"method": "head", "lr": 2e-2}])
    g = groups_of(model, OptimSection(weight_decay=0.05))
    b = [n for n in g if n.endswith(".lora_B")]
    assert b and all(g[n]["lr"] == pytest.approx(1e-3 * (ratio or 1.0)) for n in b)
    assert all(g[n]["lr"] == pytest.approx(1e-3) for n in g if n.endswith(".lora_A"))
    assert all(g[n]["owner"] == ("lora/lora_B" if ratio else "lora") and g[n]["wd"] == 0.05 for n in b)
    assert g["head.weight"]["lr"] == pytest.approx(2e-2)


def test_loraplus_ratio_reaches_dora_b_only():
    model = vit()
    visionpeft.apply(model, [{"method": "dora", "rank": 2, "lr": 1e-3, "loraplus_lr_ratio": 8}, {"method": "head"}])
    g = groups_of(model, OptimSection(weight_decay=0.05))
    b = [n for n in g if n.endswith(".lora_B")]
    assert b and all(g[n]["lr"] == pytest.approx(8e-3) and g[n]["owner"] == "dora/lora_B" for n in b)
    others = [n for n in g if n.endswith((".lora_A", ".lora_magnitude"))]
    assert others and all(g[n]["lr"] == pytest.approx(1e-3) for n in others)


@pytest.mark.parametrize("method", ["loha", "lokr", "ssf", "adaptformer", "dora"])
def test_every_registered_method_has_a_documented_default_lr(method):
    from visionpeft.optim_settings import DEFAULT_LR
    from visionpeft.strategies.registry import available

    assert set(available()) <= set(DEFAULT_LR) and DEFAULT_LR[method] > 0


def test_scheduler_keeps_ratios_between_groups():
    model = vit()
    visionpeft.apply(model, [{"method": "lora", "rank": 2, "lr": 1e-3, "loraplus_lr_ratio": 4},
                             {"method": "head", "lr": 1e-2}])
    optim = OptimSection(warmup_epochs=0, min_lr=0.0)
    spec = visionpeft.api.get_state(model).spec
    groups = param_groups(model, visionpeft.get_plan(model), tuple(spec.extra["head_modules"]), optim)
    opt = build_optimizer(groups, optim)
    build_scheduler(opt, optim, epochs=2, updates_per_epoch=5)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["head"] == pytest.approx(1e-2) and lrs["lora"] == pytest.approx(1e-3)
    assert lrs["lora/lora_B"] == pytest.approx(4e-3)


def test_compare_refuses_one_lr_for_full_and_adapters(tmp_path):
    runs = {"full": [{"method": "full"}], "lora": [{"method": "lora"}, {"method": "head"}]}
    msg = shared_lr_problem(runs, 1e-3)
    assert msg and msg.startswith("optim.lr:") and "full.full" in msg and "lora.lora" in msg
    assert shared_lr_problem(runs, None) is None
    own = {"full": [{"method": "full", "lr": 1e-4}], "lora": [{"method": "lora"}, {"method": "head"}]}
    assert shared_lr_problem(own, 1e-3) is None  # only the lora run uses optim.lr
    from visionpeft.recipe import parse_recipe
    from visionpeft.tasks.compare import run_compare

    doc = {"name": "c", "model": "test_vit", "data": str(tmp_path), "output": str(tmp_path),
           "compare": {"lora": [{"method": "lora"}, {"method": "head"}]}, "optim": {"lr": 1e-3}}
    with pytest.raises(ConfigError, match="optim.lr: one rate"):
        run_compare(parse_recipe(doc))  # refused before any model or data is touched


def test_compare_full_entry_sets_the_baseline(tmp_path):
    from visionpeft.recipe import parse_recipe

    doc = {"name": "c", "model": "test_vit", "data": str(tmp_path),
           "compare": {"full": [{"method": "full", "lr": 3e-5}], "probe": [{"method": "head"}]}}
    runs = parse_recipe(doc).compare_runs()
    assert list(runs) == ["full", "probe"] and runs["full"] == [{"method": "full", "lr": 3e-5}]
    doc["compare"]["full"] = [{"method": "lora"}, {"method": "head"}]
    with pytest.raises(ConfigError, match="compare.full: the baseline must be exactly one full strategy"):
        parse_recipe(doc)


def test_detection_groups_split_per_owner_keep_ultralytics_kinds():
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.nn.tasks import DetectionModel

    from visionpeft.tasks.ultralytics.trainer import split_groups_by_owner

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    strategies = [{"method": "lora", "rank": 2, "targets": ["model.2.cv1.conv"], "lr": 2e-3,
                   "loraplus_lr_ratio": 8, "weight_decay": 0.0},
                  {"method": "bitfit"}, {"method": "head", "lr": 5e-2}]
    plan = visionpeft.apply(model, strategies)
    opt = BaseTrainer.build_optimizer(SimpleNamespace(), model, name="SGD", lr=0.01, momentum=0.9, decay=5e-4)
    configs = visionpeft.api.get_state(model).configs
    groups = split_groups_by_owner(opt.param_groups, model, plan, configs, base_lr=0.01, wd_scale=2.0)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {names[id(p)]: g for g in groups for p in g["params"]}
    assert set(seen) == set(plan.trainable)  # frozen tensors dropped, nothing lost
    a, b = "model.2.cv1.conv.lora_A", "model.2.cv1.conv.lora_B"
    assert seen[a]["lr"] == pytest.approx(2e-3) and seen[a]["param_group"] == "weight"
    assert seen[a]["weight_decay"] == 0.0  # the entry's weight decay (0) replaces Ultralytics' scaled 5e-4
    assert seen[b]["lr"] == pytest.approx(16e-3) and seen[b]["owner"] == "lora/lora_B"
    bias = next(n for n, o in plan.trainable.items() if o == "bitfit")
    assert seen[bias]["param_group"] == "bias" and seen[bias]["lr"] == pytest.approx(0.01)
    head_w = next(n for n, o in plan.trainable.items() if o == "head" and n.endswith("conv.weight"))
    assert seen[head_w]["lr"] == pytest.approx(5e-2) and seen[head_w]["weight_decay"] == pytest.approx(5e-4)
    assert all(len(g["params"]) for g in groups)


def _expected_decay(name: str, p: torch.nn.Parameter, recipe_wd: float, entry_wd: float | None = None) -> float:
    """The documented rule, written out independently: biases and 1-D tensors are never decayed."""
    if p.ndim <= 1 or name.endswith(".bias"):
        return 0.0
    return entry_wd if entry_wd is not None else recipe_wd


@pytest.mark.parametrize("strategies", [
    [{"method": "ssf"}, {"method": "head"}],                       # the issue's example: SSF scale / shift
    [{"method": "lora", "rank": 2}, {"method": "norm"}],           # BN affines owned by norm, LoRA matrices
    [{"method": "full"}],                                          # every kind of tensor
    [{"method": "bitfit", "weight_decay": 0.1}, {"method": "ssf", "weight_decay": 0.2}],  # entry decay, 1-D only
], ids=["ssf+head", "lora+norm", "full", "entry-weight-decay"])
def test_detection_and_classification_decay_the_same_tensors(strategies):
    """Issue 23 #3: detection decayed SSF's 1-D scale and shift (112 of 112 at AdamW 0.05); one rule for both tasks."""
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.nn.tasks import DetectionModel

    from visionpeft.optim_settings import param_settings
    from visionpeft.tasks.ultralytics.trainer import split_groups_by_owner

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    plan = visionpeft.apply(model, strategies)
    configs = visionpeft.api.get_state(model).configs
    wd, scale = 0.05, 0.5
    opt = BaseTrainer.build_optimizer(SimpleNamespace(), model, name="AdamW", lr=1e-3, momentum=0.9, decay=wd * scale)
    groups = split_groups_by_owner(opt.param_groups, model, plan, configs, base_lr=1e-3, wd_scale=scale)
    params = dict(model.named_parameters())
    names = {id(p): n for n, p in params.items()}
    detection = {names[id(p)]: g["weight_decay"] / scale for g in groups for p in g["params"]}
    classification = {n: s.weight_decay for n, s in param_settings(model, plan, configs, lr=1e-3,
                                                                     weight_decay=wd).items()}
    entry = {c.method: c.weight_decay for c in configs}
    expected = {n: _expected_decay(n, params[n], wd, entry.get(o)) for n, o in plan.trainable.items()}
    assert set(detection) == set(classification) == set(expected)
    for n in expected:
        assert detection[n] == pytest.approx(expected[n]) and classification[n] == pytest.approx(expected[n]), n
    one_d = [n for n in expected if params[n].ndim <= 1]
    assert one_d and all(detection[n] == 0.0 for n in one_d)
    if strategies[0]["method"] == "ssf":
        ssf = [n for n, o in plan.trainable.items() if o == "ssf"]
        assert len(ssf) == 88 and all(detection[n] == 0.0 for n in ssf)


def test_detection_rates_follow_the_same_rule_as_classification():
    """Entry lr and LoRA+ resolve identically (detection's recipe-wide rate is Ultralytics' lr0)."""
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.nn.tasks import DetectionModel

    from visionpeft.optim_settings import param_settings
    from visionpeft.tasks.ultralytics.trainer import split_groups_by_owner

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    plan = visionpeft.apply(model, [{"method": "lora", "rank": 2, "loraplus_lr_ratio": 4, "lr": 3e-3},
                                    {"method": "ssf"}, {"method": "head", "lr": 2e-2}])
    configs = visionpeft.api.get_state(model).configs
    opt = BaseTrainer.build_optimizer(SimpleNamespace(), model, name="AdamW", lr=1e-3, momentum=0.9, decay=0.0)
    groups = split_groups_by_owner(opt.param_groups, model, plan, configs, base_lr=1e-3, wd_scale=1.0)
    names = {id(p): n for n, p in model.named_parameters()}
    detection = {names[id(p)]: g["lr"] for g in groups for p in g["params"]}
    classification = {n: s.lr for n, s in param_settings(model, plan, configs, lr=1e-3, weight_decay=0.0).items()}
    assert detection == pytest.approx(classification)
    assert {round(v, 8) for v in detection.values()} == {0.003, 0.012, 0.001, 0.02}  # lora A, lora B x4, ssf, head
