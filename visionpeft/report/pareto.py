"""The Pareto plot: primary metric against trainable parameters (log scale), full fine-tuning marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_pareto"]


def plot_pareto(rows: Sequence[dict[str, Any]], metric: str, out: Path) -> Path:
    """Scatter ``metric`` vs ``trainable_params`` for every run; the ``full`` run is a red star."""
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
        ax.scatter([x], [y], marker="*" if is_full else "o", s=180 if is_full else 60,
                   color="tab:red" if is_full else "tab:blue", zorder=3,
                   label="full fine-tuning" if is_full else None)
        if not is_full:  # the legend names the baseline; its star needs no label crowding its neighbours
            ax.annotate(f"{row['strategy']} ({row['trainable_pct']:.3g}%)", (x, y), textcoords="offset points",
                        xytext=(6, -12), fontsize=8)
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.1)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{metric} (validation)")
    ax.grid(True, which="both", alpha=0.3)
    if any(r["strategy"] == "full" for r in rows):
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{metric} vs trainable parameters")
    fig.tight_layout()
    fig.savefig(out)
    return out
