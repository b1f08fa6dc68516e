"""Parameter budgets: per-layer ranks (lora, dora, loha) and VPT tokens from a fraction of the model (issue 10).

The fraction is the adapter's share of the adapted model, as the plan counts ``trainable %``; the head strategy
is not part of a budget. Costs are never re-derived here: each check counts the parameters of layers built.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import visionpeft
from visionpeft.errors import ConfigError
from visionpeft.strategies.budget import LOWER, budget_limit, solve_ranks
from visionpeft.strategies.importance import GradientProbe
from visionpeft.strategies.registry import build, parse_config
from visionpeft.strategies.targets import Target


def _vit(depth: int = 12) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)  # the same base every call (saved adapters check the base weights)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=depth, num_classes=5)


def _resnet18() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("resnet18", pretrained=False, num_classes=5)


def _yolov8n() -> nn.Module:
    from visionpeft.backends.ultralytics import build_model

    torch.manual_seed(0)
    return build_model("yolov8n.yaml")


MODELS = {"vit_tiny": _vit, "resnet18": _resnet18, "yolov8n": _yolov8n}


def _fraction(plan, method: str) -> float:
    return plan.by_strategy[method] / plan.total


# ---------------------------------------------------------------- the per-rank cost is the built layer's


LAYERS = {
    "linear": lambda: nn.Linear(12, 20),
    "conv3x3": lambda: nn.Conv2d(8, 16, 3, padding=1),
    "grouped": lambda: nn.Conv2d(8, 16, 3, padding=1, groups=2),
    "depthwise": lambda: nn.Conv2d(16, 16, 3, padding=1, groups=16),
    "pointwise": lambda: nn.Conv2d(16, 24, 1),
}


@pytest.mark.parametrize("method", ["lora", "dora", "loha"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_budget_cost_counts_the_parameters_of_the_built_layer(method, kind):
    strategy = build([{"method": method, "budget": 0.01}])[0]
    layer = LAYERS[kind]()
    for rank in (1, 2, 3, 5):
        t = Target("x", layer, rank, float(rank))
        built = strategy.make_layer(t)
        assert strategy.cost(t) == built.adapter_param_count(), (kind, rank)


def test_lora_conv_rank_costs_in_times_k2_plus_out_whatever_the_groups():
    # visionpeft's conv LoRA has rank r per group (lora_A: (r * g, in / g, k, k)), so one rank costs
    # in * k * k + out for any groups: grouped 8 -> 16 (g=2), 3x3: 8 * 9 + 16.
    strategy = build([{"method": "lora", "budget": 0.01}])[0]
    conv = LAYERS["grouped"]()
    costs = [strategy.cost(Target("x", conv, r, 1.0)) for r in (1, 2, 3)]
    assert costs == [88, 176, 264]
    assert strategy.max_rank(Target("x", conv, 1, 1.0)) == min(16 // 2, 8 // 2 * 9)


def test_qv_segments_cost_and_full_rank():
    strategy = build([{"method": "lora", "budget": 0.01, "qkv": "qv"}])[0]
    qkv = nn.Linear(8, 24)
    t = Target("attn.qkv", qkv, 2, 2.0, segments=((0, 8), (16, 24)))
    assert strategy.cost(t) == strategy.make_layer(t).adapter_param_count() == 2 * 2 * 8 + 2 * 16
    assert strategy.max_rank(t) == 8


# ---------------------------------------------------------------- the solver


def test_uniform_solver_fills_the_budget_with_ranks_one_apart():
    costs = [lambda r, c=c: r * c for c in (100, 100, 37, 250)]
    limit = 2000
    ranks = solve_ranks(costs, [64] * 4, limit)
    total = sum(c(r) for c, r in zip(costs, ranks))
    assert total <= limit and max(ranks) - min(ranks) <= 1
    # Nothing more fits: every single raise would exceed the limit.
    assert all(c(r + 1) - c(r) > limit - total for c, r in zip(costs, ranks))


def test_solver_respects_caps_and_gives_rank_one_at_least():
    costs = [lambda r: r * 10, lambda r: r * 10]
    assert solve_ranks(costs, [2, 50], 1000) == [2, 50]
    assert solve_ranks(costs, [5, 5], 20) == [1, 1]


def test_importance_solver_follows_the_scores():
    costs = [lambda r: r * 100] * 4
    ranks = solve_ranks(costs, [64] * 4, 4000, importance=[1.0, 1.0, 4.0, 2.0])
    assert sum(r * 100 for r in ranks) <= 4000
    assert ranks[2] > ranks[3] > ranks[0] == ranks[1] >= 1
    assert ranks[2] == pytest.approx(4 * ranks[0], abs=2)
    # Equal scores: the uniform allocation.
    assert solve_ranks(costs, [64] * 4, 4000, importance=[3.0] * 4) == solve_ranks(costs, [64] * 4, 4000)


# ---------------------------------------------------------------- budgets on real models


#: Rank 1 on every default target costs 0.67% of vit_tiny and 0.74% of yolov8n: below that, fewer targets.
QV = {"targets": ["qkv"], "qkv": "qv"}


@pytest.mark.parametrize(
    ("name", "budget", "options"),
    [("vit_tiny", 0.005, QV), ("vit_tiny", 0.01, {}), ("vit_tiny", 0.05, {}), ("resnet18", 0.005, {}),
     ("resnet18", 0.01, {}), ("resnet18", 0.05, {}), ("yolov8n", 0.005, {"targets": ["model.[1-5].*"]}),
     ("yolov8n", 0.01, {}), ("yolov8n", 0.05, {})],
)
def test_lora_budget_lands_within_90_to_100_percent(name, budget, options):
    model = MODELS[name]()
    base = sum(p.numel() for p in model.parameters())
    plan = visionpeft.apply(model, [{"method": "lora", "budget": budget, **options}])
    frac = _fraction(plan, "lora")
    assert LOWER * budget <= frac <= budget, frac
    assert plan.trainable_count == plan.by_strategy["lora"] <= budget_limit(budget, base)
    (record,) = plan.resolved
    assert record["fraction"] == pytest.approx(frac) and record["adapter_params"] == plan.by_strategy["lora"]
    ranks = record["ranks"]
    layers = visionpeft.strategies.lora.lora_layers(model)
    assert {n: m.rank for n, m in layers.items()} == ranks and min(ranks.values()) >= 1
    assert max(ranks.values()) - min(ranks.values()) <= 1 or name == "yolov8n"  # yolo: full-rank caps


@pytest.mark.parametrize("method", ["dora", "loha"])
def test_dora_and_loha_budgets(method):
    for budget in (0.02, 0.05):  # loha at rank 1 on every default target of this 4-block ViT: 1.26%
        plan = visionpeft.apply(_vit(depth=4), [{"method": method, "budget": budget}])
        assert LOWER * budget <= _fraction(plan, method) <= budget


def test_head_is_not_part_of_the_budget():
    plain = visionpeft.apply(_vit(depth=4), [{"method": "lora", "budget": 0.02}])
    headed = visionpeft.apply(_vit(depth=4), [{"method": "lora", "budget": 0.02}, {"method": "head"}])
    assert headed.by_strategy["lora"] == plain.by_strategy["lora"] and headed.by_strategy["head"] == 192 * 5 + 5
    assert plain.resolved[0]["ranks"] == headed.resolved[0]["ranks"]


def test_budget_below_rank_one_everywhere_names_the_minimum():
    with pytest.raises(ConfigError, match=r"lora.budget: 0.005 is below what rank 1 on each of the 44 target "
                                          r"layers costs .* raise the budget to at least 0.007.* adapt fewer layers"):
        visionpeft.apply(_yolov8n(), [{"method": "lora", "budget": 0.005}])


def test_budget_above_full_rank_adapters_is_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="more than full-rank adapters on all 2 target layers can use"):
        visionpeft.apply(model, [{"method": "lora", "budget": 0.9}], spec=visionpeft.ModelSpec())


def test_importance_without_training_batches_is_one_clear_error():
    with pytest.raises(ConfigError, match="allocation: importance needs a few training batches.*use allocation: "
                                          "uniform"):
        visionpeft.apply(_yolov8n(), [{"method": "lora", "budget": 0.02, "allocation": "importance"}])


# ---------------------------------------------------------------- importance


class _Planted:
    """Loss = sum_l c_l * sum(W_l): the mean |gradient| of layer l's weight is exactly c_l."""

    def __init__(self, names: list[str], scale: dict[str, float]) -> None:
        self.names, self.scale, self.calls = names, scale, 0

    def __call__(self, model: nn.Module, n: int):
        for _ in range(n):
            self.calls += 1
            yield sum(self.scale.get(k, 1.0) * model.get_submodule(k).weight.sum() for k in self.names)


