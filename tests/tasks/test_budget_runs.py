"""Budgets in runs: classification training supplies batches for ``allocation: importance``, records the ranks it
chose (``plan.json``, the adapter), and eval / resume reuse them; detection refuses importance up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from visionpeft.data.toy import make_toy_imagefolder
from visionpeft.errors import ConfigError
from visionpeft.recipe import parse_recipe
from visionpeft.strategies import importance
from visionpeft.strategies.lora import lora_layers
from visionpeft.tasks.classification import TASK

from ..fixtures import killed_at_epoch

BUDGET = [{"method": "lora", "budget": 0.1, "allocation": "importance", "importance_batches": 2},
          {"method": "head"}]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_imagefolder(tmp_path_factory.mktemp("toy"), classes=3, train_per_class=8, val_per_class=4,
                                size=24)


def recipe(toy: Path, out: Path, epochs: int = 2):
    return parse_recipe({
        "name": "budget", "model": "test_efficientnet", "data": str(toy), "output": str(out), "seed": 0,
        "strategies": BUDGET, "tensorboard": False,
        "train": {"epochs": epochs, "batch_size": 8, "workers": 0, "progress": False},
        "optim": {"warmup_epochs": 0},
        "augment": {"img_size": 32, "random_resized_crop": False, "hflip": 0.0, "color_jitter": 0.0},
    })


def test_importance_budget_trains_records_its_ranks_and_evaluates(toy, tmp_path):
    r = recipe(toy, tmp_path)
    res = TASK.train(r, list(r.strategies), tmp_path / "run", "budget")
    run = tmp_path / "run"
    plan = json.loads((run / "plan.json").read_text())
    record = plan["resolved"][0]
    ranks, scores = record["ranks"], record["importance"]
    assert ranks.keys() == scores.keys() and len(set(ranks.values())) > 1  # real gradients: unequal ranks
    top = max(scores, key=scores.get)
    assert ranks[top] == max(ranks.values())
    assert plan["by_strategy"]["lora"] / plan["total"] <= 0.1 and plan["resolved"][1] == {}
    assert res.trainable_params == plan["by_strategy"]["lora"] + plan["by_strategy"]["head"]
    # eval rebuilds the model from the adapter with the recorded ranks (no batches there) and reproduces val.
    _, model, loaded, _ = TASK.load_run(run)
    assert {n: m.rank for n, m in lora_layers(model).items()} == ranks and loaded.resolved[0]["ranks"] == ranks
    metrics = json.loads((run / "metrics.json").read_text())
    assert TASK.evaluate(run, "val")["top1"] == pytest.approx(metrics["metrics"]["top1"])


def test_resume_takes_the_recorded_ranks(toy, tmp_path, monkeypatch):
    r = recipe(toy, tmp_path, epochs=3)
    TASK.train(r, list(r.strategies), tmp_path / "whole", "whole")
    with killed_at_epoch(monkeypatch, 2):
        TASK.train(r, list(r.strategies), tmp_path / "killed", "whole")

    def no_gradients(*args, **kwargs):
        raise AssertionError("a resumed run must not measure importance again")

    monkeypatch.setattr(importance, "gradient_importance", no_gradients)
    TASK.resume(tmp_path / "killed")
    a = load_file(str(tmp_path / "whole" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "killed" / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_detection_refuses_importance_before_any_data_is_read():
    from visionpeft.tasks.ultralytics.trainer import PeftDetectionTrainer

    with pytest.raises(ConfigError, match=r"strategies.0.allocation: importance is not available for detection.*"
                                          "use allocation: uniform"):
        PeftDetectionTrainer.configure([{"method": "lora", "budget": 0.02, "allocation": "importance"}])
    PeftDetectionTrainer.configure([{"method": "lora", "budget": 0.02}, {"method": "head"}])  # uniform is fine


def test_uniform_budget_trains_in_ultralytics_and_reloads(coco8, weights, tmp_path):
    """A budgeted LoRA inside Ultralytics' own loop (coco8, 64 px, 1 epoch): the ranks are solved on the model
    the trainer builds, recorded in the adapter, and the trained adapter reloads onto a fresh base exactly."""
    pytest.importorskip("ultralytics")
    import visionpeft
    from visionpeft.tasks.ultralytics.merge import build_training_model
    from visionpeft.tasks.ultralytics.trainer import PeftDetectionTrainer

    from .ultralytics_support import offline_args

    cls = PeftDetectionTrainer.configure([{"method": "lora", "budget": 0.02}, {"method": "head"}],
                                         run_dir=tmp_path / "run")
    trainer = cls(overrides=offline_args(tmp_path, model=weights, data=str(coco8), name="budget"))
    trainer.train()
    plan = visionpeft.get_plan(trainer.model)
    record = plan.resolved[0]
    assert 0.9 * 0.02 <= record["fraction"] <= 0.02
    assert plan.by_strategy["lora"] == record["adapter_params"]
    fresh = build_training_model(weights, 80, trainer.data["names"])
    loaded = visionpeft.load_adapter(fresh, tmp_path / "run" / "adapter_last")
    assert loaded.resolved[0]["ranks"] == record["ranks"]
    ema_sd = trainer.ema.ema.state_dict()
    assert all(torch.equal(v, ema_sd[k]) for k, v in fresh.state_dict().items() if v.is_floating_point())


def test_the_probe_draws_nothing_from_the_global_random_generators(toy, tmp_path):
    from visionpeft.data import list_recipe_splits, resolve_data_config
    from visionpeft.tasks.classification.importance import importance_probe

    r = recipe(toy, tmp_path)
    samples = list_recipe_splits(r)[1]["train"].samples
    cfg = resolve_data_config({"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                               "interpolation": "bilinear", "crop_pct": 1.0}, r.augment)
    probe = importance_probe(r, cfg, samples, torch.device("cpu"))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    losses = [x.item() for x in probe.losses(model, 2)]
    assert len(losses) == 2 and torch.equal(before, torch.random.get_rng_state())
    assert losses == [x.item() for x in probe.losses(model, 2)]  # the same batches every time
