"""Transfer benchmark for detection: every strategy vs full fine-tuning on BCCD (blood cells), CPU-friendly.

Runs ``visionpeft compare`` on ``recipes/detection/compare.yaml`` (COCO-pretrained YOLOv5n backbone + neck
with a random head, see ``../shared/data/MANIFEST.md``) with a copy of the dataset in a work folder
(Ultralytics writes label caches beside the data, and ``../shared`` must stay untouched), then writes a
summary table: mAP50-95, its delta vs full fine-tuning, trainable %, step-time and memory ratios, and
mAP50-95 per million trainable parameters.

    python benchmarks/transfer_detection.py                                  # the documented run (long on CPU)
    python benchmarks/transfer_detection.py --quick                          # smoke run (a minute or two)
    python benchmarks/transfer_detection.py --update-docs docs/benchmarks.md # also replace the detection section

Memory on CPU is visionpeft's per-step estimate (parameters + gradients + optimizer state + the tensors
autograd saves for one batch), on CUDA the allocator's peak; see ``visionpeft.tasks.detection.callbacks``.
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

#: The quick setting keeps three runs and a small image size: it checks the pipeline, not the ranking.
QUICK_COMPARE = ("{freeze10: [{method: freeze, n: 10}], "
                 "lora: [{method: lora, rank: 8, alpha: 16}, {method: head}]}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=str(REPO / "recipes" / "detection" / "compare.yaml"))
    p.add_argument("--data", default=str(SHARED / "data" / "bccd_yolo"), help="dataset folder (copied first)")
    p.add_argument("--model", default=str(SHARED / "weights" / "yolov5nu-cocobackbone.pt"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--fraction", type=float, default=1.0, help="fraction of the training images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", default=None, help="where the dataset copy and runs go (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="2 epochs, 128 px, three runs: a smoke test")
    p.add_argument("--update-docs", default=None, help="markdown file whose detection section is replaced")
    p.add_argument("overrides", nargs="*", help="extra recipe overrides key=value")
    return p.parse_args(argv)


def overrides_for(args: argparse.Namespace, data_yaml: Path, output: Path) -> list[str]:
    """Recipe overrides: same data, schedule and seed for every run; one optimizer step per batch."""
    epochs, imgsz = (2, 128) if args.quick else (args.epochs, args.imgsz)
    out = [
        f"data={data_yaml}", f"model={args.model}", f"output={output}", "name=bccd-transfer",
        f"ultralytics.epochs={epochs}", f"ultralytics.imgsz={imgsz}", f"ultralytics.batch={args.batch}",
        f"ultralytics.fraction={args.fraction}", f"ultralytics.device={args.device}", "ultralytics.workers=0",
    ]
    if args.quick:
        out += [f"compare={QUICK_COMPARE}", "ultralytics.warmup_epochs=0", f"ultralytics.nbs={args.batch}"]
    return out + list(args.overrides)


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the docs table, with mAP50-95 per million trainable parameters."""
    rows = []
    for r in report["runs"]:
        per_m = (r.get("map50_95") or 0.0) / max(r["trainable_params"] / 1e6, 1e-9)
        rows.append({
            "strategy": r["strategy"], "map50": r.get("map50"), "map50_95": r.get("map50_95"),
            "delta_map50_95_vs_full": r.get("delta_map50_95_vs_full"), "trainable_pct": r["trainable_pct"],
            "trainable_params": r["trainable_params"], "map50_95_per_M_trainable": per_m,
            "step_time_ratio_vs_full": r.get("step_time_ratio_vs_full"),
            "peak_mem_ratio_vs_full": r.get("peak_mem_ratio_vs_full"),
        })
    return rows


def verdict(rows: list[dict[str, Any]]) -> str:
    """Which PEFT strategy gives the best mAP50-95 overall and per trainable parameter."""
    peft = [r for r in rows if r["strategy"] != "full" and r["map50_95"] is not None]
    if not peft:
        return "No PEFT run finished."
    best = max(peft, key=lambda r: r["map50_95"])
    eff = max(peft, key=lambda r: r["map50_95_per_M_trainable"])
    return (f"Best mAP50-95 among the PEFT strategies: **{best['strategy']}** ({best['map50_95']:.4f}, "
            f"{best['delta_map50_95_vs_full']:+.4f} vs full). Best mAP50-95 per trainable parameter: "
            f"**{eff['strategy']}** ({eff['map50_95_per_M_trainable']:.4f} per million trainable parameters, "
            f"{eff['trainable_pct']:.2f}% of the model trainable).")


def render(rows: list[dict[str, Any]], report: dict[str, Any], args: argparse.Namespace) -> str:
    from visionpeft.report.compare import markdown_table

    ultra = report["recipe"].get("ultralytics", {})
    env = report.get("environment", {})
    versions = env.get("versions", {})
    cpu = f"CPU, {env.get('cpu_count', '?')} cores, {env.get('torch_threads', '?')} torch threads"
    hardware = env.get("cuda") or cpu
    lines = [
        START, "## Detection transfer: BCCD, YOLOv5n (COCO backbone + neck, random head)", "",
        f"`python benchmarks/transfer_detection.py{' --quick' if args.quick else ''}` - epochs "
        f"{ultra.get('epochs')}, imgsz {ultra.get('imgsz')}, batch {ultra.get('batch')}, fraction "
        f"{ultra.get('fraction', 1.0)}, device {ultra.get('device')}, seed {report['recipe'].get('seed')}; "
        f"torch {versions.get('torch', '?')}, ultralytics {versions.get('ultralytics', '?')}, {hardware}. "
        "mAP on the val split, "
        "Ultralytics' validator, adapters merged before Conv+BN fusion.", "",
        markdown_table(rows, list(rows[0])), verdict(rows), "", END,
    ]
    return "\n".join(lines)


def update_docs(path: Path, section: str) -> None:
    """Replace this script's section of ``path`` (or append it), leaving other sections alone."""
    from visionpeft.report.sections import replace_marked_section

    replace_marked_section(path, START, END, section)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="visionpeft-yolo-cfg-"))
    from visionpeft.recipe import load_recipe
    from visionpeft.tasks.compare import run_compare

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
    if args.update_docs:
        update_docs(Path(args.update_docs), section)
    print(f"compare directory: {compare_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
