"""The Pareto plot keeps every label inside the figure (the y-label used to be cut off)."""

from __future__ import annotations

from visionpeft.report.pareto import plot_pareto


def _rows(ci: bool) -> list[dict]:
    rows = [{"strategy": "full", "trainable_params": 3_383_818, "trainable_pct": 100.0, "top1_val": 0.91},
            {"strategy": "lora", "trainable_params": 103_946, "trainable_pct": 3.07, "top1_val": 0.88},
            {"strategy": "linear_probe", "trainable_params": 12_810, "trainable_pct": 0.38, "top1_val": 0.71}]
    if ci:
        for r in rows:
            r["top1_val_ci_low"], r["top1_val_ci_high"] = r["top1_val"] - 0.02, r["top1_val"] + 0.02
    return rows


def test_labels_fit_in_the_figure(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved: list[Figure] = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), original(self, *a, **k))[1])
    for ci in (False, True):
        plot_pareto(_rows(ci), "top1_val", tmp_path / f"p{ci}.png")
        fig = saved[-1]
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        ax = fig.axes[0]
        label = ax.yaxis.label
        assert ("95% CI" in label.get_text()) is ci
        for text in (label, ax.xaxis.label, ax.title):
            ext = text.get_window_extent(renderer)
            assert box.x0 <= ext.x0 and ext.x1 <= box.x1 and box.y0 <= ext.y0 and ext.y1 <= box.y1, text.get_text()
