"""bf16 autocast vs float32 training: accuracy (within the seed-to-seed spread?) and step-time ratio, side by side.

On flowers5_128 with the ImageNet EfficientNet-Lite0 (``../shared/weights``) and the test split that
``transfer_classification.py`` carves out of ``train`` (same files, same seeds), every chosen strategy is trained
once per seed in float32 (``train.amp: off``) and once with bf16 autocast (``train.amp: bf16``; adapters and the
optimizer state stay float32), the two runs of one seed back to back. Each run keeps its best validation epoch
and is evaluated on test. The table gives, per strategy: top-1 on test (mean +- sample sd over seeds) in both
precisions, the paired 95% t-interval of (bf16 - float32) over seeds, whether bf16's mean lies within float32's
seed-to-seed spread (|mean difference| <= float32's sd), and the median over seeds of the training-time ratio
(bf16 / fp32, same process, interleaved). The CPU's bf16 support (``avx512_bf16`` / ``amx_bf16`` flags) is
printed with it: without them bf16 matmuls and convolutions are emulated and slower, and only the accuracy half
is meaningful.

    python benchmarks/precision.py --update-docs docs/benchmarks.md          # 3 seeds, LoRA r8 (+ head)
    python benchmarks/precision.py --smoke                                   # pipeline check (1 epoch, 2 seeds)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
START, END = "<!-- precision-benchmark:start -->", "<!-- precision-benchmark:end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from transfer_classification import COMPARE

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", default="lora_r8", help=f"comma-separated rows of {sorted(COMPARE)} or 'full'")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-per-class", type=int, default=60)
    p.add_argument("--size", type=int, default=80, help="image size in pixels")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--runs", default=None, help="where runs go (default: a temporary folder)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "precision.json"))
    p.add_argument("--update-docs", default=None, help="markdown file whose precision section is replaced")
    p.add_argument("--reuse", default=None, metavar="JSON",
                   help="a previous run's JSON: its runs with the same settings are kept, not trained again")
    p.add_argument("--smoke", action="store_true", help="1 epoch, 2 seeds, 10 images per class, 48 px")
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.seeds, args.max_per_class, args.size = 1, 2, 10, 48
    return args


def cpu_bf16_flags() -> list[str]:
    """The CPU's native bf16 features (Linux ``/proc/cpuinfo``); empty when it has none or it cannot be read."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags.split(":", 1)[1].split() if f in ("avx512_bf16", "amx_bf16", "amx_tile"))


def recipe_for(args: argparse.Namespace, runs: Path, data: str, strategies: list[dict], seed: int, amp: str) -> Any:
    from transfer_classification import MODELS, base_doc

    from visionpeft.recipe import parse_recipe

    ns = argparse.Namespace(only="none", seeds=1, lr_sweep=False, runs=str(runs), max_per_class=args.max_per_class,
                            epochs=args.epochs, workers=0, threads=args.threads)
    doc = base_doc(ns, "precision", data, MODELS["cnn"], args.size, hflip=0.0)
    doc.pop("compare")
    doc["optim"]["head_lr"] = 1e-2  # the setting of the runs in docs/benchmarks.md (and of --reuse'd JSONs)
    doc.update(seed=seed, seeds=1, strategies=strategies)
    doc["train"]["amp"] = amp
    return parse_recipe(doc)


def run_one(args: argparse.Namespace, runs: Path, data: str, name: str, strategies: list[dict], seed: int,
            amp: str) -> dict[str, Any]:
    """Train, keep the best validation epoch, evaluate it on test."""
    from visionpeft.tasks import get_task

    task = get_task("classification")
    recipe = recipe_for(args, runs, data, strategies, seed, amp)
    result = task.train(recipe, strategies, runs / f"{name}-{amp}-seed{seed}", f"{name}-{amp}")
    test = task.evaluate(Path(result.run_dir), "test")
    return {"strategy": name, "amp": amp, "seed": seed, "top1_test": float(test["top1"]),
            "top1_val": float(result.metrics["top1"]), "train_seconds": float(result.train_seconds)}


SETTINGS = ("epochs", "max_per_class", "size", "threads")


