"""Per-method learning-rate study (issue 22, item 3): is each method's default rate the best of a grid around it?

Classification: ViT-Tiny/16 and EfficientNet-Lite0 (the shared ImageNet weights) on flowers5_128 (a per-class
subset) and hymenoptera, every method with a trained head, through ``visionpeft compare`` with ``lr_grid: auto``:
each run trains at its method's default rate (``visionpeft/optim_settings.py``) x 0.3, 1, 3, 10 with seed 0 and the
best validation top-1 wins. Detection: YOLOv5n (COCO backbone + neck, random head) on BCCD, AdamW, the rates
listed in :data:`DET_GRID` (Ultralytics engines have no per-method default to centre a grid on).

One seed per rate: a pick is one draw. The table says, per method and setting, the validation metric at every
rate and which factor won; a default is called wrong only when the same other factor wins on most settings by more
than the grid's noise (see the section's text). Writes JSON (``--json``), Markdown (``--out``) and, with
``--update-docs docs/benchmarks.md``, its own marked section::

    python benchmarks/lr_study.py --update-docs docs/benchmarks.md        # ~60 min on 2 busy cores
    python benchmarks/lr_study.py --tiny --out /tmp/lr.md --json /tmp/lr.json   # smoke run (~3 min)

``VISIONPEFT_SHARED`` overrides the location of the shared material (default: ``../shared``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # its helpers import by name, as when the script runs from there

from study_args import DATASETS, MODELS, add_study_args, machine_line, shared_dir  # noqa: E402

START, END = "<!-- lr-study:start -->", "<!-- lr-study:end -->"

HEAD = {"method": "head"}
#: Compare runs per model family (full fine-tuning is the compare's baseline, swept too).
CLS_RUNS: dict[str, list[dict[str, Any]]] = {
    "lora_r8": [{"method": "lora", "rank": 8, "alpha": 16}, HEAD],
    "dora_r8": [{"method": "dora", "rank": 8, "alpha": 16}, HEAD],
    "loha_r4": [{"method": "loha", "rank": 4, "alpha": 4}, HEAD],
    "lokr_r8": [{"method": "lokr", "rank": 8, "alpha": 8}, HEAD],
    "bitfit": [{"method": "bitfit"}, HEAD],
    "ssf": [{"method": "ssf"}, HEAD],
}
VIT_ONLY: dict[str, list[dict[str, Any]]] = {
    "vpt_deep": [{"method": "vpt", "tokens": 10, "mode": "deep"}, HEAD],
    "adaptformer_16": [{"method": "adaptformer", "bottleneck": 16, "scale": 0.1}, HEAD],
}
DET_RUNS: dict[str, list[dict[str, Any]]] = {
    "freeze10": [{"method": "freeze", "n": 10}],
    "lora_head": [{"method": "lora", "rank": 8, "alpha": 16}, HEAD],
    "lokr_head": [{"method": "lokr", "rank": 8, "alpha": 8}, HEAD],
    "ssf_head": [{"method": "ssf"}, HEAD],
    "bitfit_head": [{"method": "bitfit"}, HEAD],
}
DET_GRID = [3e-4, 1e-3, 3e-3, 1e-2]


def cls_doc(args: argparse.Namespace, family: str, dataset: str) -> dict[str, Any]:
    model, weights = MODELS[family]
    runs = {**CLS_RUNS, **(VIT_ONLY if family == "vit" else {})}
    if args.tiny:
        runs = dict(list(runs.items())[:2])
    return {
        "name": f"lr-{family}-{dataset}", "model": model, "weights": str(shared_dir() / weights),
        "data": str(shared_dir() / DATASETS[dataset]), "seed": 0, "seeds": 1, "lr_grid": "auto",
        "output": str(args.runs), "tensorboard": False, "compare": runs,
        "train": {"epochs": args.epochs, "batch_size": 32, "workers": 0, "progress": False, "device": "cpu"},
        "optim": {"weight_decay": 0.05, "warmup_epochs": 0},
        "augment": {"img_size": args.img_size, "scale": [0.6, 1.0], "hflip": 0.5},
        "dataset": {"max_per_class": args.per_class},
    }


def det_doc(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    runs = dict(list(DET_RUNS.items())[:1]) if args.tiny else DET_RUNS
    grid = DET_GRID[:2] if args.tiny else DET_GRID
    return {
        "task": "detect", "name": "lr-yolo-bccd", "model": str(shared_dir() / "weights/yolov5nu-cocobackbone.pt"),
        "data": str(data), "seed": 0, "seeds": 1, "output": str(args.runs), "tensorboard": False,
        "compare": runs, "lr_grid": {"full": grid, **{k: grid for k in runs}},
        "ultralytics": {"epochs": args.det_epochs, "imgsz": args.det_imgsz, "batch": 16, "workers": 0,
                        "device": "cpu", "optimizer": "AdamW", "lr0": 1e-3, "warmup_epochs": 0, "amp": False},
    }


def sweep(doc: dict[str, Any]) -> dict[str, Any]:
    """Run one compare; return its sweeps as ``{run: {"rates": {lr: val}, "chosen": lr}}`` and the run's time."""
    from visionpeft.recipe import parse_recipe
    from visionpeft.tasks.compare import run_compare

    started = time.perf_counter()
    cdir = run_compare(parse_recipe(doc))
    report = json.loads((cdir / "report.json").read_text())
    out: dict[str, Any] = {}
    for row in report["lr_sweeps"]:
        entry = out.setdefault(row["strategy"], {"rates": {}, "chosen": None})
        entry["rates"][f"{float(row['lr']):g}"] = row["val_metric"]
        if row.get("chosen"):
            entry["chosen"] = f"{float(row['lr']):g}"
    return {"metric": report["primary_metric"], "sweeps": out, "seconds": round(time.perf_counter() - started, 1),
            "compare_dir": str(cdir)}


