"""VPT on timm ViT variants, checked against a hand-built token sequence in float64."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F

from visionpeft.backends.timm import build_model, timm_spec
from visionpeft.errors import ConfigError
from visionpeft.strategies.base import ApplyContext
from visionpeft.strategies.registry import parse_config
from visionpeft.strategies.vpt import VPTConfig, VPTStrategy, remove, vpt_init_bound

TOKENS = 3
VARIANTS = {
    "token": ("vit_tiny_patch16_224", {}),
    "avg_no_cls": ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}),
    "registers": ("vit_tiny_patch16_224", {"reg_tokens": 4}),
    "no_embed_class": ("vit_tiny_patch16_224", {"no_embed_class": True, "reg_tokens": 2}),
    "map_pool": ("vit_tiny_patch16_224", {"global_pool": "map"}),
    "dynamic": ("vit_tiny_patch16_224", {"dynamic_img_size": True}),
    "deit": ("deit_tiny_patch16_224", {}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}),
}


def _vit(variant: str, seed: int = 0):
    name, kw = VARIANTS[variant]
    torch.manual_seed(seed)
    # depth 3, 32 px with 8 px patches: 16 patch tokens; fast on a shared CPU.
    return build_model(name, 5, img_size=32, patch_size=8, depth=3, embed_dim=32, num_heads=2, **kw).eval()


def _apply(model, **cfg):
    strategy = VPTStrategy(VPTConfig(tokens=TOKENS, **cfg))
    return strategy.apply(model, ApplyContext(spec=timm_spec(model)))


def _reference(model, x: torch.Tensor, prompts: torch.Tensor, deep: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and logits built by hand: embed, insert prompts after the prefix, run the blocks
    (``forward`` bypasses hooks), strip the prompts, norm, pool, head."""
    n, p = model.num_prefix_tokens, prompts.shape[1]
    t = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    batch = t.shape[0]
    t = torch.cat([t[:, :n], prompts[0].expand(batch, -1, -1), t[:, n:]], dim=1)
    for i, block in enumerate(model.blocks):
        if deep and i > 0:
            t = torch.cat([t[:, :n], prompts[i].expand(batch, -1, -1), t[:, n + p :]], dim=1)
        t = block.forward(t)
    features = model.norm(torch.cat([t[:, :n], t[:, n + p :]], dim=1))
    return features, model.forward_head(features)


@pytest.mark.parametrize("mode", ["shallow", "deep"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_manual_reference_float64(variant: str, mode: str) -> None:
    model = _vit(variant)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        base = copy.deepcopy(model).double().forward_features(x)
    report = _apply(model, mode=mode)
    model.double()
    assert report.trainable == ["vpt.prompts"] and report.modules == ["vpt"]
    prompts = model.vpt.prompts
    assert prompts.shape == (3 if mode == "deep" else 1, TOKENS, 32)
    sizes = [(32, 32), (48, 40)] if variant == "dynamic" else [(32, 32)]
    for h, w in sizes:
        xi = torch.randn(2, 3, h, w, dtype=torch.float64) if (h, w) != (32, 32) else x
        with torch.no_grad():
            feats, logits = _reference(model, xi, prompts, deep=mode == "deep")
            assert torch.allclose(model.forward_features(xi), feats, rtol=0, atol=1e-10)
            assert torch.allclose(model(xi), logits, rtol=0, atol=1e-10)
    with torch.no_grad():
        assert (model.forward_features(x) - base).abs().max() > 1e-3  # the prompts change the features


def test_prompts_do_not_leak_into_average_pooling() -> None:
    model = _vit("avg_no_cls")
    _apply(model, mode="deep")
    model.double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    seen: dict[str, int] = {}

    def record(module, args, output) -> None:
        seen["tokens"] = args[0].shape[1]

    model.norm.register_forward_hook(record)
    with torch.no_grad():
        out = model(x)
        # What a leaking implementation would compute: prompts included in the mean.
        t = model._pos_embed(model.patch_embed(x))
        t = torch.cat([model.vpt.prompts[0].expand(2, -1, -1), t], dim=1)
        for i, block in enumerate(model.blocks):
            if i:
                t = torch.cat([model.vpt.prompts[i].expand(2, -1, -1), t[:, TOKENS:]], dim=1)
            t = block.forward(t)
        leaky = model.head(model.fc_norm(t.mean(dim=1)))
        clean = model.head(model.fc_norm(t[:, TOKENS:].mean(dim=1)))
    assert seen["tokens"] == 16  # norm sees the 16 patch tokens only
    assert torch.allclose(out, clean, rtol=0, atol=1e-10)
    assert (out - leaky).abs().max() > 1e-6


def test_prompt_positions_in_the_sequence() -> None:
    """Block inputs are [cls, reg x4, prompts, patches]; deep prompts are the layer's own."""
    model = _vit("registers")
    _apply(model, mode="deep")
    inputs = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().clone()))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert [t.shape[1] for t in inputs] == [1 + 4 + TOKENS + 16] * 3
    for layer, t in enumerate(inputs):
        assert torch.equal(t[:, 5 : 5 + TOKENS], model.vpt.prompts[layer].expand(2, -1, -1))


