"""Transfer benchmark for segmentation and pose: PEFT on a COCO-pretrained YOLOv5n backbone + neck vs full
fine-tuning vs the same model from random init.

For ``--task segment`` (package-seg-small, mask mAP50-95) or ``--task pose`` (tiger-pose, pose mAP50-95): builds
the task model on the COCO YOLOv5n layers 0-23 (``visionpeft.backends.ultralytics_transfer``), runs
``visionpeft compare`` with ``recipes/<task>/compare.yaml`` on a copy of the dataset (Ultralytics writes label
caches beside the data; ``../shared`` stays untouched), trains the same architecture from random init in full,
and prints a table: the task's metrics, delta vs full fine-tuning, trainable %.

    python benchmarks/transfer_tasks.py --task segment                 # the documented run (long on CPU)
    python benchmarks/transfer_tasks.py --task pose --smoke            # pipeline check: 1 epoch, 64 px, 3 runs
    python benchmarks/transfer_tasks.py --task segment --update-docs docs/benchmarks.md
    python benchmarks/transfer_tasks.py --task segment --report-only RUNS/<compare dir>   # table again, no training

The smoke setting checks that every piece runs; its numbers say nothing about the ranking.
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
DATA = {"segment": "package-seg-small", "pose": "tiger-pose"}
KPT = {"segment": (17, 3), "pose": (12, 2)}
SMOKE_COMPARE = "{lora: [{method: lora, rank: 8, alpha: 16}, {method: head}]}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(DATA), default="segment")
    p.add_argument("--backbone", default=str(SHARED / "weights" / "yolov5nu-cocobackbone.pt"))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", default=None, help="where the dataset copy, models and runs go (default: temp)")
    p.add_argument("--smoke", action="store_true", help="1 epoch, 64 px, 20%% of the images, full + lora + random")
    p.add_argument("--update-docs", default=None, help="markdown file whose section for this task is replaced")
    p.add_argument("--report-only", default=None, metavar="COMPARE_DIR",
                   help="rebuild the table from a finished run's compare directory (no training)")
    return p.parse_args(argv)


def overrides(args: argparse.Namespace, data: Path, model: Path, output: Path) -> list[str]:
    """Same data, schedule and seed for every run."""
    epochs, imgsz = (1, 64) if args.smoke else (args.epochs, args.imgsz)
    out = [f"data={data}", f"model={model}", f"output={output}", f"ultralytics.epochs={epochs}",
           f"ultralytics.imgsz={imgsz}", f"ultralytics.batch={args.batch}", f"ultralytics.device={args.device}",
           "ultralytics.workers=0", "ultralytics.amp=false"]
    if args.smoke:
        out += [f"compare={SMOKE_COMPARE}", "ultralytics.fraction=0.2", "ultralytics.warmup_epochs=0",
                f"ultralytics.nbs={args.batch}"]
    return out


def random_init_run(recipe: Any, work: Path, args: argparse.Namespace, compare_dir: Path) -> dict[str, Any]:
    """The same architecture from random init (a model yaml), trained in full with the compare's settings."""
    import yaml

    from visionpeft.backends.ultralytics_transfer import task_cfg
    from visionpeft.tasks import get_task

    cfg = task_cfg(args.task, nc=1, kpt_shape=KPT[args.task])
    path = work / cfg["yaml_file"]
    path.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "yaml_file"}, sort_keys=False))
    scratch = recipe.model_copy(update={"model": str(path)})
    result = get_task(args.task).train(scratch, [{"method": "full"}], compare_dir / "99-random-init-full",
                                       "random_init_full")
    return result.to_dict()


def rows_for(results: list[dict[str, Any]], primary: str) -> list[dict[str, Any]]:
    full = next((r for r in results if r["strategy"] == "full"), None)
    base = full["metrics"].get(primary) if full else None
    rows = []
    for r in results:
        value = r["metrics"].get(primary)
        loose = primary.replace("50_95", "50")  # the IoU/OKS-0.5 variant: less strict, useful early in training
        rows.append({"strategy": r["strategy"], primary: value,
                     f"delta_{primary}_vs_full": None if value is None or base is None else value - base,
                     loose: r["metrics"].get(loose), "map50_95 (box)": r["metrics"].get("map50_95"),
                     "trainable_pct": r["trainable_pct"],
                     "trainable_params": r["trainable_params"]})
    return rows