def collect(runs: Path) -> dict[str, Any]:
    """Results of the compares already under ``runs`` (``lr-<family>-<dataset>-compare-*``), newest per setting: a
    study stopped part way still reports the settings it finished."""
    from visionpeft.safe_yaml import load_yaml_file

    results: dict[str, Any] = {}
    for report in sorted(runs.glob("lr-*-compare-*/report.json")):
        doc = json.loads(report.read_text())
        name = str(doc["recipe"]["name"])
        setting = "yolo/bccd" if name == "lr-yolo-bccd" else "/".join(name.split("-")[1:3])
        sweeps: dict[str, Any] = {}
        for row in doc["lr_sweeps"]:
            entry = sweeps.setdefault(row["strategy"], {"rates": {}, "chosen": None})
            entry["rates"][f"{float(row['lr']):g}"] = row["val_metric"]
            entry["chosen"] = f"{float(row['lr']):g}" if row.get("chosen") else entry["chosen"]
        compare = load_yaml_file(report.parent / "recipe.yaml").get("compare") if (
            report.parent / "recipe.yaml").is_file() else doc["recipe"].get("compare") or {}
        defaults = {} if setting == "yolo/bccd" else {run: default_of(run, (compare or {}).get(run))
                                                       for run in sweeps}
        results[setting] = {"metric": doc["primary_metric"], "sweeps": sweeps, "defaults": defaults,
                            "seconds": sum(float(r.get("train_seconds") or 0) for r in doc["lr_sweeps"]),
                            "compare_dir": str(report.parent)}
    return results


def default_of(run: str, entries: list[dict[str, Any]] | None) -> float | None:
    from visionpeft.optim_settings import default_lr

    if run == "full":
        return default_lr("full")
    return default_lr(entries[0]["method"]) if entries else None


