"""The compare report's Markdown: protocol note, the strategy table with intervals, seeds and learning-rate sweeps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..results import StrategyRuns

__all__ = ["report_markdown", "protocol_lines", "display_rows"]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` restricted to ``columns``."""
    head = "| " + " | ".join(columns) + " |\n| " + " | ".join("---" for _ in columns) + " |\n"
    return head + "".join("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |\n" for r in rows)


def _num(value: Any, digits: int = 4, sign: bool = False) -> str:
    if value is None:
        return "-"
    value = 0.0 if abs(value) < 0.5 * 10**-digits else value  # no "-0.0000"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def protocol_lines(doc: dict[str, Any], primary: str) -> list[str]:
    """3-5 lines saying how the numbers were obtained (seeds, interval, test vs validation, rate choice)."""
    proto = doc["protocol"]
    seeds = [s for s in proto["seeds"] if s is not None]
    lines = ["## Protocol", ""]
    if proto["test_split"]:
        lines.append(f"- Each run keeps its best epoch by **validation** `{primary}`; the headline "
                     f"`{proto['headline']}` is that checkpoint on the held-out **test** split (validation alongside).")
    else:
        lines.append(f"- **No test split: these numbers are selection-biased.** `{proto['headline']}` is the best "
                     "epoch's validation value, chosen on the same split it is reported on, so it is optimistic; "
                     "add a `test` split to the data for an unbiased estimate.")
    if len(seeds) > 1:
        lines.append(f"- {len(seeds)} seeds ({', '.join(map(str, seeds))}); the seed sets head and adapter "
                     "initialisation, data order and augmentation. +- is the 95% Student t-interval of the mean "
                     "over seeds (t_0.975,n-1 * s / sqrt(n)).")
        lines.append("- Delta vs full is the mean difference to full fine-tuning with the same seed. Its interval "
                     "(`delta`) is a paired two-level bootstrap over seeds and test images (the same images for both, "
                     "fixed generator seed; few seeds get a Student-t penalty on the seed-wide part; 10,000 resamples "
                     "of a mean over images such as accuracy, 1,000 for mAP or mIoU, which are recomputed from the "
                     "saved per-image results on every resample) "
                     "where every run saved per-example test results, else the seed-only t-interval "
                     "(`t-interval`, kept as a column); the verdict is better / worse only when the interval excludes "
                     "0, else tied. `verdict_basis` in report.json/csv says which interval decided each row.")
    else:
        lines.append(f"- One seed ({seeds[0] if seeds else '?'}): no interval and no verdict; differences may be "
                     "noise. Set `seeds: 3` (or more) for intervals.")
    if doc["lr_sweeps"]:
        lines.append(f"- Runs with an `lr_grid` (`auto`: the run's own rate x 0.3, 1, 3, 10) trained every rate once "
                     f"(first seed) and kept the best validation `{primary}`; `sweep_seconds` is that sweep's "
                     "training time, `compute_seconds` all training.")
    bases = sorted({r["verdict_basis"] for r in doc["runs"] if r.get("verdict_basis")})
    if len(seeds) > 1 and bases and not any(b.startswith("bootstrap") for b in bases):
        lines.append(f"- **Verdicts rest on the seed-only t-interval**: {bases[0]}.")
    lines.append(f"- time_to_full: wall time (training + validation) at which a run's validation `{primary}` first "
                 "reached full fine-tuning's final validation value of the same seed (mean over seeds that did), "
                 "or never.")
    return lines + [""]


def _interval(r: dict[str, Any], lo_key: str, hi_key: str) -> str | None:
    lo, hi = r.get(lo_key), r.get(hi_key)
    return None if lo is None or hi is None else f"[{_num(lo, sign=True)}, {_num(hi, sign=True)}]"


def _mb(size: int | None) -> str:
    """The adapter file a user ships, in MiB (``-`` when the run saved none)."""
    return "-" if not size else f"{size / 2**20:.3f}"


