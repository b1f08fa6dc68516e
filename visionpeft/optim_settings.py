"""Optimizer settings per strategy: each trainable tensor's owner, learning rate and weight decay.

Both tasks use this, and only this: the classification optimizer builds its groups from :func:`param_settings`,
the Ultralytics trainer splits Ultralytics' own groups with :func:`owner_settings`; both resolve a tensor's rate
and decay with :func:`resolve` (the task supplies only its recipe-wide rate and decay). The rules:

* **owner**: the strategy that trains a tensor (the trainability plan's owner; the classifier modules are
  ``head`` in classification whatever the plan says, so they keep ``head_lr`` under full fine-tuning too).
* **learning rate**: the strategy entry's ``lr``, else the recipe's (``optim.lr``; ``optim.head_lr`` for the
  head), else the method's default :data:`DEFAULT_LR`. LoRA+ (``loraplus_lr_ratio`` on a LoRA-family entry)
  multiplies the rate of tensors named ``*lora_B`` (Hayou et al., 2024).
* **weight decay**: none for biases, 1-D tensors (norm affines) and what the model lists in timm's
  ``no_weight_decay()`` (position embedding, class/register/distillation tokens); else the strategy entry's
  ``weight_decay`` (VPT prompts: 0 by default), else the recipe's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["DEFAULT_LR", "SGD_LR_FACTOR", "OwnerSettings", "default_lr", "owner_settings", "param_settings",
           "resolve", "no_weight_decay_names", "shared_lr_problem"]

#: AdamW learning rates per method for batches of about 32 (scale roughly linearly with the batch). Source: the
#: grid of ``benchmarks/transfer_vit.py`` (ViT-Tiny/16 ImageNet, flowers5_128 subset, best validation top-1; the
#: values tried and their scores are in ``docs/benchmarks.md``): full 1e-4, VPT 1e-3 and BitFit 1e-3 are its
#: picks; for LoRA (1e-3 vs 3e-3) and the head (5e-3 vs 2e-2) the grid's two best were within noise and the
#: lower, safer rate is the default. They agree with the papers' ranges: full fine-tuning an order of magnitude
#: below adapters (Steiner et al. 2021, "How to train your ViT"); LoRA 2e-4..5e-3 (Hu et al. 2021; HF PEFT's
#: ViT example 5e-3); BitFit 1e-4..1e-3 with Adam (Ben Zaken et al. 2022). ``freeze`` trains the unfrozen rest
#: in full, so it shares full fine-tuning's rate; ``norm`` shares BitFit's (both tune affine vectors only);
#: ``head`` is the re-initialised classifier. Change them when your batch size differs a lot (linear scaling)
#: or a compare on your data says otherwise (give entries their own ``lr``).
DEFAULT_LR: dict[str, float] = {
    "full": 1e-4,
    "freeze": 1e-4,
    "head": 5e-3,
    "lora": 1e-3,
    "dora": 1e-3,
    "vpt": 1e-3,
    "bitfit": 1e-3,
    "norm": 1e-3,
    # LoKr: 1e-2, measured twice on ViT-Tiny/16 flowers: the ViT grid (docs/benchmarks.md, "DoRA, LoHa, LoKr,
    # SSF and AdaptFormer": validation top-1 1e-3 0.488, 3e-3 0.528, 1e-2 0.600) and held-out flowers (issue 22:
    # at 1e-3 worse than full fine-tuning by 0.038, at 1e-2 tied, +0.004); the per-method study confirmed it on ViT
    # flowers (0.680 vs 0.584 at 3e-3). EfficientNet-Lite0 preferred 3e-3 on both data sets (+0.02, +0.05): one rate
    # cannot serve both families; ``lr_grid: auto`` tries 3e-3 for a CNN compare.
    "lokr": 1e-2,
    # AdaptFormer: 1e-2, the pick of three ViT-Tiny grids (docs/benchmarks.md): issue 12's flowers grid (1e-3 0.504,
    # 3e-3 0.512, 1e-2 0.632) and the per-method study (benchmarks/lr_study.py: x10 won on flowers and hymenoptera,
    # +0.02 and +0.03 top-1 over 1e-3).
    "adaptformer": 1e-2,
    # Not changed, by the per-method study (ViT-Tiny and EfficientNet-Lite0 on flowers5_128 and hymenoptera, x0.3 /
    # 1 / 3 / 10 of these rates): no other factor won on most settings by more than the noise of one cell. LoHa's x10
    # won on three of four settings, but by 0.014 top-1 on average; VPT's 1e-3 won at 96-112 px (1e-2 was far
    # worse there), where 1e-2 had beaten it once at 224 px (issue 22); BitFit and SSF picks scattered around 1x.
    "loha": 1e-3,
    "ssf": 1e-3,
}
#: Methods without an entry above (future adapters) default to this adapter-like rate.
FALLBACK_LR = 1e-3
#: SGD with momentum wants roughly ten times AdamW's rate (rule of thumb, not measured here).
SGD_LR_FACTOR = 10.0


def default_lr(method: str, optimizer: str = "adamw") -> float:
    """The documented default learning rate of ``method`` for ``optimizer`` (``adamw`` or ``sgd``)."""
    lr = DEFAULT_LR.get(method, FALLBACK_LR)
    return lr * SGD_LR_FACTOR if optimizer == "sgd" else lr


@dataclass(frozen=True)
class OwnerSettings:
    """What one strategy says about the optimizer for one tensor.

    Attributes:
        owner: group label: the owning method, plus ``/lora_B`` for LoRA+ B matrices.
        method: the owning method (``lora``, ``head``, ``full``...).
        lr: the strategy entry's own learning rate (``None``: the recipe's or the default).
        lr_scale: multiplier on the resolved rate (LoRA+ ratio for ``lora_B``, else 1).
        weight_decay: the entry's own weight decay (``None``: the recipe's).
        no_decay: the tensor is never decayed (bias, 1-D, ``no_weight_decay()``).
    """

    owner: str
    method: str
    lr: float | None
    lr_scale: float
    weight_decay: float | None
    no_decay: bool


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Parameter names the model exempts from weight decay (timm's ``no_weight_decay()``; empty if absent)."""
    fn = getattr(model, "no_weight_decay", None)
    if not callable(fn):
        return set()
    try:
        return {str(n) for n in fn()}
    except (TypeError, AttributeError):
        return set()