def table(results: dict[str, Any]) -> list[str]:
    """Markdown: one row per (setting, run): the metric at each factor of the default, and the pick."""
    lines = ["| setting | run | default lr | x0.3 | x1 | x3 | x10 | pick |", "|---|---|---|---|---|---|---|---|"]
    for setting, res in results.items():
        for run, sw in res["sweeps"].items():
            rates = sw["rates"]
            default = res.get("defaults", {}).get(run)
            cells = []
            for factor in (0.3, 1, 3, 10):
                key = f"{float(f'{default * factor:.3g}'):g}" if default else None
                val = rates.get(key) if key else None
                cells.append("-" if val is None else (f"**{val:.3f}**" if key == sw["chosen"] else f"{val:.3f}"))
            if not default:  # an explicit grid (detection): list it
                cells = [", ".join(f"{k}: {v:.3f}" for k, v in rates.items()), "", "", ""]
            lines.append(f"| {setting} | {run} | {default if default else '-'} | " + " | ".join(cells)
                         + f" | {sw['chosen']} |")
    return lines


def section(results: dict[str, Any], args: argparse.Namespace) -> str:
    return "\n".join([
        START, "## Per-method learning rates (`benchmarks/lr_study.py`, issue 22)", "",
        f"Grid: each method's default rate x 0.3, 1, 3, 10 (`lr_grid: auto`), AdamW, seed 0, best-epoch validation "
        f"metric; classification {args.epochs} epochs at {args.img_size} px (flowers5_128: {args.per_class} images "
        f"per class and split; hymenoptera: all of it, at most {args.per_class} per class), batch 32, weight decay "
        f"0.05; detection (YOLOv5n COCO backbone, BCCD, {args.det_epochs} epochs at {args.det_imgsz} px, batch 16) "
        f"on the rates listed. **One seed per cell**: the validation sets hold 150-300 images, so a difference "
        f"below about 0.03 top-1 (0.01 mAP50-95) is within noise. Bold: the pick.", "",
        *table(results), "",
        machine_line(sum(r["seconds"] for r in results.values())), END])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_study_args(p, Path(__file__).stem)
    p.add_argument("--det-epochs", type=int, default=3)
    p.add_argument("--det-imgsz", type=int, default=160)
    p.add_argument("--only", default="vit,cnn,det", help="comma list of vit, cnn, det")
    p.add_argument("--tiny", action="store_true", help="smoke run: 2 methods, 1 epoch, tiny subsets")
    p.add_argument("--collect", action="store_true", help="no training: report the compares already under --runs")
    args = p.parse_args(argv)
    if args.tiny:
        args.epochs, args.per_class, args.det_epochs, args.img_size, args.det_imgsz = 1, 8, 1, 64, 64
    os.environ.setdefault("YOLO_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="lr-study-"))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp / "yolo-cfg"))
    args.runs = args.runs or tmp / "runs"
    only = args.only.split(",")
    results: dict[str, Any] = collect(args.runs) if args.collect else {}
    if args.collect:
        only = []
    for family in ("vit", "cnn"):
        if family not in only:
            continue
        for dataset in DATASETS:
            doc = cls_doc(args, family, dataset)
            res = sweep(doc)
            res["defaults"] = {run: default_of(run, doc["compare"].get(run)) for run in res["sweeps"]}
            results[f"{family}/{dataset}"] = res
            print(f"{family}/{dataset}: {res['seconds']:.0f} s", flush=True)
    if "det" in only:
        data = tmp / "bccd_yolo"
        shutil.copytree(shared_dir() / "data/bccd_yolo", data)  # Ultralytics writes label caches beside the data
        res = sweep(det_doc(args, data / "data.yaml"))
        res["defaults"] = {}
        results["yolo/bccd"] = res
        print(f"yolo/bccd: {res['seconds']:.0f} s", flush=True)
    from benchmarks.sections import publish

    publish(section(results, args), START, END, md=args.out, docs=args.update_docs, json_path=args.json,
            payload={"args": {k: str(v) for k, v in vars(args).items()}, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