def test_only_prompts_train() -> None:
    model = _vit("token")
    for p in model.parameters():
        p.requires_grad_(False)
    _apply(model, mode="deep", dropout=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == ["vpt.prompts"]
    assert all(p.grad is None for n, p in model.named_parameters() if n != "vpt.prompts")


def test_gradient_checkpointing_gives_the_same_gradient() -> None:
    model = _vit("token")
    _apply(model, mode="deep")
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for ckpt in (False, True):
        model.set_grad_checkpointing(ckpt)
        model.vpt.prompts.grad = None
        model(x).square().sum().backward()
        grads.append(model.vpt.prompts.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_prompt_dropout_only_in_training() -> None:
    model = _vit("token")
    _apply(model, dropout=0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        assert not torch.allclose(a, model(x))


def test_init_range() -> None:
    model = _vit("token")
    _apply(model)
    bound = vpt_init_bound(8, 32)
    assert bound == pytest.approx(math.sqrt(6 / (3 * 64 + 32)))
    p = model.vpt.prompts
    assert p.abs().max() <= bound and p.abs().max() > bound / 2
    zeros = _vit("token")
    _apply(zeros, init="zeros")
    assert torch.count_nonzero(zeros.vpt.prompts) == 0


def test_deepcopy_and_pickle_keep_working_prompts() -> None:
    model = _vit("token")
    _apply(model, mode="deep")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        clone = copy.deepcopy(model)
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert torch.equal(clone(x), ref) and torch.equal(loaded(x), ref)
        # The copies' hooks use the copies' prompts, not the original's.
        # (a constant shift would be a no-op: each block's LayerNorm removes the token mean)
        clone.vpt.prompts.add_(torch.randn_like(clone.vpt.prompts))
        assert (clone(x) - ref).abs().max() > 1e-4
        assert torch.equal(model(x), ref)


def test_remove_restores_the_base_model() -> None:
    model = _vit("registers")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        base = model(x)
    keys = list(model.state_dict())
    _apply(model, mode="deep")
    clone = copy.deepcopy(model)
    for m in (model, clone):
        assert remove(m)
        assert list(m.state_dict()) == keys
        with torch.no_grad():
            assert torch.equal(m(x), base)
    assert not remove(model)


def test_errors() -> None:
    cnn = build_model("resnet18", 2)
    with pytest.raises(ConfigError, match="vpt needs a timm VisionTransformer"):
        VPTStrategy(VPTConfig()).apply(cnn, ApplyContext(spec=timm_spec(cnn)))
    model = _vit("token")
    _apply(model)
    with pytest.raises(ConfigError, match="applied twice"):
        _apply(model)
    with pytest.raises(ConfigError, match="cannot be folded"):
        VPTStrategy(VPTConfig()).merge(model)
    with pytest.raises(ConfigError, match="tokens"):
        parse_config({"method": "vpt", "tokens": 0})
    with pytest.raises(ConfigError, match="did you mean 'tokens'"):
        parse_config({"method": "vpt", "token": 5})


def test_with_public_apply_prompts_and_head_train() -> None:
    import visionpeft

    model = _vit("avg_no_cls")
    plan = visionpeft.apply(model, [{"method": "vpt", "tokens": TOKENS, "mode": "deep"}, {"method": "head"}])
    expected = {"vpt.prompts", "head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    assert set(plan.trainable) == expected
    assert plan.trainable_count == 3 * TOKENS * 32 + 32 * 5 + 5 + 2 * 32
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == expected
    with pytest.raises(ConfigError, match="cannot be folded"):
        visionpeft.merge(model)


def test_adapter_round_trip(tmp_path) -> None:
    import visionpeft

    strategies = [{"method": "vpt", "tokens": TOKENS, "mode": "deep"}, {"method": "head"}]
    model = _vit("registers")
    visionpeft.apply(model, strategies)
    with torch.no_grad():
        model.vpt.prompts.add_(torch.randn_like(model.vpt.prompts))
        model.head.weight.add_(1.0)
    visionpeft.save_adapter(model, tmp_path)
    fresh = _vit("registers")  # same seed: same base weights
    visionpeft.load_adapter(fresh, tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.vpt.prompts, model.vpt.prompts)
        assert torch.equal(fresh(x), model(x))