def _first_config_per_method(configs: Iterable[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cfg in configs:
        out.setdefault(cfg.method, cfg)
    return out


def _in_modules(name: str, modules: Sequence[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def owner_settings(model: nn.Module, plan: Any, configs: Iterable[Any],
                   head_modules: Sequence[str] = ()) -> dict[str, OwnerSettings]:
    """Settings of every trainable parameter of ``model``, by parameter name.

    ``configs`` are the applied strategy configs (``visionpeft.api.get_state(model).configs``); when a
    method is listed twice, its first entry's settings apply to all its tensors. ``head_modules`` makes the
    classifier a ``head`` owner regardless of the plan (classification).
    """
    by_method = _first_config_per_method(configs)
    nwd = no_weight_decay_names(model)
    out: dict[str, OwnerSettings] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        method = "head" if _in_modules(name, head_modules) else plan.trainable.get(name, "base")
        cfg = by_method.get(method)
        ratio = getattr(cfg, "loraplus_lr_ratio", None)
        loraplus = ratio is not None and name.rsplit(".", 1)[-1] == "lora_B"
        out[name] = OwnerSettings(
            owner=method + ("/lora_B" if loraplus else ""), method=method,
            lr=getattr(cfg, "lr", None), lr_scale=float(ratio) if loraplus else 1.0,
            weight_decay=getattr(cfg, "weight_decay", None),
            no_decay=p.ndim <= 1 or name.endswith(".bias") or name in nwd,
        )
    return out


def resolve(s: OwnerSettings, *, lr: float, weight_decay: float, no_decay: bool = False) -> tuple[float, float]:
    """A tensor's learning rate and weight decay from its owner's settings and the task's recipe-wide values.

    Rate: the entry's ``lr``, else ``lr``; times the LoRA+ ratio (``lora_B``). Decay: 0 for a no-decay tensor
    (bias, 1-D such as norm affines and SSF scale/shift, ``no_weight_decay()``; ``no_decay`` adds the task's own
    no-decay tensors), else the entry's ``weight_decay`` (VPT prompts: 0 by default), else ``weight_decay``.
    """
    rate = (s.lr or lr) * s.lr_scale
    decay = 0.0 if s.no_decay or no_decay else (s.weight_decay if s.weight_decay is not None else weight_decay)
    return rate, decay


@dataclass(frozen=True)
class ParamSetting:
    """A tensor's resolved optimizer setting: group label, learning rate, weight decay."""

    owner: str
    lr: float
    weight_decay: float


def param_settings(model: nn.Module, plan: Any, configs: Iterable[Any], *, lr: float | None,
                   weight_decay: float, optimizer: str = "adamw", head_lr: float | None = None,
                   head_modules: Sequence[str] = ()) -> dict[str, ParamSetting]:
    """Resolved learning rate and weight decay of every trainable parameter (classification).

    Learning rate: entry ``lr`` > (``head_lr`` for the head) > ``lr`` > :func:`default_lr`; times the LoRA+
    ratio for ``lora_B``. Weight decay: 0 for no-decay tensors, else entry ``weight_decay`` > ``weight_decay``.
    """
    out: dict[str, ParamSetting] = {}
    for name, s in owner_settings(model, plan, configs, head_modules).items():
        recipe_lr = (head_lr or lr) if s.method == "head" else lr
        rate, wd = resolve(s, lr=recipe_lr or default_lr(s.method, optimizer), weight_decay=weight_decay)
        out[name] = ParamSetting(owner=s.owner, lr=rate, weight_decay=wd)
    return out


def shared_lr_problem(runs: Mapping[str, Sequence[Mapping[str, Any]]], lr: float | None) -> str | None:
    """Why one recipe-wide ``lr`` must not drive these compare runs, or ``None`` when it may.

    A compare whose runs would train methods with different defaults (full fine-tuning next to adapters or
    prompts) at the same recipe ``lr`` compares learning rates, not methods. Strategy entries with their own
    ``lr`` and the head (``head_lr``) do not count.
    """
    if lr is None:
        return None
    users: dict[float, list[str]] = {}
    for run, entries in runs.items():
        for e in entries:
            if e["method"] != "head" and e.get("lr") is None:
                users.setdefault(default_lr(e["method"]), []).append(f"{run}.{e['method']}")
    if len(users) < 2:
        return None
    defaults = ", ".join(f"{m} {default_lr(m):g}" for m in sorted({u.split('.')[-1] for v in users.values()
                                                                     for u in v}))
    return (f"optim.lr: one rate ({lr:g}) for every run of this compare would train "
            f"{', '.join(sorted(u for v in users.values() for u in v))} alike, but full fine-tuning wants about "
            f"10x less than adapters and prompts; remove optim.lr to use each method's default ({defaults}) or "
            "give each strategy entry its own lr (the baseline: compare.full: [{method: full, lr: 1e-4}])")
