"""ViT transfer benchmark: every ViT strategy against full fine-tuning on the shared ImageNet ViT-Tiny/16, on CPU.

Three stages, each strategy at its own learning rate:

1. **grid**: a small learning-rate grid per method on a flowers5_128 subset (``--grid-per-class`` images per
   class in train and val), best validation top-1 wins. Methods without their own grid take their family's
   pick (LoRA q/v <- LoRA, VPT-shallow <- VPT-deep, partial freeze <- full fine-tuning); the classifier of
   every run takes the linear probe's pick.
2. **compare** on all of flowers5_128 and hymenoptera_data with the picked rates (``visionpeft compare``:
   full fine-tuning first, same data, epochs, seed and schedule).
3. **cached linear probe** (``cache_features``, deterministic transform) at the model's native 224 px, the
   counterpart of the manifest's logistic-regression probe (0.818 flowers, 0.967 hymenoptera).

Writes JSON (``--json``) and Markdown (``--out``); ``--update-docs docs/benchmarks.md`` replaces the ViT section::

    python benchmarks/transfer_vit.py --update-docs docs/benchmarks.md      # ~45 min on 2 busy cores
    python benchmarks/transfer_vit.py --tiny --out /tmp/v.md --json /tmp/v.json   # smoke run (~2 min)

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
START, END = "<!-- vit-benchmark:start -->", "<!-- vit-benchmark:end -->"
MODEL = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
WEIGHTS = "weights/vit_tiny_patch16_224.in1k.safetensors"

#: Runs of the compare (full fine-tuning is added first by ``visionpeft compare``).
STRATEGIES: dict[str, list[dict[str, Any]]] = {
    "linear_probe": [{"method": "head"}],
    "bitfit": [{"method": "bitfit"}, {"method": "head"}],
    "lora_r8": [{"method": "lora", "rank": 8, "alpha": 16}, {"method": "head"}],
    "lora_qv_r8": [{"method": "lora", "rank": 8, "alpha": 16, "targets": ["blocks.*.attn.qkv"], "qkv": "qv"},
                   {"method": "head"}],
    "vpt_shallow": [{"method": "vpt", "tokens": 10, "mode": "shallow"}, {"method": "head"}],
    "vpt_deep": [{"method": "vpt", "tokens": 10, "mode": "deep"}, {"method": "head"}],
    "freeze_7": [{"method": "freeze", "n": 7}],
    "dora_r8": [{"method": "dora", "rank": 8, "alpha": 16}, {"method": "head"}],
    "loha_r4": [{"method": "loha", "rank": 4, "alpha": 4}, {"method": "head"}],
    "lokr_r8": [{"method": "lokr", "rank": 8, "alpha": 8}, {"method": "head"}],
    "ssf": [{"method": "ssf"}, {"method": "head"}],
    "adaptformer_16": [{"method": "adaptformer", "bottleneck": 16, "scale": 0.1}, {"method": "head"}],
}
FULL = [{"method": "full"}]
#: Learning-rate grid per method family (AdamW); the first entry of each run gets the rate.
GRID: dict[str, list[float]] = {
    "linear_probe": [2e-3, 5e-3, 2e-2],
    "full": [3e-5, 1e-4, 3e-4],
    "lora_r8": [3e-4, 1e-3, 3e-3],
    "vpt_deep": [3e-4, 1e-3, 3e-3],
    "bitfit": [1e-3, 3e-3, 1e-2],
    "dora_r8": [3e-4, 1e-3, 3e-3],
    "loha_r4": [3e-4, 1e-3, 3e-3],
    "lokr_r8": [1e-3, 3e-3, 1e-2],
    "ssf": [1e-3, 3e-3, 1e-2],
    "adaptformer_16": [1e-3, 3e-3, 1e-2],
}
SHARES = {"lora_qv_r8": "lora_r8", "vpt_shallow": "vpt_deep", "freeze_7": "full"}


def shared_dir() -> Path:
    return Path(os.environ.get("VISIONPEFT_SHARED", REPO.parent / "shared")).resolve()


def with_lr(entries: list[dict[str, Any]], lr: float) -> list[dict[str, Any]]:
    """The run's strategy list with ``lr`` on its first (main) entry."""
    return [{**entries[0], "lr": lr}, *[dict(e) for e in entries[1:]]]