def reusable_runs(args: argparse.Namespace) -> dict[tuple[str, int, str], dict[str, Any]]:
    """Runs of ``--reuse`` keyed by (strategy, seed, amp), when that file was made with the same settings."""
    if not args.reuse:
        return {}
    old = json.loads(Path(args.reuse).read_text())
    differ = [k for k in SETTINGS if old["args"].get(k) != getattr(args, k)]
    if differ:
        print(f"--reuse {args.reuse}: made with other settings ({', '.join(differ)}); drop --reuse or pass the same "
              "settings", file=sys.stderr)
        raise SystemExit(2)
    return {(r["strategy"], r["seed"], r["amp"]): r for r in old["runs"]}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from visionpeft.report.stats import paired_interval

    out = []
    for name in dict.fromkeys(r["strategy"] for r in rows):
        by = {amp: sorted((r for r in rows if r["strategy"] == name and r["amp"] == amp), key=lambda r: r["seed"])
              for amp in ("off", "bf16")}
        fp32, bf16 = ([r["top1_test"] for r in by[a]] for a in ("off", "bf16"))
        sd = statistics.stdev(fp32) if len(fp32) > 1 else float("nan")
        delta = paired_interval(bf16, fp32)
        out.append({
            "strategy": name, "seeds": len(fp32),
            "fp32_top1_test": f"{statistics.mean(fp32):.4f} +- {sd:.4f}",
            "bf16_top1_test": f"{statistics.mean(bf16):.4f} +- "
                              f"{statistics.stdev(bf16) if len(bf16) > 1 else float('nan'):.4f}",
            "delta_bf16_minus_fp32": f"{delta.mean:+.4f} [{delta.low:+.4f}, {delta.high:+.4f}]",
            "within_fp32_seed_spread": abs(statistics.mean(bf16) - statistics.mean(fp32)) <= sd,
            # Median of the per-seed ratios: the process's first run also pays one-off start-up costs.
            "time_ratio_bf16_over_fp32": round(statistics.median(
                b["train_seconds"] / f["train_seconds"] for b, f in zip(by["bf16"], by["off"])), 2),
        })
    return out


def markdown(args: argparse.Namespace, summary: list[dict[str, Any]], flags: list[str]) -> str:
    cols = list(summary[0])
    lines = [f"| {' | '.join(cols)} |", f"|{'---|' * len(cols)}"]
    lines += [f"| {' | '.join(str(s[c]) for c in cols)} |" for s in summary]
    cpu = f"{platform.processor() or platform.machine()}, bf16 flags: {', '.join(flags) or 'none (emulated)'}"
    threads = f" --threads {args.threads}" if args.threads else ""
    return "\n".join([
        START, "## bf16 autocast vs float32 (flowers5_128, EfficientNet-Lite0)", "",
        f"`python benchmarks/precision.py --strategies {args.strategies} --seeds {args.seeds}{threads}"
        f"{' --smoke' if args.smoke else ''}`: {args.epochs} epochs, "
        f"{args.max_per_class} images per class before the test carve, {args.size} px, {args.seeds} seeds "
        "(0..), each seed trained in both precisions back to back; best validation epoch evaluated on the carved "
        f"test split. CPU: {cpu}.", "", *lines, "",
        "`within_fp32_seed_spread`: |mean(bf16) - mean(fp32)| <= the float32 runs' sample standard deviation. "
        "Time ratio: median over seeds of (bf16 / float32 training seconds), same process.", END])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from transfer_classification import COMPARE, carve_test_split, shared_dir

    runs = Path(args.runs or tempfile.mkdtemp(prefix="visionpeft-precision-")).resolve()
    data = str(carve_test_split(str(shared_dir() / "data" / "flowers5_128"), runs / "splits" / "flowers"))
    table = {"full": [{"method": "full"}], **COMPARE}
    names = args.strategies.split(",")
    unknown = [n for n in names if n not in table]
    if unknown:
        print(f"--strategies: unknown {unknown}; expected some of {sorted(table)}", file=sys.stderr)
        return 2
    done = reusable_runs(args)
    rows = [done.get((name, seed, amp)) or run_one(args, runs, data, name, table[name], seed, amp)
            for name in names for seed in range(args.seeds) for amp in ("off", "bf16")]
    summary, flags = summarise(rows), cpu_bf16_flags()
    section = markdown(args, summary, flags)
    print(section)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"runs": rows, "summary": summary, "cpu_bf16_flags": flags,
                                          "args": vars(args)}, indent=2) + "\n")
    if args.update_docs:
        from sections import replace_marked_section  # benchmarks/sections.py (scripts run from benchmarks/)

        replace_marked_section(Path(args.update_docs), START, END, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
