"""Augmentation study (issue 22, item 4): which RandomResizedCrop scale, and do flips help, on natural images?

ViT-Tiny/16 and EfficientNet-Lite0 (the shared ImageNet weights) on flowers5_128 (a per-class subset) and
hymenoptera, full fine-tuning and LoRA r8 + head (each at its default rate), through ``visionpeft compare``: one
compare per augmentation setting, ``--seeds`` seeds (0, 1, ...), the best epoch's **validation** top-1 averaged
over the seeds (nothing here reads a test split).
Settings: horizontal flips (p = 0.5) with the crop's area lower bound in :data:`SCALES` (timm's default is 0.08),
plus flips off at :data:`NO_FLIP_SCALE`. The recipe value is the scale with the best validation top-1 averaged over
both runs and both datasets of a model family (the table says how far apart the settings are).
``--digits``: the quickstart instead (EfficientNet-Lite0 on the bundled digits, its own 32 px / 3-epoch settings,
full fine-tuning at the quickstart's 1e-3 and LoRA r4 + head): flips off with the crop scale in
:data:`DIGIT_SCALES`, plus flips on at the quickstart's 0.7 (a mirrored 2 is not a 2: the check that flips hurt).
Writes JSON, Markdown and, with ``--update-docs docs/benchmarks.md``, its own marked section::

    python benchmarks/augment_study.py --update-docs docs/benchmarks.md     # ~28 min on 2 cores (2 seeds)
    python benchmarks/augment_study.py --tiny --out /tmp/a.md --json /tmp/a.json   # smoke run (~2 min)

``VISIONPEFT_SHARED`` overrides the location of the shared material (default: ``../shared``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # its helpers import by name, as when the script runs from there

from study_args import DATASETS, MODELS, add_study_args, machine_line, shared_dir  # noqa: E402

START, END = "<!-- augment-study:start -->", "<!-- augment-study:end -->"

#: RandomResizedCrop area lower bounds tried (upper bound 1.0), with flips on.
SCALES = (0.08, 0.3, 0.6, 0.9)
#: The scale at which flips off is also tried.
NO_FLIP_SCALE = 0.6
#: The quickstart's crop scales tried (flips off), and the one flips on is tried at.
DIGIT_SCALES = (0.3, 0.5, 0.7, 0.9)
DIGIT_FLIP_SCALE = 0.7
DIGIT_RUNS = {"full": [{"method": "full", "lr": 1e-3}], "lora": [{"method": "lora", "rank": 4}, {"method": "head"}]}
DIGITS_START, DIGITS_END = "<!-- augment-digits:start -->", "<!-- augment-digits:end -->"
RUNS = {"lora_r8": [{"method": "lora", "rank": 8, "alpha": 16}, {"method": "head"}]}


def settings() -> list[tuple[str, float, float]]:
    """``(label, scale lower bound, hflip)`` of every setting tried."""
    return [(f"flip, scale {s:g}", s, 0.5) for s in SCALES] + [(f"no flip, scale {NO_FLIP_SCALE:g}",
                                                                 NO_FLIP_SCALE, 0.0)]


def digit_settings() -> list[tuple[str, float, float]]:
    """``(label, scale lower bound, hflip)`` of the quickstart settings tried."""
    return [(f"no flip, scale {s:g}", s, 0.0) for s in DIGIT_SCALES] + [(f"flip, scale {DIGIT_FLIP_SCALE:g}",
                                                                       DIGIT_FLIP_SCALE, 0.5)]


def digits(args: argparse.Namespace) -> str:
    """Run the quickstart settings; return the docs section."""
    from visionpeft.recipe import load_recipe
    from visionpeft.tasks.compare import run_compare

    results: dict[str, dict[str, float]] = {}
    seconds = 0.0
    for label, scale, hflip in digit_settings():
        started = time.perf_counter()
        recipe = load_recipe(str(REPO / "visionpeft/assets/recipes/quickstart.yaml"), [
            f"output={args.runs}", f"name=aug-digits-s{scale:g}-f{hflip:g}", f"seeds={args.seeds}",
            "tensorboard=false", "train.progress=false", f"augment.scale=[{scale},1.0]", f"augment.hflip={hflip}",
            "compare=" + json.dumps(DIGIT_RUNS, separators=(",", ":"))])
        report = json.loads((run_compare(recipe) / "report.json").read_text())
        results[label] = {r["strategy"]: r["top1_val"] for r in report["runs"]}
        seconds += time.perf_counter() - started
        print(f"digits/{label}: {results[label]}", flush=True)
    labels = [s[0] for s in digit_settings()]
    rows = [f"| digits | {run} | " + " | ".join(f"{results[label][run]:.3f}" for label in labels) + " |"
            for run in DIGIT_RUNS]
    means = {label: sum(results[label].values()) / len(results[label]) for label in labels}
    best = max((label for label, _, hflip in digit_settings() if not hflip), key=means.__getitem__)
    return "\n".join([
        DIGITS_START, "### The quickstart's digits (`benchmarks/augment_study.py --digits`)", "",
        f"recipes/quickstart.yaml's settings (EfficientNet-Lite0, 32 px, 3 epochs, 355 validation digits), full "
        f"fine-tuning (lr 1e-3) and LoRA r4 + head, best-epoch **validation** top-1, mean of {args.seeds} seed(s).",
        "", "| data | run | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels), *rows, "",
        "Mean per setting: " + ", ".join(f"{k}: {v:.3f}" for k, v in means.items()) + f"; pick (flips off): "
        f"**{best}**.", "", f"Total {seconds / 60:.1f} min.", DIGITS_END])


def compare_doc(args: argparse.Namespace, family: str, dataset: str, scale: float, hflip: float) -> dict[str, Any]:
    model, weights = MODELS[family]
    return {
        "name": f"aug-{family}-{dataset}-s{scale:g}-f{hflip:g}", "model": model,
        "weights": str(shared_dir() / weights), "data": str(shared_dir() / DATASETS[dataset]), "seed": 0,
        "seeds": args.seeds, "output": str(args.runs), "tensorboard": False, "compare": RUNS,
        "train": {"epochs": args.epochs, "batch_size": 32, "workers": 0, "progress": False, "device": "cpu"},
        "optim": {"weight_decay": 0.05, "warmup_epochs": 0},
        "augment": {"img_size": args.img_size, "scale": [scale, 1.0], "hflip": hflip},
        "dataset": {"max_per_class": args.per_class},
    }


def run_one(doc: dict[str, Any]) -> dict[str, Any]:
    """One compare: ``{run: best-epoch validation top-1}`` and its seconds."""
    from visionpeft.recipe import parse_recipe
    from visionpeft.tasks.compare import run_compare

    started = time.perf_counter()
    cdir = run_compare(parse_recipe(doc))
    report = json.loads((cdir / "report.json").read_text())
    return {"val": {r["strategy"]: r["top1_val"] for r in report["runs"]},
            "seconds": round(time.perf_counter() - started, 1), "compare_dir": str(cdir)}


def pick(results: dict[str, Any], family: str) -> tuple[str, dict[str, float]]:
    """The flip setting with the best validation top-1 averaged over runs and datasets of ``family``."""
    means: dict[str, float] = {}
    for label, _, hflip in settings():
        if not hflip:
            continue
        cells = [v for key, res in results.items() if key.startswith(f"{family}/") and key.endswith(f"/{label}")
                 for v in res["val"].values()]
        if cells:
            means[label] = sum(cells) / len(cells)
    return max(means, key=means.__getitem__), means


def section(results: dict[str, Any], args: argparse.Namespace) -> str:
    labels = [s[0] for s in settings()]
    lines = ["| model / data | run | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    combos = sorted({"/".join(k.split("/")[:2]) for k in results})
    for combo in combos:
        for run in ("full", *RUNS):
            cells = [results.get(f"{combo}/{label}", {}).get("val", {}).get(run) for label in labels]
            lines.append(f"| {combo} | {run} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
    picks = []
    for family in MODELS:
        if any(k.startswith(f"{family}/") for k in results):
            best, means = pick(results, family)
            picks.append(f"- {family}: mean validation top-1 per setting "
                         + ", ".join(f"{k}: {v:.3f}" for k, v in means.items()) + f"; pick: **{best}**.")
    return "\n".join([
        START, "## Augmentation for natural images (`benchmarks/augment_study.py`, issue 22)", "",
        f"Best-epoch **validation** top-1, mean of {args.seeds} seed(s), {args.epochs} epochs at {args.img_size} px, "
        f"flowers5_128 ({args.per_class} images per class and split) and hymenoptera (at most {args.per_class} per "
        "class), AdamW at each method's default rate, weight decay 0.05. Columns: horizontal flips (p 0.5) with "
        f"the random crop's area lower bound (upper 1.0; timm's default is 0.08), and flips off at "
        f"{NO_FLIP_SCALE:g}. Validation holds 120-300 images per set, so with one or two seeds a difference below "
        "about 0.03 is within noise.", "",
        *lines, "", *picks, "",
        machine_line(sum(r["seconds"] for r in results.values())), END])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_study_args(p, Path(__file__).stem)
    p.add_argument("--seeds", type=int, default=2, help="seeds per cell (their mean is compared)")
    p.add_argument("--only", default="vit,cnn", help="comma list of vit, cnn")
    p.add_argument("--tiny", action="store_true", help="smoke run: 1 epoch, tiny subsets")
    p.add_argument("--digits", action="store_true", help="the quickstart's digits instead (module docstring)")
    args = p.parse_args(argv)
    if args.tiny:
        args.epochs, args.per_class, args.img_size, args.seeds = 1, 4, 64, 1
    args.runs = args.runs or Path(tempfile.mkdtemp(prefix="augment-study-")) / "runs"
    if args.digits:
        from benchmarks.sections import publish

        publish(digits(args), DIGITS_START, DIGITS_END, md=args.out.with_name("augment_study_digits.md"),
                docs=args.update_docs)
        return 0
    results: dict[str, Any] = {}
    for family in args.only.split(","):
        for dataset in DATASETS:
            for label, scale, hflip in settings():
                res = run_one(compare_doc(args, family, dataset, scale, hflip))
                results[f"{family}/{dataset}/{label}"] = res
                print(f"{family}/{dataset}/{label}: {res['val']} ({res['seconds']:.0f} s)", flush=True)
    from benchmarks.sections import publish

    publish(section(results, args), START, END, md=args.out, docs=args.update_docs, json_path=args.json,
            payload={"args": {k: str(v) for k, v in vars(args).items()}, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
