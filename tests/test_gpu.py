"""CUDA-only checks: mixed precision keeps adapters in float32 and exact, and memory is the allocator's.

Skipped on machines without a GPU (never faked).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import visionpeft
from visionpeft.profiling import measure_step_memory
from visionpeft.strategies.lora import LoRAConv2d, LoRALinear

from .fixtures import tiny_cnn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lora_under_autocast_trains_in_float32(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 5)).cuda()
    visionpeft.apply(model, [{"method": "lora", "rank": 4}])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    x = torch.randn(8, 3, 8, 8, device="cuda")
    for _ in range(3):
        with torch.autocast("cuda", dtype=dtype):
            loss = model(x).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    layers = [m for m in model.modules() if isinstance(m, LoRALinear | LoRAConv2d)]
    assert layers and all(m.lora_A.dtype == torch.float32 and m.lora_B.dtype == torch.float32 for m in layers)
    assert all(m.lora_B.abs().sum() > 0 for m in layers)  # adapters really trained
    model.eval()
    with torch.no_grad():
        before = model(x)
        visionpeft.merge(model)
        after = model(x)
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)


def test_cuda_memory_is_the_allocator_peak() -> None:
    model = tiny_cnn().cuda()
    visionpeft.apply(model, [{"method": "full"}])
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(16, 3, 32, 32, device="cuda")
    for _ in range(2):
        with measure_step_memory(model, opt, torch.device("cuda")) as stats:
            model(x).sum().backward()
            opt.step()
            opt.zero_grad()
    assert stats.cuda_peak is not None and stats.peak_bytes == stats.cuda_peak
    assert stats.cuda_peak >= stats.params + stats.optimizer
