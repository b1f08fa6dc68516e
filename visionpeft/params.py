"""Parameter report: total, trainable, by strategy and module type, adapter bytes."""

from __future__ import annotations

from typing import Any

from .api import get_state, unwrap
from .plan import TrainabilityPlan


def parameter_report(model: Any) -> dict[str, Any]:
    """Counts for ``model`` (adapted or plain).

    Keys: ``total``, ``trainable``, ``trainable_pct``, ``frozen``, ``by_strategy``, ``by_module_type``,
    ``adapter_bytes`` (size of ``adapter.safetensors`` tensors), ``bn_modes``, ``strategies``, ``labels``.
    """
    root = unwrap(model)
    state = get_state(root)
    if state is None:
        plan = TrainabilityPlan.build(root, {}, "eval", [])
    else:
        plan = TrainabilityPlan.build(root, state.plan.trainable, "eval", state.plan.strategies, state.plan.labels)
        plan.bn_modes = state.plan.bn_modes
    from .adapter_io import adapter_tensors

    tensors = adapter_tensors(root, plan) if state is not None else {}
    modes: dict[str, int] = {}
    for m in plan.bn_modes.values():
        modes[m] = modes.get(m, 0) + 1
    return {
        "total": plan.total,
        "trainable": plan.trainable_count,
        "trainable_pct": plan.trainable_pct,
        "frozen": plan.total - plan.trainable_count,
        "by_strategy": plan.by_strategy,
        "by_module_type": plan.by_module_type,
        "adapter_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "bn_modes": modes,
        "strategies": plan.strategies,
        "labels": plan.labels,
    }


def format_parameter_report(report: dict[str, Any], title: str = "") -> str:
    """Plain-text rendering of :func:`parameter_report` for the CLI and logs."""
    lines = [title] if title else []
    lines += [
        f"strategies      {' -> '.join(report.get('labels') or report['strategies']) or '(none: plain model)'}",
        f"total           {report['total']:>14,}",
        f"trainable       {report['trainable']:>14,}  ({report['trainable_pct']:.4f}%)",
        f"frozen          {report['frozen']:>14,}",
        f"adapter bytes   {report['adapter_bytes']:>14,}",
    ]
    for key in ("by_strategy", "by_module_type"):
        if report[key]:
            lines.append(key.replace("_", " ") + ":")
            lines += [f"  {k:<22}{v:>14,}" for k, v in sorted(report[key].items(), key=lambda kv: -kv[1])]
    if report["bn_modes"]:
        lines.append("batchnorm       " + ", ".join(f"{k}={v}" for k, v in sorted(report["bn_modes"].items())))
    return "\n".join(lines)
