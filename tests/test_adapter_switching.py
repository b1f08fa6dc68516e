"""Named adapters on one base model: after every switch the outputs equal a fresh base + ``load_adapter`` exactly."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import visionpeft
from visionpeft.errors import AdapterMismatchError, ConfigError


def _perturb(model: nn.Module, seed: int) -> None:
    """Move every trainable tensor away from its init (LoRA's zero B, identity SSF, biases), so no-ops fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)


def _save(base: nn.Module, strategies: list, seed: int, out: Path) -> Path:
    model = copy.deepcopy(base)
    visionpeft.apply(model, strategies)
    _perturb(model, seed)
    return visionpeft.save_adapter(model, out)


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = model.eval()(x)
    return y[0] if isinstance(y, (tuple, list)) else y


def _reference(base: nn.Module, adapter: Path | None, x: torch.Tensor) -> torch.Tensor:
    fresh = copy.deepcopy(base)
    if adapter is not None:
        visionpeft.load_adapter(fresh, adapter)
    return _out(fresh, x)


def _vit() -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32).eval()


def _yolo() -> nn.Module:
    pytest.importorskip("ultralytics")
    from visionpeft.backends.ultralytics import build_model

    torch.manual_seed(0)
    return build_model("yolov8n.yaml", nc=3).eval()


CASES = {
    # name: (base builder, input, adapter a, adapter b): LoRA + one other kind of method each, biases trained in
    # place by bitfit (base tensors an adapter overwrites must come back exactly).
    "vit": (_vit, (2, 3, 32, 32), [{"method": "lora", "rank": 2}, {"method": "bitfit"}, {"method": "head"}],
            [{"method": "vpt", "tokens": 3}, {"method": "head"}]),
    "yolo": (_yolo, (1, 3, 64, 64), [{"method": "lora", "rank": 2}, {"method": "head"}],
             [{"method": "ssf"}, {"method": "bitfit"}]),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def setup(request, tmp_path_factory):
    build, shape, a, b = CASES[request.param]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests run (conftest): another thread count sums in another order
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    base = build()
    tmp = tmp_path_factory.mktemp(request.param)
    dirs = {"a": _save(base, a, 1, tmp / "a"), "b": _save(base, b, 2, tmp / "b")}
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    refs = {name: _reference(base, d, x) for name, d in dirs.items()} | {None: _reference(base, None, x)}
    assert not torch.equal(refs["a"], refs[None]) and not torch.equal(refs["b"], refs[None])
    assert not torch.equal(refs["a"], refs["b"])
    return base, dirs, x, refs


def test_switching_gives_exactly_the_fresh_outputs(setup):
    base, dirs, x, refs = setup
    model = copy.deepcopy(base)
    plain_keys = list(model.state_dict())
    visionpeft.load_adapter(model, dirs["a"], name="a")
    assert visionpeft.active_adapter(model) == "a" and torch.equal(_out(model, x), refs["a"])
    visionpeft.load_adapter(model, dirs["b"], name="b")  # loaded and checked, "a" stays active
    assert visionpeft.list_adapters(model) == ["a", "b"] and visionpeft.active_adapter(model) == "a"
    assert torch.equal(_out(model, x), refs["a"])
    for name in ("b", None, "a", "b", "a", None, "b"):
        visionpeft.set_adapter(model, name)
        assert visionpeft.active_adapter(model) == name
        assert torch.equal(_out(model, x), refs[name]), name
    visionpeft.set_adapter(model, None)
    assert list(model.state_dict()) == plain_keys and visionpeft.get_plan(model) is None
    base_sd = base.state_dict()
    assert all(torch.equal(v, base_sd[k]) for k, v in model.state_dict().items())  # the base, bit for bit


def test_an_adapter_keeps_its_changes_across_switches(setup):
    base, dirs, x, refs = setup
    model = copy.deepcopy(base)
    visionpeft.load_adapter(model, dirs["a"], name="a")
    visionpeft.load_adapter(model, dirs["b"], name="b")
    _perturb(model, 7)  # "training" adapter a further
    changed = _out(model, x)
    assert not torch.equal(changed, refs["a"])
    visionpeft.set_adapter(model, "b")
    assert torch.equal(_out(model, x), refs["b"])
    visionpeft.set_adapter(model, "a")
    assert torch.equal(_out(model, x), changed)
    visionpeft.set_adapter(model, None)
    assert torch.equal(_out(model, x), refs[None])


def test_unknown_duplicate_and_foreign_adapters(setup, tmp_path):
    base, dirs, x, refs = setup
    model = copy.deepcopy(base)
    with pytest.raises(ConfigError, match="no named adapters; load them first"):
        visionpeft.set_adapter(model, "a")
    visionpeft.load_adapter(model, dirs["a"], name="a")
    visionpeft.load_adapter(model, dirs["b"], name="b")
    with pytest.raises(ConfigError, match=r"no adapter named 'bb'; loaded: \['a', 'b'\] \(did you mean 'b'\?\)"):
        visionpeft.set_adapter(model, "bb")
    with pytest.raises(ConfigError, match="an adapter named 'a' is already loaded"):
        visionpeft.load_adapter(model, dirs["b"], name="a")
    other = copy.deepcopy(base)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)  # another base: the fingerprint check refuses its adapter
    foreign = _save(other, [{"method": "head"}], 4, tmp_path / "foreign")
    with pytest.raises(AdapterMismatchError, match="base weights differ"):
        visionpeft.load_adapter(model, foreign, name="c")
    assert visionpeft.list_adapters(model) == ["a", "b"] and visionpeft.active_adapter(model) == "a"
    assert torch.equal(_out(model, x), refs["a"])  # the failed load changed nothing
    visionpeft.set_adapter(model, "b")
    assert torch.equal(_out(model, x), refs["b"])


def test_switching_after_merge_or_outside_changes_is_refused(setup):
    base, dirs, x, refs = setup
    model = copy.deepcopy(base)
    visionpeft.load_adapter(model, dirs["a"], name="a")
    visionpeft.merge(model)
    with pytest.raises(ConfigError, match="'a' was merged into the base weights"):
        visionpeft.set_adapter(model, None)
    with pytest.raises(ConfigError, match="was merged"):
        visionpeft.load_adapter(model, dirs["b"], name="b")
    adapted = copy.deepcopy(base)
    visionpeft.apply(adapted, [{"method": "head"}])
    with pytest.raises(ConfigError, match="already adapted"):
        visionpeft.load_adapter(adapted, dirs["a"], name="a")
    moved = copy.deepcopy(base)
    visionpeft.load_adapter(moved, dirs["a"], name="a")
    moved.double()
    with pytest.raises(ConfigError, match="tensors were moved or replaced"):
        visionpeft.set_adapter(moved, None)
