"""``train.compile``: a compiled run keeps checkpoint keys, resumes and merges; a failed compile is one line.

Runs use torch.compile's ``eager`` backend (Dynamo traces the same graph, no C++ code generation) so the test
takes seconds; inductor's code generation is torch's own and takes minutes per graph on a loaded 2-core CPU.
The layer test compiles with ``aot_eager`` (AOT autograd too), which is what traces the fused LoRA backward.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import visionpeft
from visionpeft.errors import ConfigError
from visionpeft.strategies.lora.layers import LoRALayer
from visionpeft.tasks.classification import TASK
from visionpeft.tasks.classification import compiled as compiled_mod
from visionpeft.tasks.classification import runner as runner_mod

from ...fixtures import killed_at_epoch
from .test_train import recipe, toy  # noqa: F401  (toy is a fixture)


def _eager_compile(monkeypatch: pytest.MonkeyPatch, calls: list) -> None:
    def fake(module, backend="inductor"):
        calls.append(module)
        compiled_mod.compile_in_place(module, backend="eager")

    monkeypatch.setattr(runner_mod, "compile_in_place", fake)


def test_compiled_run_keeps_keys_resumes_and_merges(toy, tmp_path, monkeypatch):  # noqa: F811
    import timm

    calls: list = []
    _eager_compile(monkeypatch, calls)
    strategies = [{"method": "lora", "rank": 2}, {"method": "head"}]
    r = recipe(toy, tmp_path, strategies, train={"epochs": 2, "compile": True, "max_steps_per_epoch": 2})
    with killed_at_epoch(monkeypatch, 2):
        TASK.train(r, strategies, tmp_path / "run", "lora")
    assert len(calls) == 1 and calls[0]._compiled_call_impl is not None  # really compiled
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert last["model"] and not any("_orig_mod" in k for k in last["model"])
    assert set(last["model"]) == set(json.loads((tmp_path / "run" / "plan.json").read_text())["trainable"]) | {
        k for k in last["model"] if "running" in k or "num_batches" in k}
    TASK.resume(tmp_path / "run")  # compiled again (train.compile comes from the run's recipe)
    assert len(calls) == 2
    hist = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2]  # counted from 1, as the log and best_epoch count
    adapter = load_file(str(tmp_path / "run" / "adapter" / "adapter.safetensors"))
    assert adapter and not any("_orig_mod" in k for k in adapter)
    out = TASK.merge(tmp_path / "run", tmp_path / "merged.safetensors")
    plain = timm.create_model("test_efficientnet", num_classes=3)
    plain.load_state_dict(load_file(str(out)), strict=True)  # the original architecture, plain keys
    _, adapted, _, _ = TASK.load_run(tmp_path / "run")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), adapted.eval()(x), rtol=1e-4, atol=1e-5)


def test_failed_compilation_is_one_clear_error(toy, tmp_path, monkeypatch):  # noqa: F811
    def broken_backend(gm, example_inputs):
        raise RuntimeError("C++ compile error: gcc not found\nlong traceback line")

    monkeypatch.setattr(runner_mod, "compile_in_place",
                        lambda module, backend="inductor": compiled_mod.compile_in_place(module, broken_backend))
    r = recipe(toy, tmp_path, [{"method": "head"}], train={"epochs": 1, "compile": True})
    with pytest.raises(ConfigError, match=r"^train\.compile: torch\.compile failed .*gcc not found") as info:
        TASK.train(r, [{"method": "head"}], tmp_path / "run", "probe")
    assert "\n" not in str(info.value)


def test_compiled_lora_layers_match_eager_gradients():
    """The fused Linear node and the weight-space depthwise path under AOT autograd: same values, same grads."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Flatten(), nn.Linear(4 * 6 * 6, 8),
                          nn.ReLU(), nn.Linear(8, 5))  # the last Linear is the task head: not adapted
    visionpeft.apply(model, [{"method": "lora", "rank": 2, "targets": ["0", "2"], "max_param_fraction": None}])
    assert all(isinstance(model[i], LoRALayer) and model[i]._can_fuse(torch.randn(1)) for i in (0, 2))
    for p in model.parameters():
        if p.requires_grad:
            with torch.no_grad():
                p.normal_(std=0.2)
    eager = {n: p for n, p in model.named_parameters() if p.requires_grad}
    x = torch.randn(3, 4, 6, 6)
    ref = model(x)
    ref_grads = torch.autograd.grad(ref.pow(2).sum(), list(eager.values()))
    compiled = torch.compile(model, backend="aot_eager")
    out = compiled(x)
    grads = torch.autograd.grad(out.pow(2).sum(), list(eager.values()))
    torch.testing.assert_close(out, ref)
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, rg)