def base_doc(args: argparse.Namespace, name: str, data: Path, head_lr: float | None = None) -> dict[str, Any]:
    return {
        "name": name, "model": MODEL, "weights": str(shared_dir() / WEIGHTS), "data": str(data), "seed": 0,
        "output": str(args.runs), "tensorboard": False,
        "train": {"epochs": args.epochs, "batch_size": 32, "workers": args.workers, "progress": False,
                  "threads": args.threads},
        "optim": {"head_lr": head_lr, "weight_decay": 0.05, "warmup_epochs": 0},
        "augment": {"img_size": args.img_size, "crop_pct": 1.0, "scale": [0.5, 1.0], "hflip": 0.5},
    }


def grid(args: argparse.Namespace, flowers: Path, known: dict[str, float] | None = None) -> dict[str, Any]:
    """Stage 1: the learning-rate grid on a flowers subset; returns tried values and picks.

    Families already in ``known`` (``--picks``) keep their rate and are not re-run; the others run their grid.
    """
    from visionpeft.recipe import parse_recipe
    from visionpeft.tasks.classification import TASK

    tried: dict[str, dict[str, float]] = {}
    picks: dict[str, float] = dict(known or {})
    for family, lrs in GRID.items():
        if family in picks or (family not in ("full", "linear_probe") and family not in args.only):
            continue
        entries = FULL if family == "full" else STRATEGIES[family]
        tried[family] = {}
        for lr in lrs:
            doc = base_doc(args, f"grid-{family}", flowers, head_lr=picks.get("linear_probe"))
            doc["train"]["epochs"] = args.grid_epochs
            doc["dataset"] = {"max_per_class": args.grid_per_class}
            strategies = with_lr(entries, lr)
            run_dir = Path(args.runs) / f"grid-{family}-{lr:g}-{time.strftime('%H%M%S')}"
            res = TASK.train(parse_recipe({**doc, "strategies": strategies}), strategies, run_dir, family)
            tried[family][f"{lr:g}"] = res.metrics["top1"]
            print(f"grid {family} lr {lr:g}: top1 {res.metrics['top1']:.4f}", flush=True)
        picks[family] = float(max(tried[family].items(), key=lambda kv: kv[1])[0])
    for name, family in SHARES.items():
        if family in picks:
            picks.setdefault(name, picks[family])
    return {"tried": tried, "picks": picks}


def compare_doc(args: argparse.Namespace, name: str, data: Path, picks: dict[str, float]) -> dict[str, Any]:
    doc = base_doc(args, name, data, head_lr=picks["linear_probe"])
    compare = {"full": with_lr(FULL, picks["full"])}
    for run, entries in STRATEGIES.items():
        if run in args.only:
            compare[run] = with_lr(entries, picks[run])
    return {**doc, "compare": compare}


