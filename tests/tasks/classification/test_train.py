"""Classification task on a toy dataset with timm's tiny ``test_efficientnet`` (seconds per run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from visionpeft.data.toy import make_toy_imagefolder
from visionpeft.recipe import parse_recipe
from visionpeft.tasks.classification import TASK
from visionpeft.tasks.classification.trainer import Trainer

from ...fixtures import killed_at_epoch

DETERMINISTIC = {"img_size": 32, "random_resized_crop": False, "hflip": 0.0, "color_jitter": 0.0}



@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_imagefolder(tmp_path_factory.mktemp("toy"), classes=3, train_per_class=12,
                                val_per_class=6, size=24, test_per_class=4)


def recipe(toy: Path, out: Path, strategies: list, **sections):
    doc = {
        "name": "toy", "model": "test_efficientnet", "data": str(toy), "output": str(out), "seed": 0,
        "strategies": strategies,
        "train": {"epochs": 2, "batch_size": 8, "workers": 0, "progress": False, "label_smoothing": 0.0,
                  **sections.pop("train", {})},
        "optim": {"lr": 0.01, "head_lr": 0.05, "warmup_epochs": 0, **sections.pop("optim", {})},
        "augment": {**DETERMINISTIC, **sections.pop("augment", {})},
        **sections,
    }
    return parse_recipe(doc)


def test_run_dir_learning_and_frozen_parts(toy, tmp_path):
    r = recipe(toy, tmp_path, [{"method": "lora", "rank": 2}, {"method": "head"}], train={"epochs": 3})
    from visionpeft.tasks.classification.model import build_adapted

    before = build_adapted(r, r.strategies, 3)[0].state_dict()
    res = TASK.train(r, list(r.strategies), tmp_path / "run", "lora")
    run = tmp_path / "run"
    for name in ("recipe.yaml", "plan.json", "data.json", "metrics.json", "adapter/adapter.safetensors",
                 "adapter/adapter.json", "checkpoints/best.safetensors", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    plan = json.loads((run / "plan.json").read_text())
    assert res.trainable_params == plan["trainable_count"] < res.total_params
    # Exactly the planned tensors changed; frozen weights and frozen BN statistics did not.
    _, after_model, _, _ = TASK.load_run(run)
    after = after_model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = set(plan["trainable"])
    assert changed and changed <= trainable
    assert any("lora" in k for k in changed) and any(k.startswith("classifier") for k in changed)
    assert any(k.endswith("running_mean") for k in before) and not any("running" in k for k in changed)
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 3 and metrics["adapter_bytes"] == res.adapter_bytes > 0


def test_full_fine_tuning_learns_the_toy_task(toy, tmp_path):
    r = recipe(toy, tmp_path, [{"method": "full"}], train={"epochs": 4}, optim={"lr": 0.01, "head_lr": 0.01})
    res = TASK.train(r, [{"method": "full"}], tmp_path / "run", "full")
    assert res.metrics["top1"] >= 0.75, res.metrics  # chance is 1/3 on 3 classes
    assert res.trainable_params == res.total_params


def test_tensorboard_values_match_metrics(toy, tmp_path):
    r = recipe(toy, tmp_path, [{"method": "head"}])
    TASK.train(r, list(r.strategies), tmp_path / "run", "probe")
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    history = metrics["history"]
    top1 = [e.value for e in acc.Scalars("metrics/top1")]
    assert top1 == pytest.approx([h["top1"] for h in history])
    # x = training batches so far: toy has 36 training images in batches of 8 -> 5 batches per epoch.
    assert [e.step for e in acc.Scalars("metrics/top1")] == [5, 10]
    assert [(e.step, e.value) for e in acc.Scalars("progress/epoch")] == [(5, 1), (10, 2)]
    assert acc.Scalars("loss/train")[0].step == 1
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/val", "optim/lr_head", "metrics/top5", "perf/img_per_s", "perf/peak_mem_mb",
            "perf/step_time_s", "val_class/class_0", "result/top1"} <= tags
    assert not any(t.startswith(("hparam/", "params/", "train/", "val/", "lr/")) for t in tags)
    # The kept model's evaluation (the best epoch's validation) is a result/* point at the last step.
    (final,) = acc.Scalars("result/top1")
    assert final.step == 10 and final.value == pytest.approx(metrics["best_metrics"]["top1"])
    lrs = [e.value for e in acc.Scalars("optim/lr_head")]
    assert 0.04 < lrs[0] <= 0.05 and lrs[-1] < lrs[0]  # head_lr (not lr = 0.01), cosine-decaying
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")


def test_optimizer_sees_only_trainable_params_grouped_by_owner(toy, tmp_path, monkeypatch):
    seen = {}
    original = Trainer.__init__

    def spy(self, model, optimizer, *args, **kwargs):
        seen["groups"] = [(g["owner"], g["lr"], len(g["params"])) for g in optimizer.param_groups]
        seen["ids"] = {id(p) for g in optimizer.param_groups for p in g["params"]}
        seen["trainable"] = {id(p) for p in model.parameters() if p.requires_grad}
        original(self, model, optimizer, *args, **kwargs)

    monkeypatch.setattr(Trainer, "__init__", spy)
    r = recipe(toy, tmp_path, [{"method": "bitfit"}, {"method": "head"}], train={"epochs": 1})
    TASK.train(r, list(r.strategies), tmp_path / "run", "bitfit")
    assert seen["ids"] == seen["trainable"]
    owners = {o: lr for o, lr, _ in seen["groups"]}
    assert owners == {"bitfit": pytest.approx(0.01), "head": pytest.approx(0.05)}


def test_eval_and_merge_reproduce_validation(toy, tmp_path):
    import timm

    r = recipe(toy, tmp_path, [{"method": "lora", "rank": 2}, {"method": "head"}])
    res = TASK.train(r, list(r.strategies), tmp_path / "run", "lora")
    again = TASK.evaluate(tmp_path / "run", "val")
    assert again["top1"] == res.metrics["top1"] and again["top5"] == res.metrics["top5"]
    test = TASK.evaluate(tmp_path / "run", "test")
    assert 0.0 <= test["top1"] <= 1.0
    out = TASK.merge(tmp_path / "run", tmp_path / "merged.safetensors")
    plain = timm.create_model("test_efficientnet", num_classes=3)
    plain.load_state_dict(load_file(str(out)), strict=True)
    _, adapted, _, _ = TASK.load_run(tmp_path / "run")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), adapted.eval()(x), rtol=1e-4, atol=1e-5)
    assert json.loads(out.with_suffix(".json").read_text())["num_classes"] == 3


def test_resume_continues_a_killed_run_exactly(toy, tmp_path, monkeypatch):
    strategies = [{"method": "lora", "rank": 2}, {"method": "head"}]
    r = recipe(toy, tmp_path, strategies, train={"epochs": 3})
    TASK.train(r, strategies, tmp_path / "whole", "whole")
    with killed_at_epoch(monkeypatch, 2):
        TASK.train(r, strategies, tmp_path / "killed", "whole")
    assert not (tmp_path / "killed" / "adapter").exists()
    ckpts = tmp_path / "killed" / "checkpoints"
    stale = [ckpts / ".last.pt.0a1b2c3d.tmp", ckpts / ".best.safetensors.ffffffff.tmp"]
    for path in stale:  # 0-byte temporaries a hard kill (SIGKILL) leaves while writing the checkpoints
        path.write_bytes(b"")
    TASK.resume(tmp_path / "killed")
    assert not any(p.exists() for p in stale) and not list(ckpts.glob(".*"))  # issue 23 #10
    a = load_file(str(tmp_path / "whole" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "killed" / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    hist = metrics["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]  # counted from 1, as the log ("epoch 2/3") counts
    best = max(hist, key=lambda h: h["top1"])  # the first epoch with the highest top1 (CheckpointHook's ">")
    assert metrics["extra"]["best_epoch"] == best["epoch"] and metrics["extra"]["epoch_base"] == 1


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_rejected_resumes_change_nothing(toy, tmp_path):
    """No checkpoint, a torn checkpoint, another rank, other classes: a clear error and the run dir untouched."""
    from visionpeft.errors import ConfigError

    r = recipe(toy, tmp_path, [{"method": "lora", "rank": 2}, {"method": "head"}], train={"epochs": 1})
    run = tmp_path / "run"
    TASK.train(r, list(r.strategies), run, "lora")
    before = _files(run)
    with pytest.raises(ConfigError, match=r"strategies cannot change when resuming"):
        TASK.resume(run, ["strategies.0.rank=8"])
    with pytest.raises(ConfigError, match=r"strategies cannot change when resuming"):
        TASK.resume(run, ["strategies.0.method=bitfit"])
    other = make_toy_imagefolder(tmp_path / "toy4", classes=4, train_per_class=4, val_per_class=2, size=24)
    for override in (f"data={other}", "augment.img_size=64", "dataset.val_split=train", "train.epochs=2",
                     "optim.lr=0.5", "train.batch_size=2"):
        with pytest.raises(ConfigError, match=rf"{override.split('=')[0]} cannot change when resuming"):
            TASK.resume(run, [override])
    # A finished run: nothing to resume (a resume cannot extend the run's LR schedule).
    with pytest.raises(ConfigError, match=r"nothing to resume: the run finished all 1 epochs.*start a new run"):
        TASK.resume(run, ["train.workers=0"])
    assert _files(run) == before
    last = run / "checkpoints" / "last.pt"
    good = last.read_bytes()
    for torn in (b"", good[: len(good) // 2]):
        last.write_bytes(torn)
        with pytest.raises(ConfigError, match=rf"last.pt: unreadable checkpoint \({len(torn)} bytes"):
            TASK.resume(run)
    last.unlink()
    with pytest.raises(ConfigError, match="no checkpoints/last.pt to resume from"):
        TASK.resume(run)
    assert {k: v for k, v in _files(run).items() if k != "checkpoints/last.pt"} == {
        k: v for k, v in before.items() if k != "checkpoints/last.pt"}


def test_resume_is_not_a_recipe_key(toy, tmp_path):
    from visionpeft.errors import ConfigError

    for train in ({"resume": True}, {"resume_dir": str(tmp_path)}):
        with pytest.raises(ConfigError, match="visionpeft resume"):
            recipe(toy, tmp_path, [{"method": "head"}], train=train)
    # Run directories of older versions recorded the defaults: still read.
    assert recipe(toy, tmp_path, [{"method": "head"}], train={"resume": False, "resume_dir": None}).train.epochs == 2
    import yaml

    from visionpeft.cli import main

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": "test_efficientnet", "data": str(toy), "output": str(tmp_path / "o"),
                                    "strategies": [{"method": "head"}]}))
    assert main(["train", str(path), "train.resume=true"]) == 2  # the example: was accepted and ignored
    assert not (tmp_path / "o").exists()


def test_eval_reproduces_bf16_validation_and_merge_records_preprocessing(toy, tmp_path):
    r = recipe(toy, tmp_path, [{"method": "lora", "rank": 2}, {"method": "head"}], train={"amp": "bf16"},
               augment={"crop_pct": 1.0}, dataset={"test_split": "val"})
    res = TASK.train(r, list(r.strategies), tmp_path / "run", "bf16")
    again = TASK.evaluate(tmp_path / "run", "val")
    assert again["top1"] == res.metrics["top1"] and again["loss"] == json.loads(
        (tmp_path / "run" / "metrics.json").read_text())["best_metrics"]["loss"]
    assert TASK.evaluate(tmp_path / "run", "test") == again  # dataset.test_split names the split 'test' means
    out = TASK.merge(tmp_path / "run", tmp_path / "merged.safetensors")
    cfg = json.loads(out.with_suffix(".json").read_text())["data_config"]
    assert cfg["input_size"] == [3, 32, 32] and cfg["crop_pct"] == 1.0  # the run's, not timm's 224 px / 0.875
    import timm

    plain = timm.create_model("test_efficientnet", num_classes=3)
    assert timm.data.resolve_data_config(model=plain)["input_size"] != (3, 32, 32)
    tf = timm.data.create_transform(**cfg)  # rebuilds the run's eval transform
    assert list(tf.transforms[1].size) == [32, 32]


def test_eval_of_a_cache_features_run_reproduces_its_validation(toy, tmp_path):
    """Training validated the head on float32 backbone features under bf16 autocast: eval does the same."""
    r = recipe(toy, tmp_path, [{"method": "head"}], train={"cache_features": True, "amp": "bf16"})
    TASK.train(r, list(r.strategies), tmp_path / "run", "cached")
    best = json.loads((tmp_path / "run" / "metrics.json").read_text())["best_metrics"]
    again = TASK.evaluate(tmp_path / "run", "val")
    assert again["loss"] == best["loss"] and again["top1"] == best["top1"]


def test_cache_features_matches_uncached_head_training(toy, tmp_path):
    plain = recipe(toy, tmp_path, [{"method": "head"}], train={"epochs": 2, "clip_grad": None})
    cached = recipe(toy, tmp_path, [{"method": "head"}], train={"epochs": 2, "clip_grad": None,
                                                                  "cache_features": True})
    a = TASK.train(plain, [{"method": "head"}], tmp_path / "plain", "probe")
    b = TASK.train(cached, [{"method": "head"}], tmp_path / "cached", "probe")
    wa = load_file(str(tmp_path / "plain" / "adapter" / "adapter.safetensors"))
    wb = load_file(str(tmp_path / "cached" / "adapter" / "adapter.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    assert a.metrics["top1"] == b.metrics["top1"]


def test_cache_features_refuses_inexact_settings(toy, tmp_path):
    from visionpeft.errors import ConfigError

    r = recipe(toy, tmp_path, [{"method": "head"}], train={"cache_features": True},
               augment={"random_resized_crop": True})
    with pytest.raises(ConfigError, match="cache_features.*train transform is random"):
        TASK.train(r, [{"method": "head"}], tmp_path / "run", "probe")


def test_frozen_prefix_runs_without_autograd(toy, tmp_path):
    """freeze=N with the rest trainable: the prefix output carries no graph (no activations stored)."""
    from visionpeft.tasks.classification.model import build_adapted

    r = recipe(toy, tmp_path, [{"method": "freeze", "n": 3}])
    model, spec, plan, _ = build_adapted(r, list(r.strategies), 3)
    last_frozen = model.get_submodule(spec.blocks[2])
    seen = {}
    last_frozen.register_forward_hook(lambda m, i, o: seen.update(out=o))
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert seen["out"].grad_fn is None and not seen["out"].requires_grad
    assert all(not p.requires_grad for p in last_frozen.parameters())
    assert any(p.grad is not None for p in model.get_submodule(spec.blocks[3]).parameters())


def test_early_stopping_and_ema(toy, tmp_path):
    r = recipe(toy, tmp_path, [{"method": "head"}], train={"epochs": 5, "patience": 1},
               optim={"lr": 1e-12, "head_lr": 1e-12, "min_lr": 0.0, "warmup_lr": 0.0})
    res = TASK.train(r, [{"method": "head"}], tmp_path / "stop", "probe")
    assert res.extra["epochs_run"] == 2 and res.extra["best_epoch"] == 1  # counted from 1
    e = recipe(toy, tmp_path, [{"method": "head"}], train={"epochs": 1, "ema": True, "ema_decay": 0.5})
    res = TASK.train(e, [{"method": "head"}], tmp_path / "ema", "probe")
    assert TASK.evaluate(tmp_path / "ema", "val")["top1"] == res.metrics["top1"]


def test_bf16_autocast_and_grad_accumulation_on_cpu(toy, tmp_path, monkeypatch):
    from visionpeft.tasks.classification import trainer as trainer_mod

    steps = {"n": 0}
    original = Trainer._update

    def counting(self):
        steps["n"] += 1
        original(self)

    monkeypatch.setattr(Trainer, "_update", counting)
    r = recipe(toy, tmp_path, [{"method": "head"}], train={"epochs": 1, "amp": "bf16", "grad_accum": 2})
    assert trainer_mod.autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert trainer_mod.autocast_dtype("auto", torch.device("cpu")) is None  # CPU bf16 is opt-in
    res = TASK.train(r, [{"method": "head"}], tmp_path / "run", "probe")
    assert 0.0 <= res.metrics["top1"] <= 1.0
    assert steps["n"] == 3  # 36 images / batch 8 = 5 micro-batches -> updates after 2, 4 and the last