def conclusions(rows: list[dict[str, Any]], primary: str) -> list[str]:
    """What the table supports: PEFT runs against the random-init model and against full fine-tuning."""
    value = {r["strategy"]: r[primary] for r in rows if r[primary] is not None}
    scratch, full = value.get("random_init_full"), value.get("full")
    peft = [k for k in value if k not in ("full", "random_init_full")]
    out = []
    if scratch is not None:
        above = [k for k in peft if value[k] > scratch]
        below = [k for k in peft if k not in above]
        out.append(f"- Above the same model trained in full from random init ({scratch:.4f}): "
                   f"{', '.join(above) or 'none'}; not above: {', '.join(below) or 'none'}.")
    if full is not None:
        best = max(peft, key=value.__getitem__, default=None)
        if best is not None:
            out.append(f"- Best PEFT run: {best} ({value[best]:.4f}, {value[best] - full:+.4f} vs full fine-tuning "
                       f"{full:.4f}).")
    return out


def write_section(args: argparse.Namespace, compare_dir: Path, random_init: dict[str, Any] | None) -> None:
    """The task's Markdown section from the compare directory's runs (+ the random-init run)."""
    from visionpeft.report.markdown import markdown_table
    from visionpeft.tasks import get_task

    saved = compare_dir / "benchmark_args.json"
    setting = json.loads(saved.read_text()) if saved.is_file() else vars(args)
    results = [json.loads(p.read_text()) for p in sorted(compare_dir.glob("[0-9][0-9]-*/metrics.json"))]
    if random_init is not None and not any(r["strategy"] == "random_init_full" for r in results):
        results.append(random_init)
    primary = get_task(setting["task"]).primary_metric
    rows = rows_for(results, primary)
    marker = f"transfer-{setting['task']}"
    smoke = " --smoke" if setting.get("smoke") else ""
    section = "\n".join([
        f"<!-- {marker}:start -->",
        f"## {setting['task']}: {DATA[setting['task']]}, YOLOv5n (COCO backbone + neck, new head)", "",
        f"`python benchmarks/transfer_tasks.py --task {setting['task']} --epochs {setting['epochs']} "
        f"--imgsz {setting['imgsz']}{smoke}`: batch {setting['batch']}, seed 0 (one seed), {primary} on the val "
        "split (the data has no test split; each run keeps its best val epoch, so every number is optimistic by "
        "the same selection), Ultralytics' validator with adapters merged. random_init_full: the same "
        "architecture from random init, trained in full with the same settings.", "",
        markdown_table(rows, list(rows[0])), "", *conclusions(rows, primary), "", f"<!-- {marker}:end -->"])
    (compare_dir / "benchmark.md").write_text(section + "\n")
    print(section)
    if args.update_docs:
        from sections import replace_marked_section  # benchmarks/sections.py (scripts run from benchmarks/)

        replace_marked_section(Path(args.update_docs), f"<!-- {marker}:start -->", f"<!-- {marker}:end -->", section)
    print(f"compare directory: {compare_dir}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="visionpeft-yolo-cfg-"))
    from visionpeft.backends.ultralytics_transfer import write_transfer_checkpoint
    from visionpeft.recipe import load_recipe
    from visionpeft.tasks.compare import run_compare

    if args.report_only:
        compare_dir = Path(args.report_only).resolve()
        if not any(compare_dir.glob("[0-9][0-9]-*/metrics.json")):
            print(f"--report-only {compare_dir}: no finished runs (NN-*/metrics.json) there; give a compare directory "
                  "of this benchmark", file=sys.stderr)
            return 2
        write_section(args, compare_dir, None)
        return 0
    work = Path(args.workdir or tempfile.mkdtemp(prefix=f"visionpeft-bench-{args.task}-")).resolve()
    data_dir = work / DATA[args.task]
    if not data_dir.exists():
        shutil.copytree(SHARED / "data" / DATA[args.task], data_dir)
    model = write_transfer_checkpoint(args.task, args.backbone, work / f"yolov5nu-{args.task}-coco.pt", nc=1,
                                      kpt_shape=KPT[args.task])
    recipe = load_recipe(REPO / "visionpeft" / "assets" / "recipes" / args.task / "compare.yaml",
                         overrides(args, data_dir / "data.yaml", model, work / "runs"))
    compare_dir = run_compare(recipe)
    (compare_dir / "benchmark_args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    write_section(args, compare_dir, random_init_run(recipe, work, args, compare_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
