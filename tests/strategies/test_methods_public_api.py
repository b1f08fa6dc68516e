"""DoRA, LoHa, LoKr, SSF and AdaptFormer through the public API: golden counts, identity at init, training
changes exactly the claimed tensors, the adapter round trip, merge (or its refusal) and config errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import visionpeft
from tests.fixtures import tiny_cnn
from tests.strategies.test_lora_strategy import TinyViT
from visionpeft.errors import ConfigError
from visionpeft.spec import ModelSpec
from visionpeft.strategies import registry

CNN_SPEC = ModelSpec(head=("fc",), blocks=("stem", "block", "dw"))
VIT_SPEC = ModelSpec(head=("head",), blocks=("blocks.0", "blocks.1", "blocks.2"),
                     mlp_modules=("blocks.0.mlp", "blocks.1.mlp", "blocks.2.mlp"))
CNN_HEAD, VIT_HEAD = 16 * 4 + 4, 8 * 3 + 3

# method entry, model, spec, golden adapter parameter count (arithmetic), input shape
CASES = {
    # stem conv 3->8 k3, block conv 8->16 k3 groups 2; the depthwise conv is skipped (adapter > layer).
    "dora": ({"method": "dora", "rank": 2}, "cnn", 2 * (3 * 3 * 3 + 8) + 8 + 2 * (8 * 3 * 3 + 16) + 16),
    # 2 * rank * (out + in / groups * k * k) per conv, the depthwise one included (100 <= 144 weights).
    "loha": ({"method": "loha", "rank": 2}, "cnn", 2 * 2 * (8 + 3 * 3 * 3) + 2 * 2 * (16 + 4 * 3 * 3)
             + 2 * 2 * (16 + 1 * 3 * 3)),
    # kron(W1, W2): out 8 = 2 x 4, in 3 = 1 x 3; out 16 = 4 x 4, in/g 4 = 2 x 2; in/g 1 = 1 x 1. Rank 2 is not
    # below max(b, d) / 2 = 2, so each W2 is stored in full (b x d x 3 x 3).
    "lokr": ({"method": "lokr", "rank": 2}, "cnn", (2 * 1 + 4 * 3 * 3 * 3) + (4 * 2 + 4 * 2 * 3 * 3)
             + (4 * 1 + 4 * 1 * 3 * 3)),
    # scale + shift after stem conv, stem BN, block conv, block BN and the depthwise BN (dw conv has no bias).
    "ssf": ({"method": "ssf"}, "cnn", 2 * (8 + 8 + 16 + 16 + 16)),
    # down (8 x 4 + 4) and up (4 x 8 + 8) beside each of the 3 MLPs.
    "adaptformer": ({"method": "adaptformer", "bottleneck": 4}, "vit", 3 * (8 * 4 + 4 + 4 * 8 + 8)),
}


def _model(kind: str, seed: int = 0) -> nn.Module:
    if kind == "cnn":
        return tiny_cnn(seed)
    torch.manual_seed(seed)
    return TinyViT()


def _setup(method: str):
    entry, kind, count = CASES[method]
    spec = CNN_SPEC if kind == "cnn" else VIT_SPEC
    x = torch.randn(4, 3, 8, 8) if kind == "cnn" else torch.randn(4, 5, 4)
    return entry, kind, count, spec, x


def _perturb(model: nn.Module, method: str) -> None:
    """Non-trivial adapter values (a no-op load or merge could not pass)."""
    g = torch.Generator().manual_seed(3)
    plan = visionpeft.get_plan(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if plan.trainable.get(name) == method:
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("method", list(CASES))
def test_golden_count_and_identity_at_init(method):
    entry, kind, count, spec, x = _setup(method)
    model = _model(kind).eval()
    before = model(x)
    plan = visionpeft.apply(model, [entry, {"method": "head"}], spec=spec)
    assert plan.by_strategy == {method: count, "head": CNN_HEAD if kind == "cnn" else VIT_HEAD}
    assert (model(x) - before).abs().max() <= 1e-6  # DoRA rescales by m / ||W|| = 1 up to rounding
    if method != "dora":
        assert torch.equal(model(x), before)


@pytest.mark.parametrize("method", list(CASES))
def test_training_changes_exactly_the_claimed_tensors(method):
    entry, kind, _, spec, x = _setup(method)
    model = _model(kind).train()
    plan = visionpeft.apply(model, [entry], spec=spec)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        out = model(x + 0.1 * torch.randn(x.shape, generator=g))
        loss = nn.functional.cross_entropy(out, torch.randint(0, out.shape[-1], (x.shape[0],), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == set(plan.trainable)  # frozen weights and BatchNorm statistics (eval policy) untouched
    assert set(plan.trainable.values()) == {method}


@pytest.mark.parametrize("method", list(CASES))
def test_adapter_round_trip_and_merge(method, tmp_path):
    entry, kind, _, spec, x = _setup(method)
    model = _model(kind).eval()
    plain_keys = list(model.state_dict())
    visionpeft.apply(model, [entry, {"method": "head"}], spec=spec)
    _perturb(model, method)
    expected = model(x)
    assert (expected - _model(kind).eval()(x)).abs().max() > 1e-3
    visionpeft.save_adapter(model, tmp_path)
    fresh = _model(kind).eval()
    visionpeft.load_adapter(fresh, tmp_path, spec=spec)
    assert torch.equal(fresh(x), expected)
    other = _model(kind, seed=1).eval()  # a different base is refused
    with pytest.raises(visionpeft.errors.AdapterMismatchError, match="base weights differ"):
        visionpeft.load_adapter(other, tmp_path, spec=spec)
    if method == "adaptformer":
        with pytest.raises(ConfigError, match="cannot be folded"):
            visionpeft.merge(fresh)
        return
    merged = visionpeft.merge(copy.deepcopy(fresh))
    assert list(merged.state_dict()) == plain_keys
    plain = _model(kind).eval()
    plain.load_state_dict(merged.state_dict(), strict=True)
    assert (plain(x) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"method": "dora", "rnak": 4}, "did you mean 'rank'"),
        ({"method": "dora", "qkv": "qk"}, "strategies.qkv"),
        ({"method": "loha", "rank": 0}, "strategies.rank: Input should be greater than 0"),
        ({"method": "lokr", "decompose_factor": -2}, "strategies.decompose_factor"),
        ({"method": "ssf", "init": "ones"}, "strategies.init"),
        ({"method": "ssf", "rank": 4}, "strategies.rank: unknown key"),
        ({"method": "adaptformer", "scale": 0}, "strategies.scale"),
        ({"method": "adaptformr"}, "did you mean 'adaptformer'"),
    ],
)
def test_bad_config_gives_clear_error(entry, expected):
    with pytest.raises(ConfigError) as err:
        registry.parse_config(entry)
    assert expected in str(err.value)


def test_dora_config_is_a_lora_config():
    """DoRA inherits every LoRA option (including those added to LoRAConfig later, such as LoRA+)."""
    from visionpeft.strategies.dora import DoRAConfig
    from visionpeft.strategies.lora import LoRAConfig

    cfg = registry.parse_config({"method": "dora", "rank": 4, "qkv": "qv", "use_rslora": True})
    assert isinstance(cfg, DoRAConfig) and isinstance(cfg, LoRAConfig)
    assert set(LoRAConfig.model_fields) == set(DoRAConfig.model_fields)


def test_one_adapter_per_layer_across_methods():
    model = tiny_cnn()
    plan = visionpeft.apply(model, [{"method": "lora", "rank": 2, "targets": ["block.0"]},
                                    {"method": "loha", "rank": 2, "targets": ["stem.0"]}], spec=CNN_SPEC)
    assert set(plan.by_strategy) == {"lora", "loha"}
    with pytest.raises(ConfigError, match="already carry a LoRA adapter"):
        visionpeft.apply(tiny_cnn(), [{"method": "lora", "rank": 2, "targets": ["block.0"]},
                                      {"method": "dora", "rank": 2, "targets": ["block.0"]}], spec=CNN_SPEC)
