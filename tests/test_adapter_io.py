"""Adapter files: exact round trip, refusal of a different base, and no pickle on the path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import visionpeft
from visionpeft.errors import AdapterMismatchError, ConfigError

from .fixtures import tiny_cnn
from .test_plan import _train_steps

STRATEGIES = [{"method": "freeze", "n": 1, "bn": "train"}, {"method": "bitfit"}, {"method": "head"}]


def _trained(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    model = tiny_cnn(seed=0)
    visionpeft.apply(model, STRATEGIES)
    _train_steps(model)
    return model, visionpeft.save_adapter(model, tmp_path / "adapter", extra={"note": "test"})


def test_round_trip_reproduces_outputs(tmp_path: Path) -> None:
    model, directory = _trained(tmp_path)
    fresh = tiny_cnn(seed=0)
    plan = visionpeft.load_adapter(fresh, directory)
    x = torch.randn(3, 3, 8, 8)
    model.eval()
    fresh.eval()
    assert torch.equal(model(x), fresh(x))
    assert plan.trainable == visionpeft.get_plan(model).trainable


def test_files_hold_only_what_trains(tmp_path: Path) -> None:
    model, directory = _trained(tmp_path)
    tensors = load_file(str(directory / "adapter.safetensors"))
    plan = visionpeft.get_plan(model)
    bn_stats = {k for k in tensors if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert set(tensors) - bn_stats == set(plan.trainable)
    # bn: train keeps statistics of the frozen stem adapting, so they travel with the adapter
    assert "stem.1.running_mean" in bn_stats
    assert "stem.0.weight" not in tensors
    meta = json.loads((directory / "adapter.json").read_text())
    assert [s["method"] for s in meta["strategies"]] == ["freeze", "bitfit", "head"]
    assert meta["base"]["num_tensors"] > 0 and len(meta["base"]["sha256"]) == 64
    assert meta["adapter_bytes"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert meta["adapter_bytes"] == visionpeft.parameter_report(model)["adapter_bytes"]
    assert meta["extra"] == {"note": "test"}


def test_different_base_is_refused_naming_tensors(tmp_path: Path) -> None:
    _, directory = _trained(tmp_path)
    with pytest.raises(AdapterMismatchError, match=r"tensors differ \['stem\.0\.weight'"):
        visionpeft.load_adapter(tiny_cnn(seed=5), directory)


def test_fingerprint_override_loads_anyway(tmp_path: Path) -> None:
    model, directory = _trained(tmp_path)
    other = tiny_cnn(seed=5)
    visionpeft.load_adapter(other, directory, ignore_fingerprint=True)
    assert torch.equal(other.fc.weight, model.fc.weight)


def test_shape_mismatch_is_refused_even_with_override(tmp_path: Path) -> None:
    _, directory = _trained(tmp_path)
    expected = r"shape mismatches .*'fc\.weight: adapter \(4, 16\) vs model \(7, 16\)'"
    with pytest.raises(AdapterMismatchError, match=expected):
        visionpeft.load_adapter(tiny_cnn(num_classes=7), directory, ignore_fingerprint=True)


def test_bad_adapter_directories(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no adapter config here"):
        visionpeft.load_adapter(tiny_cnn(), tmp_path)
    (tmp_path / "adapter.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        visionpeft.load_adapter(tiny_cnn(), tmp_path)
    (tmp_path / "adapter.json").write_text(json.dumps({"format": "peft"}))
    with pytest.raises(ConfigError, match="not a visionpeft adapter"):
        visionpeft.load_adapter(tiny_cnn(), tmp_path)


def test_save_requires_adapted_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no visionpeft strategies"):
        visionpeft.save_adapter(tiny_cnn(), tmp_path)


def test_adapted_model_survives_deepcopy_and_pickle(tmp_path: Path) -> None:
    import copy

    model, _ = _trained(tmp_path)
    clone = copy.deepcopy(model)
    torch.save(clone, tmp_path / "whole.pt")  # what Ultralytics does with its EMA model
    back = torch.load(tmp_path / "whole.pt", weights_only=False)
    visionpeft.get_plan(back).check(back)
    before = back.stem[1].running_mean.clone()
    back.train()
    back(torch.randn(2, 3, 8, 8))
    assert not torch.equal(before, back.stem[1].running_mean)  # bn: train policy survives pickling
