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


def test_cuda_footprint_ignores_other_resident_tensors() -> None:
    """The benchmark keeps many models on the GPU at once: a model's footprint must not include theirs."""
    torch.manual_seed(0)
    model = tiny_cnn().cuda()
    visionpeft.apply(model, [{"method": "full"}])
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(16, 3, 32, 32, device="cuda")

    def footprint() -> int:
        for _ in range(2):
            with measure_step_memory(model, opt, torch.device("cuda")) as stats:
                model(x).sum().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        return stats.peak_bytes

    alone = footprint()
    other = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")  # 64 MiB held by something else
    beside = footprint()
    del other
    assert alone >= sum(p.numel() * 4 for p in model.parameters())
    assert abs(beside - alone) <= 2**20, (alone, beside)


@pytest.mark.parametrize("method", [
    {"method": "lora", "rank": 4}, {"method": "dora", "rank": 4}, {"method": "loha", "rank": 4},
    {"method": "lokr", "rank": 4}, {"method": "ssf"},
])
def test_fp16_autocast_with_each_mergeable_method_stays_finite_and_merges(method: dict) -> None:
    """fp16 AMP with GradScaler: losses finite, adapters float32 and trained, merge under autocast exact."""
    torch.manual_seed(0)
    model = tiny_cnn().cuda().eval()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    y = torch.randint(0, 4, (8,), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        plain = model(x).float()  # the base alone: a merge that dropped the adapter would give this
    visionpeft.apply(model, [method, {"method": "head"}])
    model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():  # non-trivial adapters (LoRA's B starts at zero): a no-op merge must fail below
        for p in params.values():
            p.add_(0.2 * torch.randn_like(p))
    start = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.AdamW(params.values(), lr=1e-2)
    scaler = torch.amp.GradScaler("cuda")
    for _ in range(5):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        assert torch.isfinite(loss)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params.values())
    assert any(not torch.equal(p, start[n]) for n, p in params.items() if "head" not in n and "fc" not in n)
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        before = model(x).float()
        visionpeft.merge(model)
        after = model(x).float()
    assert (before - plain).abs().max() > 0.1  # the adapter matters more than the tolerance below
    assert torch.allclose(before, after, atol=2e-2, rtol=2e-2)  # fp16 compute on both sides
