"""Parameter report: total, trainable, by strategy and module type, adapter bytes."""

from __future__ import annotations

from typing import Any

from .api import get_state, unwrap
from .plan import TrainabilityPlan


def parameter_report(model: Any) -> dict[str, Any]:
    """Counts for ``model`` (adapted or plain).

    Keys: ``total``, ``trainable``, ``trainable_pct``, ``frozen``, ``by_strategy``, ``by_module_type``,
    ``adapter_bytes`` (size of ``adapter.safetensors`` tensors), ``bn_modes``, ``strategies``, ``labels`` and
    ``budgets``: per strategy with a parameter budget, what it resolved (:func:`budget_report`).
    """
    root = unwrap(model)
    state = get_state(root)
    if state is None:
        plan = TrainabilityPlan.build(root, {}, "eval", [])
    else:
        plan = TrainabilityPlan.build(root, state.plan.trainable, "eval", state.plan.strategies, state.plan.labels)
        plan.bn_modes = state.plan.bn_modes
        plan.resolved = state.plan.resolved
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
        "budgets": [budget_report(m, r) for m, r in zip(plan.strategies, plan.resolved) if r],
    }


def budget_report(method: str, record: dict[str, Any]) -> dict[str, Any]:
    """What one budget gave: ``method``, ``budget``, ``allocation``, ``adapter_params``, ``fraction`` (the
    adapter's share of the adapted model; the ``head`` strategy is not part of a budget) and ``layers`` with
    ``rank_min`` / ``rank_max`` / ``rank_mean`` and per-layer ``ranks`` (LoRA family), or ``tokens`` (VPT)."""
    out: dict[str, Any] = {"method": method, **{k: record[k] for k in ("budget", "adapter_params", "model_params",
                                                                       "fraction") if k in record}}
    if "ranks" in record:
        ranks = list(record["ranks"].values())
        out |= {"allocation": record.get("allocation", "uniform"), "layers": len(ranks), "rank_min": min(ranks),
                "rank_max": max(ranks), "rank_mean": sum(ranks) / len(ranks), "ranks": dict(record["ranks"])}
    else:
        out |= {"tokens": record["tokens"], "layers": record["layers"]}
    return out


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
    for b in report.get("budgets", []):
        lines.append(f"budget          {b['method']}: {100 * b['budget']:g}% of the model for the adapter alone "
                     "(the head strategy is not part of it)")
        if "ranks" in b:
            lines.append(f"  {b['allocation']} allocation over {b['layers']} layers: rank min {b['rank_min']}, "
                         f"max {b['rank_max']}, mean {b['rank_mean']:.2f}")
        else:
            lines.append(f"  {b['tokens']} tokens x {b['layers']} layers")
        lines.append(f"  adapter {b['adapter_params']:,} params = {100 * b['fraction']:.4f}% of the adapted model")
    return "\n".join(lines)