def _lr(r: dict[str, Any]) -> str:
    rate, source = r.get("lr"), r.get("lr_source") or ("lr_grid" if r.get("lr_grid") else "default")
    return source if rate is None else f"{rate:g} ({source})"


def display_rows(rows: Sequence[dict[str, Any]], head: str, other: str | None) -> list[dict[str, Any]]:
    """Rows with the headline as ``mean +- half-width``, the paired delta as ``+d [lo, hi]`` (the bootstrap's
    interval where there is one, else the t-interval's), the t-interval apart and the rate with its source."""
    out = []
    for r in rows:
        half = None if r.get(f"{head}_ci_high") is None else r[f"{head}_ci_high"] - r[head]
        t_iv = _interval(r, f"delta_{head}_ci_low", f"delta_{head}_ci_high")
        iv = _interval(r, f"delta_{head}_boot_low", f"delta_{head}_boot_high") or t_iv
        delta = _num(r.get(f"delta_{head}_vs_full"), sign=True) + (f" {iv}" if iv else "")
        baseline = r.get("verdict") == "baseline"
        t = r.get("time_to_full_val_s")
        out.append({**r, head: _num(r.get(head)) + (f" +- {half:.4f}" if half is not None else ""),
                    **({other: _num(r.get(other))} if other else {}),
                    "delta": "-" if baseline else delta, "t-interval": "-" if baseline else (t_iv or "-"),
                    "lr": _lr(r), "adapter_mb": _mb(r.get("adapter_bytes")),
                    "time_to_full": t if t in ("never", None) else f"{t:.1f} s ({r['time_to_full_reached']})"})
    return out


def report_markdown(groups: Sequence[StrategyRuns], rows: Sequence[dict[str, Any]], doc: dict[str, Any],
                    primary: str, provenance: list[str], name: str,
                    extra: dict[str, Any] | None = None) -> tuple[list[str], str]:
    """The ``report.md`` lines and the main table (also printed by the caller)."""

    head = doc["protocol"]["headline"]
    other = f"{primary}_val" if doc["protocol"]["test_split"] else None
    cols = ["strategy", "trainable_pct", "adapter_mb", "seeds", "lr", head, *([other] if other else []), "delta",
            "verdict", "t-interval",
            "time_to_full", "train_seconds", "sweep_seconds", "peak_mem_mb", "step_time_ratio_vs_full"]
    table = markdown_table(display_rows(rows, head, other), cols)
    md = [f"# visionpeft compare: {name}", "", *provenance]
    md += [f"- {key}: {value}" for key, value in (extra or {}).items() if key != "environment"]
    md += ["", *protocol_lines(doc, primary), "## Results", "", table,
           f"`delta` is `{head}` minus full fine-tuning's (per seed, then averaged), with its 95% interval "
           "(paired bootstrap over seeds and test images where available); `t-interval` is the seed-only paired "
           "Student-t interval. Ratios are against full fine-tuning; seconds are per run (mean over seeds); `lr` "
           "is the run's rate (outside the head) and where it came from: `auto` / `lr_grid` (chosen on validation "
           "from a grid), `given` (the entries' or the recipe's `lr`), `default` (each method's default). "
           "`adapter_mb` is the size of the file a run ships (`adapter/adapter.safetensors` in MiB; full "
           "fine-tuning: every weight).",
           "",
           "![pareto](pareto.png)", ""]
    seed_cols = ["strategy", "seed", "lr", *(c for c in doc["seed_runs"][0] if c.endswith(("_val", "_test")))
                 ] if doc["seed_runs"] else []
    md += ["## Runs", "", markdown_table(doc["seed_runs"], [*seed_cols, "best_epoch", "train_seconds", "run_dir"])]
    if doc["lr_sweeps"]:
        md += ["## Learning-rate sweeps", "", f"Criterion: best-epoch validation `{primary}`, first seed.", "",
               markdown_table(doc["lr_sweeps"], ["strategy", "lr", "val_metric", "chosen", "train_seconds"])]
    return md, table
