"""PeftDetectionTrainer inside Ultralytics' real training loop (coco8 copied to tmp, 64 px, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("ultralytics")

from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402

import visionpeft  # noqa: E402
from visionpeft.errors import ConfigError, PlanViolationError  # noqa: E402
from visionpeft.tasks.ultralytics.merge import merged_copy
from visionpeft.tasks.ultralytics.trainer import PeftDetectionTrainer  # noqa: E402

from ..ultralytics_support import offline_args  # noqa: E402

STRATEGIES = [{"method": "freeze", "n": 2}, {"method": "lora", "rank": 4, "alpha": 8}, {"method": "head"}]


class Recorder:
    """Snapshots taken through Ultralytics callbacks."""

    def __init__(self) -> None:
        self.initial: dict[str, torch.Tensor] = {}
        self.groups: list[tuple[str, set[int]]] = []
        self.bn_eval: set[str] = set()
        self.frozen: set[str] = set()

    def pretrain_end(self, tr) -> None:
        model = tr.model
        self.initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.groups = [(g.get("param_group", "?"), {id(p) for p in g["params"]}) for g in tr.optimizer.param_groups]
        self.frozen = {n for n, p in model.named_parameters() if not p.requires_grad}

    def batch_end(self, tr) -> None:
        bns = {n: m for n, m in tr.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
        self.bn_eval = {n for n, m in bns.items() if not m.training}


def _train(trainer_cls, args, **extra_callbacks):
    rec = Recorder()
    trainer = trainer_cls(overrides=args)
    trainer.add_callback("on_pretrain_routine_end", rec.pretrain_end)
    trainer.add_callback("on_train_batch_end", rec.batch_end)
    for event, fn in extra_callbacks.items():
        trainer.add_callback(event, fn)
    trainer.train()
    return trainer, rec


@pytest.fixture(scope="module")
def lora_run(coco8, weights, tmp_path_factory):
    project = tmp_path_factory.mktemp("runs")
    cls = PeftDetectionTrainer.configure(STRATEGIES, run_dir=project / "lora")
    args = offline_args(project, model=weights, data=str(coco8), name="lora", epochs=2)
    return _train(cls, args)


def test_plan_holds_and_optimizer_has_only_trainables(lora_run):
    trainer, rec = lora_run
    model, plan = trainer.model, trainer.vp_plan
    plan.check(model)
    names = {id(p): n for n, p in model.named_parameters()}
    in_opt = {names[i] for _, ids in rec.groups for i in ids}
    assert in_opt == set(plan.trainable)
    assert rec.frozen == {n for n in names.values() if n not in plan.trainable}
    # Ultralytics' own grouping: biases (no decay), norm weights (no decay), other weights (decay).
    groups: dict[str, set[str]] = {}  # one Ultralytics kind may be split into several groups (one per owner)
    for name, ids in rec.groups:
        groups.setdefault(name, set()).update(names[i] for i in ids)
    assert all(n.endswith("bias") for n in groups["bias"])
    assert all(".bn." in n for n in groups["bn"]) and groups["bn"]
    assert any(n.endswith("lora_A") for n in groups["weight"])
    assert not any("model.0." in n or "model.1." in n or ".dfl" in n for n in plan.trainable)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)


def test_frozen_weights_and_bn_statistics_unchanged(lora_run):
    trainer, rec = lora_run
    plan = trainer.vp_plan
    for source in (trainer.model, trainer.ema.ema):
        sd = source.state_dict()
        frozen = [k for k in rec.initial if k not in plan.trainable and k not in plan.bn_buffers()]
        assert frozen and all(torch.equal(sd[k], rec.initial[k]) for k in frozen)
    sd = trainer.model.state_dict()
    changed = [k for k in plan.trainable if not torch.equal(sd[k], rec.initial[k])]
    assert any(k.endswith("lora_B") for k in changed) and any(k.startswith("model.24.") for k in changed)
    eval_bn = {n for n, mode in plan.bn_modes.items() if mode == "eval"}
    assert eval_bn and eval_bn <= rec.bn_eval  # forced to eval during training, despite model.train()
    train_bn = [n for n, mode in plan.bn_modes.items() if mode == "train"]
    assert any(not torch.equal(sd[f"{n}.running_mean"], rec.initial[f"{n}.running_mean"]) for n in train_bn)


def test_outputs_adapter_plan_and_tensorboard(lora_run, weights, coco8):
    trainer, _ = lora_run
    run_dir = trainer.vp_run_dir
    for name in ("adapter", "adapter_last"):
        assert (run_dir / name / "adapter.safetensors").is_file() and (run_dir / name / "adapter.json").is_file()
    assert (run_dir / "plan.json").is_file()
    # The last adapter reproduces the EMA model on a fresh base built the trainer's way (fingerprint checked).
    from visionpeft.tasks.ultralytics.merge import build_training_model

    fresh = build_training_model(weights, 80, trainer.data["names"])
    visionpeft.load_adapter(fresh, run_dir / "adapter_last")
    ema = trainer.ema.ema.state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in fresh.state_dict().items() if v.is_floating_point())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/train_box", "loss/val", "metrics/map50", "metrics/map50_95", "perf/img_per_s",
            "progress/epoch", "result/map50_95"} <= tags
    # Learning rates are named by the strategies owning each Ultralytics group, not pg0..pg2.
    lr_tags = {t for t in tags if t.startswith("optim/lr_")}
    assert lr_tags and all("lora" in t or "head" in t for t in lr_tags) and not any("pg" in t for t in lr_tags)
    # x = training batches: epoch k's validation at k * batches per epoch; the final evaluation of best.pt
    # is a result/* point at the last step, not a third epoch.
    nb = len(trainer.train_loader)
    assert [(e.step, e.value) for e in acc.Scalars("progress/epoch")] == [(nb, 1), (2 * nb, 2)]
    assert [e.step for e in acc.Scalars("metrics/map50_95")] == [nb, 2 * nb]
    (final,) = acc.Scalars("result/map50_95")
    assert final.step == 2 * nb and final.value == pytest.approx(trainer.metrics["metrics/mAP50-95(B)"])


def test_final_eval_sees_lora(lora_run, coco8):
    """Ultralytics' final validation fuses Conv+BN; the merged copy must predict what the adapted model does."""
    trainer, _ = lora_run
    assert set(trainer.metrics) >= {"metrics/mAP50(B)", "metrics/mAP50-95(B)"}
    adapted = copy.deepcopy(trainer.ema.ema).float().eval()
    fused = merged_copy(adapted).fuse(verbose=False).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(adapted(x)[0], fused(x)[0], atol=1e-4, rtol=1e-3)
        base = copy.deepcopy(adapted)
        for m in base.modules():
            if hasattr(m, "lora_B"):
                m.lora_B.zero_()
        assert (base(x)[0] - adapted(x)[0]).abs().max() > 1e-4  # the trained adapters do matter