def run_compare_on(doc: dict[str, Any]) -> dict[str, Any]:
    from visionpeft.recipe import parse_recipe
    from visionpeft.tasks.compare import run_compare

    cdir = run_compare(parse_recipe(doc))
    report = json.loads((cdir / "report.json").read_text())
    report["compare_dir"] = str(cdir)
    data = json.loads((cdir / "00-full" / "data.json").read_text())
    report["title"] = (f"{doc['name']}: {data['train_images']:,} train / {data['val_images']:,} val images, "
                       f"{len(data['classes'])} classes, {doc['augment']['img_size']} px, "
                       f"{doc['train']['epochs']} epochs")
    lrs = {}  # the learning rates each run actually used (peak, per owner)
    for path in sorted(cdir.glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        lrs[metrics["strategy"]] = metrics["extra"].get("lrs", {})
    for row in report["runs"]:
        row["lrs"] = lrs.get(row["strategy"], {})
    return report


def cached_probe(args: argparse.Namespace, name: str, data: Path, head_lr: float) -> dict[str, Any]:
    """Stage 3: head-only on cached 224-px features (deterministic transform), many cheap epochs."""
    from visionpeft.recipe import parse_recipe
    from visionpeft.tasks.classification import TASK

    doc = base_doc(args, f"probe-{name}", data, head_lr=head_lr)
    doc["train"].update(epochs=args.probe_epochs, cache_features=True)
    doc["optim"]["weight_decay"] = args.probe_weight_decay
    doc["augment"] = {"img_size": args.probe_size, "random_resized_crop": False, "hflip": 0.0}
    doc["strategies"] = [{"method": "head"}]
    run_dir = Path(args.runs) / f"probe-{name}-{time.strftime('%H%M%S')}"
    res = TASK.train(parse_recipe(doc), doc["strategies"], run_dir, f"probe_{name}")
    hist = json.loads((run_dir / "metrics.json").read_text())["history"]
    return {"top1": res.metrics["top1"], "img_size": args.probe_size, "epochs": args.probe_epochs,
            "weight_decay": args.probe_weight_decay,
            "head_lr": head_lr, "cache_seconds": res.extra["cache_seconds"],
            "val_top1_by_epoch": [round(h.get("top1", h.get("val_top1", 0.0)), 4) for h in hist]}


def lr_text(lrs: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(lrs.items()))


def target_lines(reports: dict[str, dict], probes: dict[str, dict]) -> list[str]:
    """The issue's targets, measured: met or missed, with the numbers."""
    lines = []
    if "flowers" in reports:
        runs = {r["strategy"]: r for r in reports["flowers"]["runs"]}
        full = runs["full"]["top1_val"]
        small = [r for r in runs.values() if r["strategy"] != "full" and r["trainable_pct"] <= 2.0]
        if not small:
            return lines
        best = max(small, key=lambda r: r["top1_val"])
        lines.append(f"- flowers, best PEFT run at <= 2% trainable ({best['strategy']}, {best['trainable_pct']:.2f}%) "
                     f"{best['top1_val']:.4f} vs full fine-tuning {full:.4f}: "
                     f"**{'met' if best['top1_val'] >= full else 'missed'}**")
        if "vpt_deep" not in runs or "linear_probe" not in runs:
            return lines
        deep, probe = runs["vpt_deep"]["top1_val"], runs["linear_probe"]["top1_val"]
        lines.append(f"- flowers, VPT-deep {deep:.4f} vs linear probe {probe:.4f} (same recipe): "
                     f"**{'met' if deep > probe else 'missed'}**")
    if "flowers" in probes:
        p = probes["flowers"]
        lines.append(f"- flowers, visionpeft's cached linear probe ({p['img_size']} px, {p['epochs']} epochs) "
                     f"{p['top1']:.4f} vs the logistic regression's 0.818: "
                     f"**{'met' if p['top1'] >= 0.818 else 'missed'}**")
    if "hymenoptera" in reports:
        runs = reports["hymenoptera"]["runs"]
        best = max(runs[1:], key=lambda r: r["top1_val"])
        lines.append(f"- hymenoptera, best PEFT run ({best['strategy']}) {best['top1_val']:.4f} >= 0.95: "
                     f"**{'met' if best['top1_val'] >= 0.95 else 'missed'}**")
    return lines


def write_markdown(path: Path, args: argparse.Namespace, result: dict[str, Any]) -> None:
    from visionpeft.report.markdown import markdown_table

    cols = ["strategy", "trainable_params", "trainable_pct", "top1_val", "delta_top1_val_vs_full",
            "step_time_ratio_vs_full", "peak_mem_ratio_vs_full", "adapter_bytes", "train_seconds"]
    g = result.get("grid")
    md = [START, "## Classification: ViT-Tiny/16 (ImageNet) transfer, every ViT strategy against full fine-tuning",
          "", f"`python benchmarks/transfer_vit.py {' '.join(args.argv)}` on "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), torch threads "
          f"{args.threads}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
          f"Model `{MODEL}` with `weights=../shared/{WEIGHTS}` (mean = std = 0.5, bicubic), position embeddings "
          f"resampled to {args.img_size} px; AdamW, weight decay 0.05 (none for biases, norms, pos_embed, "
          "cls_token, prompts), cosine schedule, batch 32, RandomResizedCrop(0.5-1) + flip, seed 0.", ""]
    if g:
        md += [f"### Learning-rate grid (flowers5_128 subset: {args.grid_per_class} train / {args.grid_per_class} "
               f"val images per class, {args.grid_epochs} epochs; best val top-1 wins)", "",
               "| method | " + " | ".join(["lr -> top-1"] * 3) + " | pick |", "| --- | --- | --- | --- | --- |"]
        for fam, tried in g["tried"].items():
            cells = [f"{lr}: {top:.3f}" for lr, top in tried.items()]
            md.append(f"| {fam} | " + " | ".join(cells) + f" | {g['picks'][fam]:g} |")
        md += ["", "Shared picks: " + ", ".join(f"{k} <- {v}" for k, v in SHARES.items())
               + "; every run's classifier takes the linear probe's rate.", ""]
    for report in result["reports"].values():
        md += [f"### {report['title']}", "", f"Compare directory: `{report['compare_dir']}`", "",
               markdown_table(report["runs"], cols), "",
               "Learning rates (peak, per owner): " + "; ".join(
                   f"{r['strategy']}: {lr_text(r['lrs'])}" for r in report["runs"]), ""]
    for name, p in result["probes"].items():
        md.append(f"- cached linear probe on {name} ({p['img_size']} px, {p['epochs']} epochs, head lr "
                  f"{p['head_lr']:g} of {sorted(p.get('tried_head_lrs', {}))}, "
                  f"feature extraction {p['cache_seconds']:.0f} s): top-1 **{p['top1']:.4f}**; "
                  f"val top-1 by epoch {p['val_top1_by_epoch']}")
    md += ["", "Targets (issue 9):", *target_lines(result["reports"], result["probes"]), "", END]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(md) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--epochs", type=int, default=2, help="compare epochs (flowers)")
    p.add_argument("--hymenoptera-epochs", type=int, default=3)
    p.add_argument("--grid-epochs", type=int, default=2)
    p.add_argument("--grid-per-class", type=int, default=30)
    p.add_argument("--probe-size", type=int, default=224)
    p.add_argument("--probe-epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--picks", default=None, help="JSON {family: lr} instead of running the grid")
    p.add_argument("--datasets", default="flowers,hymenoptera")
    p.add_argument("--only", default=",".join(STRATEGIES), help="comma-separated runs (full always runs)")
    p.add_argument("--probe-lrs", default=None,
                   help="comma-separated head rates for the cached probe (default: the grid's linear-probe pick)")
    p.add_argument("--skip-probe", action="store_true")
    p.add_argument("--skip-compare", action="store_true", help="only the cached linear probe")
    p.add_argument("--probe-weight-decay", type=float, default=0.05,
                   help="AdamW weight decay of the cached probe's head (its only regulariser)")
    p.add_argument("--runs", default=str(REPO / "runs" / "benchmarks"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "transfer_vit.md"))
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "transfer_vit.json"))
    p.add_argument("--update-docs", default=None, help="markdown file whose ViT section is replaced")
    p.add_argument("--tiny", action="store_true", help="smoke test: 4 images per class, 32 px, 1 epoch")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    args.only = [r for r in args.only.split(",") if r]
    unknown = sorted(set(args.only) - set(STRATEGIES))
    if unknown:
        p.error(f"--only: unknown runs {unknown}; choose from {sorted(STRATEGIES)}")
    if args.tiny:
        args.img_size = args.probe_size = 32
        args.epochs = args.hymenoptera_epochs = args.grid_epochs = args.probe_epochs = 1
        args.grid_per_class = 4
    shared = shared_dir()
    flowers, ants = shared / "data" / "flowers5_128", shared / "data" / "hymenoptera_data"
    result: dict[str, Any] = {"reports": {}, "probes": {}}
    known = {k: float(v) for k, v in json.loads(args.picks).items()} if args.picks else {}
    result["grid"] = grid(args, flowers, known)
    picks = result["grid"]["picks"]
    result["picks"] = picks
    wanted = args.datasets.split(",")
    todo = [("flowers", flowers, args.epochs), ("hymenoptera", ants, args.hymenoptera_epochs)]
    for name, data, epochs in todo:
        if name not in wanted:
            continue
        doc = compare_doc(args, name, data, picks)
        doc["train"]["epochs"] = epochs
        if args.tiny:
            doc["dataset"] = {"max_per_class": 4}
        if not args.skip_compare:
            result["reports"][name] = run_compare_on(doc)
        if not args.skip_probe and (not args.tiny or name == "flowers"):
            lrs = [float(v) for v in args.probe_lrs.split(",")] if args.probe_lrs else [picks["linear_probe"]]
            tried = [cached_probe(args, name, data, lr) for lr in lrs]
            best = max(tried, key=lambda p: p["top1"])  # picked on validation, as every other run here
            result["probes"][name] = {**best, "tried_head_lrs": {f"{p['head_lr']:g}": p["top1"] for p in tried}}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))  # partial results survive a kill
    write_markdown(Path(args.out), args, result)
    section = Path(args.out).read_text()
    print(section)
    if args.update_docs:
        from sections import replace_marked_section  # benchmarks/sections.py (scripts run from benchmarks/)

        replace_marked_section(Path(args.update_docs), START, END, section)


if __name__ == "__main__":
    main()
