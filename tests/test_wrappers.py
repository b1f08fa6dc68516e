"""Issue 23 #2: every wrapper a user can hand in is unwrapped at every public entry point.

``torch.compile``'s ``OptimizedModule`` (state-dict keys ``_orig_mod.*``, attributes forwarded), DataParallel /
DistributedDataParallel (``module.*``), timm's ModelEmaV3, Ultralytics' ModelEMA and YOLO object, and nestings of
them: each entry point must give exactly what it gives on the plain model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import visionpeft
from visionpeft.errors import ConfigError

from .fixtures import tiny_cnn

STRATEGIES = [{"method": "lora", "rank": 2}, {"method": "bitfit"}]


def _ema_v3(m: nn.Module):
    from timm.utils import ModelEmaV3

    return ModelEmaV3(m, decay=0.0)  # deepcopy of m; the tests below hand its .module the model itself


def _ultralytics_ema(m: nn.Module):
    pytest.importorskip("ultralytics")
    from ultralytics.utils.torch_utils import ModelEMA

    ema = ModelEMA(m)
    ema.ema = m  # the averaged copy is the model under test
    return ema


def _timm_ema_v3_on(m: nn.Module):
    ema = _ema_v3(m)
    ema.module = m
    return ema


def _averaged_model_on(m: nn.Module):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    avg = AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(0.999))  # torch's own EMA (a deepcopy of m)
    avg.module = m
    return avg


WRAPPERS: dict[str, Callable[[nn.Module], object]] = {
    "torch_averaged_model": _averaged_model_on,
    "compile(torch_averaged_model)": lambda m: torch.compile(_averaged_model_on(m)),
    "compile": torch.compile,
    "data_parallel": nn.DataParallel,
    "compile(data_parallel)": lambda m: torch.compile(nn.DataParallel(m)),
    "timm_ema_v3": _timm_ema_v3_on,
    "ultralytics_ema": _ultralytics_ema,
}


@pytest.fixture
def ddp_group(tmp_path: Path) -> Iterator[None]:
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _plain_adapter(tmp_path: Path) -> tuple[nn.Module, dict[str, torch.Tensor], Path]:
    model = tiny_cnn(seed=0)
    visionpeft.apply(model, STRATEGIES)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)  # LoRA's zero B is no test
    directory = visionpeft.save_adapter(model, tmp_path / "plain")
    return model, load_file(str(directory / "adapter.safetensors")), directory


def _check_all_entries(wrap: Callable[[nn.Module], object], tmp_path: Path) -> None:
    ref_model, ref_tensors, ref_dir = _plain_adapter(tmp_path)
    model = tiny_cnn(seed=0)
    wrapped = wrap(model)
    plan = visionpeft.apply(wrapped, STRATEGIES)
    assert plan.trainable == visionpeft.get_plan(ref_model).trainable  # no _orig_mod. / module. prefixes
    assert visionpeft.get_plan(wrapped) is visionpeft.get_plan(model)
    model.load_state_dict(ref_model.state_dict())
    saved = load_file(str(visionpeft.save_adapter(wrapped, tmp_path / "wrapped") / "adapter.safetensors"))
    assert sorted(saved) == sorted(ref_tensors) and all(torch.equal(saved[k], ref_tensors[k]) for k in saved)
    assert visionpeft.parameter_report(wrapped) == visionpeft.parameter_report(ref_model)
    x = torch.randn(2, 3, 8, 8)
    expected = ref_model.eval()(x)
    visionpeft.merge(wrapped)
    assert visionpeft.get_plan(model) is None and torch.allclose(model.eval()(x), expected, atol=1e-6)
    fresh = tiny_cnn(seed=0)
    visionpeft.load_adapter(wrap(fresh), ref_dir)
    assert torch.equal(fresh.eval()(x), expected)
    named = tiny_cnn(seed=0)
    visionpeft.load_adapter(wrap(named), ref_dir, name="a")
    visionpeft.set_adapter(wrap(named), None)
    assert visionpeft.active_adapter(wrap(named)) is None and visionpeft.list_adapters(wrap(named)) == ["a"]


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_every_entry_point_sees_through_the_wrapper(name: str, tmp_path: Path) -> None:
    _check_all_entries(WRAPPERS[name], tmp_path)


def test_ddp_reads_through_and_refuses_changing_the_parameter_set(ddp_group: None, tmp_path: Path) -> None:
    """DDP registered its parameters when built: apply / load_adapter / merge / a switch under it would add or
    remove tensors it never averages (silently), so they are refused; reading entries see through it."""
    ref_model, ref_tensors, ref_dir = _plain_adapter(tmp_path)
    ddp = nn.parallel.DistributedDataParallel(ref_model)
    saved = load_file(str(visionpeft.save_adapter(ddp, tmp_path / "ddp") / "adapter.safetensors"))
    assert sorted(saved) == sorted(ref_tensors) and all(torch.equal(saved[k], ref_tensors[k]) for k in saved)
    assert visionpeft.get_plan(ddp) is visionpeft.get_plan(ref_model)
    assert visionpeft.parameter_report(ddp)["trainable"] == visionpeft.get_plan(ref_model).trainable_count
    with pytest.raises(ConfigError, match="merge: the model is wrapped in DistributedDataParallel"):
        visionpeft.merge(ddp)
    plain = tiny_cnn(seed=0)
    for call, what in ((lambda m: visionpeft.apply(m, STRATEGIES), "apply"),
                       (lambda m: visionpeft.load_adapter(m, ref_dir), "load_adapter"),
                       (lambda m: visionpeft.load_adapter(m, ref_dir, name="a"), "load_adapter")):
        with pytest.raises(ConfigError, match=f"{what}: the model is wrapped in DistributedDataParallel"):
            call(nn.parallel.DistributedDataParallel(plain))
    assert visionpeft.get_plan(plain) is None and visionpeft.list_adapters(plain) == []
    named = tiny_cnn(seed=0)
    visionpeft.load_adapter(named, ref_dir, name="a")
    with pytest.raises(ConfigError, match="DistributedDataParallel"):
        visionpeft.set_adapter(nn.parallel.DistributedDataParallel(named), None)


def test_compiled_model_adapter_is_not_empty(tmp_path: Path) -> None:
    """The issue's example: save_adapter(torch.compile(model)) wrote a 0-tensor adapter without an error."""
    model = tiny_cnn(seed=0)
    visionpeft.apply(model, STRATEGIES)
    directory = visionpeft.save_adapter(torch.compile(model), tmp_path / "a")
    n_trainable = sum(p.requires_grad for p in model.parameters())
    assert len(load_file(str(directory / "adapter.safetensors"))) == n_trainable > 0


def test_an_adapter_lacking_what_the_plan_trains_is_refused(tmp_path: Path) -> None:
    model = tiny_cnn(seed=0)
    visionpeft.apply(model, STRATEGIES)
    model.fc = nn.Sequential(model.fc)  # renamed after apply: fc.bias is now fc.0.bias
    with pytest.raises(ConfigError, match=r"lacks 1 of the \d+ tensors the plan trains \(\['fc.bias'\]\)"):
        visionpeft.save_adapter(model, tmp_path / "a")
    assert not (tmp_path / "a" / "adapter.safetensors").exists()


def test_yolo_object_is_unwrapped(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    from ultralytics import YOLO

    yolo = YOLO("yolov8n.yaml")
    plan = visionpeft.apply(torch.compile(yolo.model), [{"method": "bitfit"}])
    assert all(not n.startswith("_orig_mod.") for n in plan.trainable)
    assert visionpeft.get_plan(yolo) is plan
    directory = visionpeft.save_adapter(yolo, tmp_path / "y")
    assert len(load_file(str(directory / "adapter.safetensors"))) == len(plan.trainable)
    assert visionpeft.parameter_report(yolo)["trainable"] == plan.trainable_count
