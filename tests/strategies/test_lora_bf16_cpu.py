"""bf16 autocast on CPU (``train.amp: bf16``): adapters stay float32, train, and merge exactly.

The CPU twin of ``tests/test_gpu.py::test_lora_under_autocast_trains_in_float32`` (which needs CUDA). bf16
autocast runs on any x86 CPU; ``avx512_bf16`` / AMX only make it fast.
"""

from __future__ import annotations

import torch
from torch import nn

import visionpeft
from visionpeft.strategies.lora import LoRAConv2d, LoRALinear


def test_lora_under_cpu_bf16_autocast_trains_in_float32() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 5))
    visionpeft.apply(model, [{"method": "lora", "rank": 4, "max_param_fraction": None}, {"method": "head"}])
    layers = [m for m in model.modules() if isinstance(m, LoRALinear | LoRAConv2d)]
    assert len(layers) == 3  # plain conv, depthwise conv (weight-space path) and the hidden Linear
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(8, 3, 8, 8)
    target = torch.randn(8, 5)
    losses = []
    for _ in range(4):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            assert out.dtype == torch.bfloat16  # the products really ran in bf16
            loss = (out.float() - target).pow(2).mean()
        loss.backward()
        assert all(m.lora_A.grad.dtype == torch.float32 for m in layers)
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach().item())
    assert all(m.lora_A.dtype == torch.float32 and m.lora_B.dtype == torch.float32 for m in layers)
    assert all(m.lora_B.abs().sum() > 0 for m in layers)  # adapters really trained
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        before = model(x)  # float32 outside autocast
        visionpeft.merge(model)
        after = model(x)
    torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-5)