def test_importance_gives_unequal_ranks_that_follow_a_planted_importance():
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(4)])
    names = ["0", "1", "2", "3"]
    planted = _Planted(names, {"2": 6.0, "3": 2.0})
    plan = visionpeft.apply(model, [{"method": "lora", "budget": 0.2, "allocation": "importance",
                                     "importance_batches": 3}], spec=visionpeft.ModelSpec(),
                            probe=GradientProbe(planted))
    assert planted.calls == 3
    record = plan.resolved[0]
    assert record["importance"] == pytest.approx({"0": 1.0, "1": 1.0, "2": 6.0, "3": 2.0})
    r = record["ranks"]
    assert r["2"] > r["3"] > r["0"] == r["1"] >= 1 and r["2"] == pytest.approx(6 * r["0"], abs=2)
    assert LOWER * 0.2 <= _fraction(plan, "lora") <= 0.2
    assert all(p.grad is None for p in model.parameters())  # gradients were taken, never accumulated


def test_importance_on_a_vit_follows_a_scaled_gradient():
    """Real cross-entropy on a ViT; one layer's weight gradient is scaled x50 by a hook: it gets the top rank."""
    model = _vit(depth=2)
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    hot = model.get_submodule("blocks.1.mlp.fc1").weight
    handle = hot.register_hook(lambda g: g * 50)

    def losses(m: nn.Module, n: int):
        for _ in range(n):
            yield nn.functional.cross_entropy(m(x), y)

    model.train()
    plan = visionpeft.apply(model, [{"method": "lora", "budget": 0.05, "allocation": "importance"}],
                            probe=GradientProbe(losses))
    handle.remove()
    ranks = plan.resolved[0]["ranks"]
    assert ranks["blocks.1.mlp.fc1"] == max(ranks.values()) > min(ranks.values())
    assert len(set(ranks.values())) > 2  # not the uniform allocation
    assert LOWER * 0.05 <= _fraction(plan, "lora") <= 0.05
    assert model.training and all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- VPT


