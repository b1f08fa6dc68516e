"""apply / merge / load_adapter are all-or-nothing: a failure leaves the model exactly as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import visionpeft
from visionpeft.errors import AdapterMismatchError, ConfigError, TargetNotFoundError
from visionpeft.strategies.lora import lora_layers
from visionpeft.strategies.simple import BitFitStrategy, HeadStrategy

from .fixtures import tiny_cnn


def _vit() -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=3)


def _state(model: nn.Module) -> dict:
    """Everything apply may change: module objects by name, flags, hooks, attributes, tensor values."""
    return {
        "modules": {n: id(m) for n, m in model.named_modules()},
        "grads": {n: p.requires_grad for n, p in model.named_parameters()},
        "hooks": {n: (len(m._forward_pre_hooks), len(m._forward_hooks)) for n, m in model.named_modules()},
        "training": {n: m.training for n, m in model.named_modules()},
        "attrs": sorted(vars(model)),
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
    }


def _assert_unchanged(before: dict, model: nn.Module) -> None:
    after = _state(model)
    for key in ("modules", "grads", "hooks", "training", "attrs"):
        assert after[key] == before[key], key
    assert after["tensors"].keys() == before["tensors"].keys()
    assert all(torch.equal(before["tensors"][k], v) for k, v in after["tensors"].items())
    assert visionpeft.get_plan(model) is None


def test_issue_example_bad_head_after_lora_leaves_no_wrappers() -> None:
    model = _vit()
    before = _state(model)
    with pytest.raises(TargetNotFoundError, match=r"strategies\.1: head\.modules: pattern 'nope'"):
        visionpeft.apply(model, [{"method": "lora"}, {"method": "head", "modules": ["nope"]}])
    _assert_unchanged(before, model)
    assert not lora_layers(model)
    # The corrected list now works, and gives the plan a fresh model gets.
    plan = visionpeft.apply(model, [{"method": "lora"}, {"method": "head"}])
    assert plan.trainable == visionpeft.apply(_vit(), [{"method": "lora"}, {"method": "head"}]).trainable


@pytest.mark.parametrize(
    ("strategies", "error", "match"),
    [
        # Fail inside apply (after earlier entries changed the model), not in the up-front check.
        ([{"method": "lora", "targets": ["qkv"]}, {"method": "lora", "targets": ["qkv"]}], ConfigError,
         r"strategies\.1: lora\.targets.*already carry a LoRA adapter"),
        ([{"method": "vpt", "mode": "deep"}, {"method": "vpt"}], ConfigError, r"strategies\.1: vpt:.*already has"),
        ([{"method": "freeze", "n": 4}, {"method": "norm"}], TargetNotFoundError, r"norm: nothing to train"),
        ([{"method": "lora"}, {"method": "freeze", "patterns": ["*"]}], ConfigError, r"lora: all 8 target layers"),
        ([{"method": "freeze", "patterns": ["*"]}], ConfigError, r"nothing would train"),
        ([{"method": "freeze", "bn": "frozen"}, {"method": "norm", "bn": "eval"}], ConfigError, r"contradicts"),
    ],
)
def test_any_failing_entry_restores_the_vit(strategies: list, error: type, match: str) -> None:
    model = _vit()
    before = _state(model)
    with pytest.raises(error, match=match):
        visionpeft.apply(model, strategies)
    _assert_unchanged(before, model)
    assert not hasattr(model, "vpt")


def test_unexpected_failure_and_interrupt_restore_too(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_cnn()
    model.stem[0].weight.requires_grad_(False)  # the caller's own flags come back as they were
    before = _state(model)
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        def fail(self, model, ctx, exc=exc):  # noqa: ANN001
            raise exc

        monkeypatch.setattr(BitFitStrategy, "apply", fail)
        with pytest.raises(type(exc)):
            visionpeft.apply(model, [{"method": "lora", "rank": 1}, {"method": "bitfit"}, {"method": "head"}])
        _assert_unchanged(before, model)


#: Every method whose layers merge into the base tensors; the adapters get non-trivial values below.
MERGEABLE = [{"method": "lora", "rank": 2}, {"method": "dora", "rank": 2}, {"method": "loha", "rank": 2},
             {"method": "lokr", "rank": 2}, {"method": "ssf"}]


def _perturb_adapters(model: nn.Module, method: str) -> None:
    """Random values for every adapter tensor of ``method`` (a fresh adapter changes nothing)."""
    g = torch.Generator().manual_seed(0)
    plan = visionpeft.get_plan(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if plan.trainable.get(name) == method:
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("entry", MERGEABLE, ids=lambda e: e["method"])
def test_merge_failure_restores_the_adapted_model(monkeypatch: pytest.MonkeyPatch, entry: dict) -> None:
    """Bit-exact, also where an unmerge is not (DoRA's ``m * V / ||V||``, SSF's scaled bias)."""
    from visionpeft.snapshot import mergeable_layers

    model = _vit().eval()
    visionpeft.apply(model, [{"method": "head"}, entry])
    _perturb_adapters(model, entry["method"])
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    before = _state(model)
    plan = visionpeft.get_plan(model)

    def fail(self, model):  # noqa: ANN001 - runs after the adapters merged (merge goes in reverse order)
        raise RuntimeError("boom")

    monkeypatch.setattr(HeadStrategy, "merge", fail)
    with pytest.raises(RuntimeError, match="boom"):
        visionpeft.merge(model)
    assert visionpeft.get_plan(model) is plan
    layers = mergeable_layers(model)
    assert layers and not any(layer.merged for layer in layers)
    after = _state(model)
    assert after["modules"] == before["modules"] and after["grads"] == before["grads"]
    assert all(torch.equal(before["tensors"][k], v) for k, v in after["tensors"].items())
    assert torch.equal(model(x), expected)
    monkeypatch.undo()
    visionpeft.merge(model)
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("entry", MERGEABLE, ids=lambda e: e["method"])
def test_failed_apply_undoes_in_place_merges(entry: dict) -> None:
    """A strategy that merged layers and then failed: the snapshot unmerges them from the live state."""
    from visionpeft.snapshot import atomic, mergeable_layers

    model = _vit().eval()
    visionpeft.apply(model, [entry])
    _perturb_adapters(model, entry["method"])
    x = torch.randn(2, 3, 32, 32)
    expected, tensors = model(x), {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), atomic(model):
        for layer in mergeable_layers(model):
            layer.merge()
        raise RuntimeError("boom")
    assert not any(layer.merged for layer in mergeable_layers(model))
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, tensors[k], rtol=1e-5, atol=1e-6)


def test_merge_refuses_vpt_before_touching_anything() -> None:
    model = _vit()
    visionpeft.apply(model, [{"method": "lora"}, {"method": "vpt"}])
    modules = {n: id(m) for n, m in model.named_modules()}
    with pytest.raises(ConfigError, match="vpt: prompts cannot be folded"):
        visionpeft.merge(model)
    assert {n: id(m) for n, m in model.named_modules()} == modules


def test_failed_load_adapter_leaves_the_model_plain(tmp_path: Path) -> None:
    trained = tiny_cnn(seed=0)
    visionpeft.apply(trained, [{"method": "lora", "rank": 1}, {"method": "head"}])
    visionpeft.save_adapter(trained, tmp_path)
    other = tiny_cnn(seed=5)  # other base weights: the fingerprint check fails after apply
    before = _state(other)
    with pytest.raises(AdapterMismatchError, match="base weights differ"):
        visionpeft.load_adapter(other, tmp_path)
    _assert_unchanged(before, other)
    visionpeft.load_adapter(other, tmp_path, ignore_fingerprint=True)  # and a retry works
    assert lora_layers(other)


@pytest.mark.parametrize(
    "entry", [{"method": "lora"}, {"method": "dora"}, {"method": "loha"}, {"method": "lokr"}, {"method": "ssf"}],
    ids=lambda v: v["method"],
)
def test_wrapping_failure_mid_wrap_restores(monkeypatch: pytest.MonkeyPatch, entry: dict) -> None:
    """A failure after a strategy has replaced some layers (inside one strategy) is rolled back as well."""
    from visionpeft.strategies import targets  # every wrapping method swaps layers through targets.wrap_module

    model = _vit()
    before = _state(model)
    real, calls = targets.replace_module, []

    def flaky(model, name, new):  # noqa: ANN001
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        real(model, name, new)

    monkeypatch.setattr(targets, "replace_module", flaky)
    with pytest.raises(RuntimeError, match="out of memory"):
        visionpeft.apply(model, [entry])
    assert len(calls) == 3  # the failure came part-way through wrapping
    _assert_unchanged(before, model)
