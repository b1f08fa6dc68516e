"""The Pareto plot: headline metric against trainable parameters (log scale), full fine-tuning marked.

With several seeds each point is the mean and its error bar the 95% t-interval over seeds (columns
``<metric>_ci_low`` / ``<metric>_ci_high`` of the report rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_pareto"]


def plot_pareto(rows: Sequence[dict[str, Any]], metric: str, out: Path) -> Path:
    """Scatter ``metric`` vs ``trainable_params`` for every row, with interval error bars; ``full`` is a red star."""
    # A bare Figure with its own Agg canvas: no pyplot, so the caller's backend and open figures are untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for row in rows:
        y = row.get(metric)
        x = max(int(row["trainable_params"]), 1)
        if y is None:
            continue
        is_full = row["strategy"] == "full"
        low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
        if low is not None and high is not None:
            ax.errorbar([x], [y], yerr=[[y - low], [high - y]], fmt="none", ecolor="0.35", capsize=4, zorder=2)
        ax.scatter([x], [y], marker="*" if is_full else "o", s=180 if is_full else 60,
                   color="tab:red" if is_full else "tab:blue", zorder=3,
                   label="full fine-tuning" if is_full else None)
        if not is_full:  # the legend names the baseline; its star needs no label crowding its neighbours
            ax.annotate(f"{row['strategy']} ({row['trainable_pct']:.3g}%)", (x, y), textcoords="offset points",
                        xytext=(6, -12), fontsize=8)
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.1)
    ax.set_xlabel("trainable parameters (log scale)")
    split = metric.rpartition("_")[2]
    words = {"test": "test split", "val": "validation, selection-biased"}
    # Two short lines: on one line the label is taller than the axes and tight_layout cannot keep it in the figure.
    bars = any(r.get(f"{metric}_ci_low") is not None for r in rows)
    ax.set_ylabel(f"{metric}\n({words.get(split, split)}" + ("; bars: 95% CI over seeds)" if bars else ")"),
                  fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if any(r["strategy"] == "full" for r in rows):
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{metric} vs trainable parameters")
    fig.tight_layout()
    fig.savefig(out)
    return out
