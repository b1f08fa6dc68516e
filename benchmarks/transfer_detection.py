"""Transfer benchmark for detection: every strategy vs full fine-tuning on BCCD (blood cells), CPU-friendly.

Runs ``visionpeft compare`` on ``recipes/detection/compare.yaml`` (COCO-pretrained YOLOv5n backbone + neck
with a random head, see ``../shared/data/MANIFEST.md``) plus the LoRA-family and SSF rows, with a copy of the
dataset in a work folder (Ultralytics writes label caches beside the data, and ``../shared`` must stay
untouched), under the honest protocol: ``--seeds`` seeds per strategy, each run's checkpoint chosen on BCCD's
``val`` split and measured on its own ``test`` split (72 images), 95% t-intervals over seeds and the paired
difference to full fine-tuning with a verdict from the paired bootstrap over seeds and test images (mAP recomputed
from each run's per-image records on every resample; ``docs/detection.md``). The summary table: test mAP50-95
(mean +- CI), validation alongside, delta vs full [bootstrap interval], verdict, the seed-only t-interval,
trainable %, step-time and memory ratios, and test mAP50-95 per million trainable parameters.

    python benchmarks/transfer_detection.py                                  # the documented run (long on CPU)
    python benchmarks/transfer_detection.py --smoke                          # smoke run (a few minutes)
    python benchmarks/transfer_detection.py --update-docs docs/benchmarks.md # also replace the detection section
    python benchmarks/transfer_detection.py --from-compare DIR --update-docs docs/benchmarks.md  # no training:
        # re-render a finished compare (after 'visionpeft report DIR')

Every run trains at Ultralytics' ``lr0`` (``optimizer: auto`` picks it from the schedule length): detection has
no per-method default rate; give a row its own rate with ``lr`` on its entries, or a grid with ``lr_grid``.

Memory on CPU is visionpeft's per-step estimate (parameters + gradients + optimizer state + the tensors
autograd saves for one batch), on CUDA the allocator's peak; see ``visionpeft.tasks.ultralytics.callbacks``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VISIONPEFT_SHARED", REPO.parent / "shared")).resolve()
START, END = "<!-- detection-benchmark:start -->", "<!-- detection-benchmark:end -->"

#: The smoke setting keeps three runs and a small image size: it checks the pipeline, not the ranking.
QUICK_COMPARE = ("{freeze10: [{method: freeze, n: 10}], "
                 "lora: [{method: lora, rank: 8, alpha: 16}, {method: head}]}")
#: Rows added to the recipe's own compare list: the LoRA family and SSF (same rank/alpha as the LoRA row).
NEW_METHODS = {
    "dora": [{"method": "dora", "rank": 8, "alpha": 16}, {"method": "head"}],
    "loha": [{"method": "loha", "rank": 4, "alpha": 8}, {"method": "head"}],
    "lokr": [{"method": "lokr", "rank": 8, "alpha": 16}, {"method": "head"}],
    "ssf": [{"method": "ssf"}, {"method": "head"}],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=str(REPO / "visionpeft" / "assets" / "recipes" / "detection" / "compare.yaml"))
    p.add_argument("--data", default=str(SHARED / "data" / "bccd_yolo"), help="dataset folder (copied first)")
    p.add_argument("--model", default=str(SHARED / "weights" / "yolov5nu-cocobackbone.pt"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--fraction", type=float, default=1.0, help="fraction of the training images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", default=None, help="where the dataset copy and runs go (default: a temp dir)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per strategy (intervals need 2 or more)")
    p.add_argument("--smoke", "--quick", action="store_true", dest="smoke",
                   help="smoke test: 1 epoch, 128 px, a quarter of the training images, three runs, 2 seeds")
    p.add_argument("--update-docs", default=None, help="markdown file whose detection section is replaced")
    p.add_argument("--from-compare", default=None, help="render this finished compare directory; train nothing")
    p.add_argument("--json", default=None, help="also copy the compare's report.json here "
                   "(the documented run: benchmarks/results/transfer_detection.json)")
    p.add_argument("--out", default=None, help="also write the section here (benchmarks/results/transfer_detection.md)")
    p.add_argument("overrides", nargs="*", help="extra recipe overrides key=value")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds: expected 1 or more, got {args.seeds}")
    return args


def overrides_for(args: argparse.Namespace, data_yaml: Path, output: Path) -> list[str]:
    """Recipe overrides: same data, schedule and seeds for every run; one optimizer step per batch."""
    from visionpeft.recipe import load_recipe

    epochs, imgsz, fraction = (1, 128, 0.25) if args.smoke else (args.epochs, args.imgsz, args.fraction)
    seeds = 2 if args.smoke else args.seeds
    out = [
        f"data={data_yaml}", f"model={args.model}", f"output={output}", "name=bccd-transfer", f"seeds={seeds}",
        f"ultralytics.epochs={epochs}", f"ultralytics.imgsz={imgsz}", f"ultralytics.batch={args.batch}",
        f"ultralytics.fraction={fraction}", f"ultralytics.device={args.device}", "ultralytics.workers=0",
    ]
    if args.smoke:
        out += [f"compare={QUICK_COMPARE}", "ultralytics.warmup_epochs=0", f"ultralytics.nbs={args.batch}"]
    else:
        rows = {**(load_recipe(args.recipe).compare or {}), **NEW_METHODS}
        out.append("compare=" + json.dumps(rows, separators=(",", ":")))
    return out + list(args.overrides)


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the docs table: headline mean +- CI, validation alongside, paired delta [CI], verdict, costs, and
    the headline per million trainable parameters."""
    from visionpeft.report.markdown import display_rows

    head = report["protocol"]["headline"]
    other = "map50_95_val" if report["protocol"]["test_split"] else None
    shown = display_rows(report["runs"], head, other)
    rows = []
    for r, d in zip(report["runs"], shown):
        per_m = (r.get(head) or 0.0) / max(r["trainable_params"] / 1e6, 1e-9)
        rows.append({
            "strategy": r["strategy"], head: d[head], **({other: d[other]} if other else {}),
            "delta": d["delta"], "verdict": r.get("verdict"), "t-interval": d["t-interval"],
            "trainable_pct": r["trainable_pct"],
            "trainable_params": r["trainable_params"], "per_M_trainable": round(per_m, 4),
            "time_to_full": d["time_to_full"], "train_seconds": r.get("train_seconds"),
            "step_time_ratio_vs_full": r.get("step_time_ratio_vs_full"),
            "peak_mem_ratio_vs_full": r.get("peak_mem_ratio_vs_full"),
        })
    return rows