def test_freeze_10_equals_ultralytics_freeze_10(coco8, weights, tmp_path):
    args = offline_args(tmp_path, model=weights, data=str(coco8))
    _, ours = _train(PeftDetectionTrainer.configure([{"method": "freeze", "n": 10}]), {**args, "name": "ours"})
    _, theirs = _train(DetectionTrainer, {**args, "name": "theirs", "freeze": 10})
    assert ours.frozen == theirs.frozen and any(n.startswith("model.9.") for n in ours.frozen)
    assert ours.bn_eval == theirs.bn_eval  # BatchNorm of frozen layers in eval, the rest training


def test_plan_violation_is_an_error(coco8, weights, tmp_path):
    def unfreeze_one(tr):
        next(p for n, p in tr.model.named_parameters() if n.startswith("model.0.")).requires_grad_(True)

    cls = PeftDetectionTrainer.configure([{"method": "freeze", "n": 2}])
    args = offline_args(tmp_path, model=weights, data=str(coco8), name="bad", epochs=2)
    with pytest.raises(PlanViolationError, match="1 frozen tensors became trainable"):
        _train(cls, args, on_train_epoch_end=unfreeze_one)


def test_configuration_errors(coco8, weights, tmp_path):
    with pytest.raises(ConfigError, match="unknown strategy method 'lorra'"):
        PeftDetectionTrainer.configure([{"method": "lorra"}])
    cls = PeftDetectionTrainer.configure([{"method": "head"}])
    with pytest.raises(ConfigError, match=r"use the freeze strategy instead"):
        cls(overrides=offline_args(tmp_path, model=weights, data=str(coco8), freeze=10))
