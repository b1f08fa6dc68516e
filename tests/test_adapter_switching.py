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
    # BatchNorm statistics that train (buffers: copied in and out) beside parameters kept by identity
    "cnn": (lambda: _cnn(), (2, 3, 8, 8), [{"method": "freeze", "n": 1, "bn": "train"}, {"method": "bitfit"},
                                           {"method": "head"}],
            [{"method": "lora", "rank": 2}, {"method": "norm", "bn": "train"}]),
}


def _cnn() -> nn.Module:
    from .fixtures import tiny_cnn

    return tiny_cnn(seed=0).eval()


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


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    opt.zero_grad()
    _loss(model.train()(x)).backward()
    opt.step()


def _loss(y) -> torch.Tensor:
    """Mean square of every tensor in a model's output (a tensor, a list, or Ultralytics' dict in train mode)."""
    if isinstance(y, torch.Tensor):
        return y.float().pow(2).mean()
    items = y.values() if isinstance(y, dict) else y
    return sum(_loss(v) for v in items if isinstance(v, torch.Tensor | list | tuple | dict))


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("make_opt", [lambda ps: torch.optim.SGD(ps, lr=0.5),
                                      lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.0)],
                         ids=["sgd", "adamw"])
def test_an_optimizer_built_before_switches_keeps_training_the_adapter(setup, make_opt):
    """Issue 23 #1: A's parameter objects survive set_adapter(B), set_adapter(A), so opt.step() still moves them."""
    base, dirs, x, refs = setup
    model = copy.deepcopy(base)
    visionpeft.load_adapter(model, dirs["a"], name="a")
    visionpeft.load_adapter(model, dirs["b"], name="b")
    own = _trainable(model)
    opt = make_opt(list(own.values()))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    visionpeft.set_adapter(model, "b")
    assert not any(p.requires_grad for p in own.values())  # inactive adapter: off, as in HF PEFT
    assert all(p is not q for p in own.values() for q in _trainable(model).values())  # B has its own objects
    visionpeft.set_adapter(model, "a")
    live = _trainable(model)
    assert list(live) == list(own) and all(live[n] is own[n] for n in own)  # the very same objects, same order
    before = {n: p.detach().clone() for n, p in own.items()}
    _step(model, opt, x)
    sched.step()
    reference = copy.deepcopy(base)  # the same step on a fresh base with only A loaded
    visionpeft.load_adapter(reference, dirs["a"])
    ref_params = _trainable(reference)
    _step(reference, make_opt(list(ref_params.values())), x)
    assert list(ref_params) == list(own)
    for n, p in own.items():
        torch.testing.assert_close(p.detach(), ref_params[n].detach(), rtol=1e-5, atol=1e-6, msg=n)
    moved = [n for n, p in own.items() if not torch.equal(p.detach(), before[n])]
    assert moved  # (not all: a bias before a training BatchNorm, some YOLO norms get no gradient here)
    trained = _out(model, x)
    visionpeft.set_adapter(model, None)
    assert torch.equal(_out(model, x), refs[None])  # the base tensors A trains in place were not touched
    visionpeft.set_adapter(model, "a")
    assert torch.equal(_out(model, x), trained)


def test_an_ema_copy_keeps_following_the_adapter_across_switches(setup):
    from timm.utils import ModelEmaV3

    base, dirs, x, refs = setup
    model = copy.deepcopy(base)
    visionpeft.load_adapter(model, dirs["a"], name="a")
    visionpeft.load_adapter(model, dirs["b"], name="b")
    ema = ModelEmaV3(model, decay=0.0)  # decay 0: the copy becomes the model at every update
    opt = torch.optim.SGD(list(_trainable(model).values()), lr=0.5)
    visionpeft.set_adapter(model, "b")
    visionpeft.set_adapter(model, "a")
    _step(model, opt, x)
    ema.update(model)
    assert torch.equal(_out(ema.module, x), _out(model, x))
    assert visionpeft.get_plan(ema) is not None  # an EMA wrapper is unwrapped like the model


def test_switching_a_ddp_wrapper_is_refused_and_data_parallel_follows(setup, tmp_path):
    import torch.distributed as dist

    base, dirs, x, refs = setup
    model = copy.deepcopy(base)
    visionpeft.load_adapter(model, dirs["a"], name="a")
    visionpeft.load_adapter(model, dirs["b"], name="b")
    dp = nn.DataParallel(model)  # no GPU: it calls the module, so it follows a switch
    visionpeft.set_adapter(dp, "b")
    assert visionpeft.active_adapter(model) == "b" and torch.equal(_out(dp, x), refs["b"])
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        with pytest.raises(ConfigError, match="DistributedDataParallel, which registered adapter .b."):
            visionpeft.set_adapter(ddp, "a")
        assert visionpeft.active_adapter(ddp) == "b"
        visionpeft.set_adapter(ddp, "b")  # no switch: fine
    finally:
        dist.destroy_process_group()