def verdict(report: dict[str, Any]) -> str:
    """Only what the intervals support: strategies better / worse than full fine-tuning, the rest tied, and which
    interval decided (``verdict_basis``)."""
    head = report["protocol"]["headline"]
    rows = report["runs"][1:]
    if not rows:
        return "No PEFT run finished."
    if all(str(r.get("verdict", "")).startswith("n/a") for r in rows):
        return f"One seed: no interval, so no strategy is called better or worse than full fine-tuning on `{head}`."
    by = {v: [r["strategy"] for r in rows if r.get("verdict") == v] for v in ("better", "worse", "tied")}
    bases = sorted({str(r.get("verdict_basis")) for r in rows})
    return (f"On `{head}` ({'; '.join(bases)}): better: {', '.join(by['better']) or 'none'}; worse: "
            f"{', '.join(by['worse']) or 'none'}; tied (interval contains 0): {', '.join(by['tied']) or 'none'}.")


def render(rows: list[dict[str, Any]], report: dict[str, Any], args: argparse.Namespace) -> str:
    from visionpeft.report.markdown import markdown_table

    ultra = report["recipe"].get("ultralytics", {})
    env = report.get("environment", {})
    versions = env.get("versions", {})
    cpu = f"CPU, {env.get('cpu_count', '?')} cores, {env.get('torch_threads', '?')} torch threads"
    hardware = env.get("cuda") or cpu
    seeds = report.get("protocol", {}).get("seeds") or [report["recipe"].get("seed")]
    split = ("checkpoint chosen on `val`, mAP on BCCD's own `test` split" if report["protocol"]["test_split"]
             else "mAP on the val split the checkpoint was chosen on (selection-biased)")
    lines = [
        START, "## Detection transfer: BCCD, YOLOv5n (COCO backbone + neck, random head)", "",
        f"`python benchmarks/transfer_detection.py{' --smoke' if args.smoke else ''}` - epochs "
        f"{ultra.get('epochs')}, imgsz {ultra.get('imgsz')}, batch {ultra.get('batch')}, fraction "
        f"{ultra.get('fraction', 1.0)}, device {ultra.get('device')}, seeds {', '.join(map(str, seeds))}; "
        f"torch {versions.get('torch', '?')}, ultralytics {versions.get('ultralytics', '?')}, {hardware}. "
        f"Each run: {split}, Ultralytics' validator, adapters merged before Conv+BN fusion. `+-` is the 95% Student "
        "t-interval over seeds; `delta` the mean per-seed difference to full fine-tuning with the 95% interval of "
        "the paired bootstrap over seeds and test images (mAP50-95 recomputed from every run's per-image results "
        "on each of 1,000 resamples; `docs/detection.md`), which gives the verdict; `t-interval` the seed-only "
        "paired interval beside it; every row at Ultralytics' `lr0`.", "",
        markdown_table(rows, list(rows[0])), verdict(report), "", END,
    ]
    return "\n".join(lines)


def update_docs(path: Path, section: str) -> None:
    """Replace this script's section of ``path`` (or append it), leaving other sections alone."""
    from sections import replace_marked_section  # benchmarks/sections.py (scripts run from benchmarks/)

    replace_marked_section(path, START, END, section)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="visionpeft-yolo-cfg-"))
    from visionpeft.recipe import load_recipe
    from visionpeft.tasks.compare import run_compare

    if args.from_compare:
        compare_dir = Path(args.from_compare)
    else:
        work = Path(args.workdir or tempfile.mkdtemp(prefix="visionpeft-bench-det-")).resolve()
        data_dir = work / Path(args.data).name
        if not data_dir.exists():
            shutil.copytree(args.data, data_dir)
        recipe = load_recipe(args.recipe, overrides_for(args, data_dir / "data.yaml", work / "runs"))
        compare_dir = run_compare(recipe)
    report = json.loads((compare_dir / "report.json").read_text())
    rows = summary_rows(report)
    section = render(rows, report, args)
    (compare_dir / "benchmark.md").write_text(section + "\n")
    print(section)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.out:
        Path(args.out).write_text(section + "\n")
    if args.update_docs:
        update_docs(Path(args.update_docs), section)
    print(f"compare directory: {compare_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
