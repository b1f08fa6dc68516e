"""Every strategy on Ultralytics' YOLO26 semantic (``yolo26n-sem.yaml``) and depth (``yolo26n-depth.yaml``) models:
it applies, trains something, and merges exactly (float64) into a plain Ultralytics model that also fuses exactly.

Adapters start as the identity (LoRA's B is zero), which would make any merge look exact: every trainable tensor
is moved by random noise first.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("ultralytics")

import visionpeft  # noqa: E402
from visionpeft.backends.ultralytics import build_model  # noqa: E402

from ..ultralytics_support import EVERY_METHOD  # noqa: E402

MODELS = {"semantic": "yolo26n-sem.yaml", "depth": "yolo26n-depth.yaml"}
METHODS = EVERY_METHOD


@pytest.fixture(scope="module", params=sorted(MODELS))
def base(request):
    torch.manual_seed(0)
    return request.param, build_model(MODELS[request.param], nc=3 if request.param == "semantic" else None)


def _out(model, x):
    with torch.no_grad():
        y = model.eval()(x)
    return y[0] if isinstance(y, tuple | list) else y


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m["method"])
def test_applies_and_merges_exactly(base, method):
    task, plain = base
    model = copy.deepcopy(plain).double()
    strategies = [method] if method["method"] in ("head", "freeze") else [method, {"method": "head"}]
    plan = visionpeft.apply(model, strategies)
    assert plan.by_strategy[method["method"]] > 0
    assert 0 < plan.trainable_count < plan.total
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    x = torch.rand(2, 3, 64, 64, generator=gen, dtype=torch.float64)
    adapted = _out(model, x)
    assert adapted.shape[0] == 2 and adapted.shape[1] == (3 if task == "semantic" else 1)
    visionpeft.merge(model)
    assert not any(type(m).__module__.startswith("visionpeft") for m in model.modules())
    assert visionpeft.get_plan(model) is None
    torch.testing.assert_close(_out(model, x), adapted, rtol=1e-5, atol=1e-9)
    fused = copy.deepcopy(model).fuse(verbose=False)  # Ultralytics' Conv+BN fusion, as predict/val/export do
    torch.testing.assert_close(_out(fused, x), adapted, rtol=1e-5, atol=1e-9)