@pytest.mark.parametrize(("mode", "budget"), [("shallow", 0.0002), ("deep", 0.001), ("deep", 0.01)])
def test_vpt_budget_picks_the_most_tokens_that_fit(mode, budget):
    model = _vit(depth=4)
    base = sum(p.numel() for p in model.parameters())
    plan = visionpeft.apply(model, [{"method": "vpt", "budget": budget, "mode": mode}])
    per_token = 192 * (4 if mode == "deep" else 1)
    tokens = plan.resolved[0]["tokens"]
    assert model.vpt.prompts.shape == (4 if mode == "deep" else 1, tokens, 192)
    assert tokens * per_token / (base + tokens * per_token) <= budget
    assert (tokens + 1) * per_token / (base + (tokens + 1) * per_token) > budget
    assert _fraction(plan, "vpt") == pytest.approx(plan.resolved[0]["fraction"])


def test_vpt_budget_below_one_token_is_refused():
    with pytest.raises(ConfigError, match=r"vpt.budget: 1e-05 is below what one prompt token costs .* use mode: "
                                          "shallow"):
        visionpeft.apply(_vit(depth=4), [{"method": "vpt", "budget": 1e-5, "mode": "deep"}])


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"method": "lora", "budget": 0.01, "rank": 4}, "budget and rank are mutually exclusive"),
        ({"method": "dora", "budget": 0.01, "rank_pattern": {"qkv": 2}}, "budget and rank_pattern are mutually"),
        ({"method": "lora", "budget": 1}, r"strategies.0.budget: expected a fraction .* in \(0, 1\), e.g. 0.01"),
        ({"method": "loha", "budget": 0}, r"strategies.0.budget: expected a fraction"),
        ({"method": "lora", "budget": -0.1}, r"strategies.0.budget: expected a fraction"),
        ({"method": "lora", "allocation": "importance"}, "allocation only applies with a budget"),
        ({"method": "lora", "budget": 0.01, "allocation": "grad"}, "strategies.0.allocation: Input should be"),
        ({"method": "lokr", "budget": 0.01}, "budget is not supported for lokr"),
        ({"method": "vpt", "budget": 0.01, "tokens": 5}, "budget and tokens are mutually exclusive"),
        ({"method": "vpt", "budget": 2}, "strategies.0.budget: expected a fraction"),
    ],
)
def test_bad_budget_entries_are_one_clear_line(entry, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(entry, "strategies.0")
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


@pytest.mark.parametrize("entry", [{"method": "lora", "budget": 0.01, "allocation": "importance"},
                                   {"method": "loha", "budget": 0.02}, {"method": "vpt", "budget": 0.001},
                                   {"method": "lora", "rank": 4}, {"method": "vpt", "tokens": 3}])
def test_dumps_parse_again(entry):
    cfg = parse_config(entry)
    dumped = cfg.model_dump(mode="json")
    assert parse_config(dumped) == cfg
    assert ("budget" in dumped) == ("budget" in entry)
    # The budget chooses ranks / tokens: a budget dump has neither (and parses again without a clash).
    sized = "tokens" if entry["method"] == "vpt" else "rank"
    assert (sized in dumped) == ("budget" not in entry)


def test_recipe_override_with_a_bad_budget(tmp_path):
    from visionpeft.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("model: test_efficientnet\ndata: datasets/digits.yaml\nstrategies: [{method: lora}]\n")
    assert load_recipe(path, ["strategies.0.budget=0.02"]).strategies[0]["budget"] == 0.02
    with pytest.raises(ConfigError, match=r"strategies.0.budget: expected a fraction .*\(got 1.5\)"):
        load_recipe(path, ["strategies.0.budget=1.5"])


# ---------------------------------------------------------------- saved adapters


@torch.no_grad()
def _nontrivial(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    for p in model.parameters():
        if p.requires_grad:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)


def test_importance_ranks_round_trip_through_a_saved_adapter_and_merge_exactly(tmp_path):
    """Ranks chosen from data are recorded (adapter.json) and reused on load: no probe, same shapes, same
    outputs; merging gives the original architecture with the same outputs (float64)."""
    model = _vit(depth=2).double()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")]
    probe = GradientProbe(_Planted(names, {"blocks.0.attn.qkv": 8.0, "blocks.1.mlp.fc2": 3.0}))
    visionpeft.apply(model, [{"method": "lora", "budget": 0.05, "allocation": "importance"}, {"method": "head"}],
                     probe=probe)
    _nontrivial(model)
    visionpeft.save_adapter(model, tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / "adapter.json").read_text())
    ranks = meta["plan"]["resolved"][0]["ranks"]
    assert len(set(ranks.values())) > 1 and ranks["blocks.0.attn.qkv"] == max(ranks.values())

    fresh = _vit(depth=2).double()
    plan = visionpeft.load_adapter(fresh, tmp_path / "adapter")
    assert plan.resolved[0]["ranks"] == ranks
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model.eval(), fresh.eval()
    out = model(x)
    torch.testing.assert_close(fresh(x), out, rtol=0, atol=1e-12)
    visionpeft.merge(fresh)
    plain = _vit(depth=2).double().eval()
    plain.load_state_dict(fresh.state_dict(), strict=True)
    torch.testing.assert_close(plain(x), out, rtol=0, atol=1e-10)


def test_uniform_budget_round_trips_on_yolo(tmp_path):
    model = _yolov8n()
    visionpeft.apply(model, [{"method": "loha", "budget": 0.02}])
    _nontrivial(model)
    visionpeft.save_adapter(model, tmp_path / "adapter")
    fresh = _yolov8n()
    plan = visionpeft.load_adapter(fresh, tmp_path / "adapter")
    assert plan.resolved == visionpeft.get_plan(model).resolved
    sd, fsd = model.state_dict(), fresh.state_dict()
    assert all(torch.equal(sd[k], fsd[k]) for k in plan.trainable)


def test_a_plan_pickled_before_budgets_existed_loads_with_nothing_resolved():
    import pickle

    plan = visionpeft.apply(nn.Sequential(nn.Linear(4, 4)), [{"method": "lora", "rank": 2}],
                            spec=visionpeft.ModelSpec())
    old = pickle.loads(pickle.dumps(plan))
    del old.__dict__["resolved"]  # what an Ultralytics checkpoint written before this change holds
    again = pickle.loads(pickle.dumps(old))
    assert again.resolved == [] and "resolved" in again.to_dict() and again.summary() == plan.summary()
