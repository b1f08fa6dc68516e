"""Side-by-side cost of each strategy against full fine-tuning, plus visionpeft LoRA vs HF PEFT LoRA.

Everything is measured in one process, round-robin (one step of each method per round), so machine
noise hits every method alike; the table reports ratios to full fine-tuning measured that way.

    python benchmarks/strategies.py                      # CPU, 224 px, batch 16 (a few minutes)
    python benchmarks/strategies.py --vit none --cnn none --yolo ../shared/weights/yolov5nu-cocobackbone.pt
    python benchmarks/strategies.py --quick              # tiny smoke run
    python benchmarks/strategies.py --device cuda --out docs/bench_strategies_gpu.json
    python benchmarks/strategies.py --only 'lora r8+head,bitfit+head' --amp bf16 --compile   # + twin rows

``--amp bf16[,fp16]`` and ``--compile`` add twin rows per method (``lora r8+head +bf16``, ``... +compile``,
``... +bf16+compile``) measured in the same round-robin, so their ratios to fp32 eager full fine-tuning (and to
their own plain row) are side by side. ``benchmarks/gpu.sh`` runs the GPU table.

Random init is fine: costs do not depend on the weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from sections import replace_marked_section  # benchmarks/sections.py (scripts run from benchmarks/)
from torch import nn

import visionpeft
from visionpeft.backends.timm import timm_spec
from visionpeft.profiling import measure_step_memory

VIT_TARGETS = ["qkv", "proj", "fc1", "fc2"]
SHARED = Path(os.environ.get("VISIONPEFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def vit_methods(spec_blocks: int) -> dict[str, list[dict]]:
    half = spec_blocks // 2
    return {
        "full": [{"method": "full"}],
        "head": [{"method": "head"}],
        f"freeze n={half}": [{"method": "freeze", "n": half}],
        "bitfit+head": [{"method": "bitfit"}, {"method": "head"}],
        "norm+head": [{"method": "norm"}, {"method": "head"}],
        "lora r8+head": [{"method": "lora", "rank": 8, "targets": VIT_TARGETS}, {"method": "head"}],
        "lora r8 qv+head": [{"method": "lora", "rank": 8, "targets": ["qkv"], "qkv": "qv"}, {"method": "head"}],
        "vpt shallow 10+head": [{"method": "vpt", "tokens": 10, "mode": "shallow"}, {"method": "head"}],
        "vpt deep 10+head": [{"method": "vpt", "tokens": 10, "mode": "deep"}, {"method": "head"}],
        "dora r8+head": [{"method": "dora", "rank": 8, "targets": VIT_TARGETS}, {"method": "head"}],
        "loha r4+head": [{"method": "loha", "rank": 4, "targets": VIT_TARGETS}, {"method": "head"}],
        "lokr r8+head": [{"method": "lokr", "rank": 8, "targets": VIT_TARGETS}, {"method": "head"}],
        "ssf+head": [{"method": "ssf"}, {"method": "head"}],
        "adaptformer 16+head": [{"method": "adaptformer", "bottleneck": 16}, {"method": "head"}],
    }


def cnn_methods(spec_blocks: int) -> dict[str, list[dict]]:
    half = spec_blocks // 2
    return {
        "full": [{"method": "full"}],
        "head": [{"method": "head"}],
        f"freeze n={half}": [{"method": "freeze", "n": half}],
        "bitfit+head": [{"method": "bitfit"}, {"method": "head"}],
        "norm+head": [{"method": "norm"}, {"method": "head"}],
        "lora r8+head": [{"method": "lora", "rank": 8}, {"method": "head"}],
        f"freeze n={half}+lora r8+head": [
            {"method": "freeze", "n": half},
            {"method": "lora", "rank": 8},
            {"method": "head"},
        ],
        "dora r8+head": [{"method": "dora", "rank": 8}, {"method": "head"}],
        "loha r4+head": [{"method": "loha", "rank": 4}, {"method": "head"}],
        "lokr r8+head": [{"method": "lokr", "rank": 8}, {"method": "head"}],
        "ssf+head": [{"method": "ssf"}, {"method": "head"}],
    }


@dataclass
class Entry:
    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    amp: str | None = None  # autocast dtype name (bf16 / fp16) or None for fp32
    compiled: bool = False
    scaler: torch.amp.GradScaler | None = None
    times: list[float] = field(default_factory=list)
    trainable: int = 0
    total: int = 0
    mem_mb: float = 0.0
    loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None  # None: cross-entropy on logits


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _make_entry(name: str, model: nn.Module, strategies: list[dict] | None, amp: str | None = None,
                compiled: bool = False, device: torch.device | None = None, loss_fn: Callable | None = None) -> Entry:
    if strategies is not None:
        visionpeft.apply(model, strategies)
    params = [p for p in model.parameters() if p.requires_grad]
    entry = Entry(name, model, torch.optim.AdamW(params, lr=1e-4), amp=amp, compiled=compiled, loss_fn=loss_fn)
    if amp == "fp16":  # fp16 needs loss scaling (bf16 does not)
        entry.scaler = torch.amp.GradScaler(device.type if device is not None else "cuda")
    if compiled:
        model.compile()  # in place: parameter names unchanged
    entry.trainable = sum(p.numel() for p in params)
    entry.total = sum(p.numel() for p in model.parameters())
    return entry


def _step(entry: Entry, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    entry.model.train()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=AMP_DTYPES.get(entry.amp, torch.float32), enabled=entry.amp is not None):
        if entry.loss_fn is not None:
            loss = entry.loss_fn(entry.model, x)
        else:
            loss = nn.functional.cross_entropy(entry.model(x).float(), y)
    if entry.scaler is not None:
        entry.scaler.scale(loss).backward()
        entry.scaler.step(entry.optimizer)
        entry.scaler.update()
    else:
        loss.backward()
        entry.optimizer.step()
    entry.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def run_round_robin(entries: list[Entry], x, y, device, rounds: int, warmup: int = 2) -> None:
    for e in entries:
        for _ in range(warmup):
            _step(e, x, y, device)
        with measure_step_memory(e.model, e.optimizer, device) as stats:
            _step(e, x, y, device)
        e.mem_mb = stats.peak_mb
    for _ in range(rounds):
        for e in entries:
            e.times.append(_step(e, x, y, device))


@torch.no_grad()
def latency(model: nn.Module, x: torch.Tensor, device: torch.device, reps: int) -> float:
    model.eval()
    model(x)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def variants(args) -> list[tuple[str, str | None, bool]]:
    """(row suffix, amp, compiled) for every twin row asked for; the plain fp32 eager row first."""
    amps = [a for a in (args.amp or "").split(",") if a]
    out = [("", None, False)] + [(f" +{a}", a, False) for a in amps]
    if args.compile:
        out += [(" +compile", None, True)] + [(f" +{a}+compile", a, True) for a in amps]
    return out


def _latency_ratio(entry: Entry, base: nn.Module, x, device, reps) -> tuple[float | None, str]:
    """Inference latency of the shipped form (merged where possible) over the plain base model (fp32 eager
    rows only: a twin row's model is the same after merging)."""
    if entry.amp is not None or entry.compiled:
        return None, "-"
    model = copy.deepcopy(entry.model)
    form = "merged"
    try:
        visionpeft.merge(model)
    except visionpeft.ConfigError:
        form = "adapted (cannot merge)"
    b, m = [], []
    for _ in range(reps):  # alternate so drift hits both
        b.append(latency(base, x, device, 1))
        m.append(latency(model, x, device, 1))
    # Minimum, not median: inference has no inherent variance, so the fastest run is the one least
    # disturbed by other processes (same reasoning as timeit).
    return min(m) / min(b), form


def bench_model(model_name: str, methods_fn: Callable[[int], dict], args, device) -> list[dict]:
    torch.manual_seed(0)
    kwargs = {"img_size": args.size} if "vit" in model_name else {}
    base = timm.create_model(model_name, pretrained=False, num_classes=10, **kwargs).to(device)
    spec = timm_spec(base)
    methods = methods_fn(len(spec.blocks))
    if args.only:  # full fine-tuning is the reference of every ratio: always kept
        methods = {k: v for k, v in methods.items() if k == "full" or k in args.only.split(",")}
    entries = [_make_entry(n + suffix, copy.deepcopy(base), s, amp, comp, device)
               for n, s in methods.items() for suffix, amp, comp in variants(args)]
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    run_round_robin(entries, x, y, device, args.rounds)
    return [_row(model_name, e, entries[0], base, x, device, args) for e in entries]


def _row(model_name: str, e: Entry, full: Entry, base: nn.Module, x, device, args) -> dict:
    """One table row: ``e``'s medians as ratios to the ``full`` entry measured in the same round-robin."""
    lat, form = _latency_ratio(e, base, x, device, args.latency_reps)
    t_full = statistics.median(full.times)
    print(f"  {model_name:<24} {e.name:<30} done", flush=True)
    return {
        "model": model_name,
        "strategy": e.name,
        "trainable_params": e.trainable,
        "total_params": e.total,
        "trainable_pct": 100.0 * e.trainable / e.total,
        "step_s": statistics.median(e.times),
        "step_ratio_vs_full": statistics.median(e.times) / t_full,
        "train_mem_mb": e.mem_mb,
        "mem_ratio_vs_full": e.mem_mb / full.mem_mb,
        "latency_ratio_vs_base": lat,
        "latency_form": form,
        "amp": e.amp,
        "compiled": e.compiled,
    }


def yolo_methods(spec_blocks: int) -> dict[str, list[dict]]:
    """The detection table's rows (``freeze n=10`` is Ultralytics' ``freeze=10``: the YOLOv5n backbone)."""
    return {
        "full": [{"method": "full"}],
        "head": [{"method": "head"}],
        "freeze n=10": [{"method": "freeze", "n": 10}],
        "bitfit+head": [{"method": "bitfit"}, {"method": "head"}],
        "norm+head": [{"method": "norm"}, {"method": "head"}],
        "lora r8+head": [{"method": "lora", "rank": 8}, {"method": "head"}],
        "freeze n=10+lora r8+head": [{"method": "freeze", "n": 10}, {"method": "lora", "rank": 8}, {"method": "head"}],
        "dora r8+head": [{"method": "dora", "rank": 8}, {"method": "head"}],
        "ssf+head": [{"method": "ssf"}, {"method": "head"}],
    }


def _yolo_batch(n: int, size: int, nc: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Ultralytics' training batch layout: 3 boxes per image (normalised xywh), fixed by a seeded generator."""
    g = torch.Generator().manual_seed(0)
    k = 3 * n
    xy = torch.rand(k, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(k, 2, generator=g) * 0.2 + 0.05
    return {"batch_idx": torch.arange(n).repeat_interleave(3).float().to(device),
            "cls": torch.randint(0, nc, (k, 1), generator=g).float().to(device),
            "bboxes": torch.cat([xy, wh], 1).to(device)}


def bench_yolo(args, device) -> list[dict]:
    """The same table for an Ultralytics detector (``--yolo``): each step is Ultralytics' own detection loss
    (``DetectionModel.loss``: box + class + DFL) on synthetic boxes, at ``--yolo-size`` pixels."""
    from ultralytics.cfg import get_cfg

    from visionpeft.backends.ultralytics import build_model, ultralytics_spec

    torch.manual_seed(0)
    src = build_model(args.yolo)
    if str(args.yolo).endswith(".pt"):  # 3 classes, as BCCD: a new head on the checkpoint's layers, as in training
        base = type(src)(dict(src.yaml), nc=3, verbose=False)
        base.load(src, verbose=False)
    else:
        base = build_model(args.yolo, nc=3)
    base = base.float().to(device)
    base.args = get_cfg()  # the loss reads its gains (box, cls, dfl) from the model's args
    methods = yolo_methods(len(ultralytics_spec(base).blocks))
    if args.only:
        methods = {k: v for k, v in methods.items() if k == "full" or k in args.only.split(",")}
    x = torch.rand(args.batch, 3, args.yolo_size, args.yolo_size, device=device)
    targets = _yolo_batch(args.batch, args.yolo_size, 3, device)

    def detection_loss(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        loss, _ = model.loss({"img": images, **targets}, model(images))
        return loss.sum()

    entries = [_make_entry(n + suffix, copy.deepcopy(base), s, amp, comp, device, detection_loss)
               for n, s in methods.items() for suffix, amp, comp in variants(args)]
    run_round_robin(entries, x, None, device, args.rounds)
    name = f"{Path(args.yolo).stem} ({args.yolo_size} px)"
    return [_row(name, e, entries[0], base, x, device, args) for e in entries]


def bench_peft(args, device) -> dict:
    """visionpeft LoRA vs HF PEFT LoRA, same ViT, same targets, same rank, round-robin."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = timm.create_model(args.vit, pretrained=False, num_classes=10, img_size=args.size)
    base = base.to(device)
    ours = copy.deepcopy(base)
    visionpeft.apply(ours, [{"method": "lora", "rank": 8, "alpha": 8, "targets": VIT_TARGETS}])
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=8, target_modules=VIT_TARGETS))
    entries = [_make_entry("visionpeft", ours, None), _make_entry("peft", theirs, None)]
    assert entries[0].trainable == entries[1].trainable, (entries[0].trainable, entries[1].trainable)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    run_round_robin(entries, x, y, device, args.rounds)
    t_ours, t_peft = (statistics.median(e.times) for e in entries)
    return {
        "trainable_params": entries[0].trainable,
        "visionpeft_step_s": t_ours,
        "peft_step_s": t_peft,
        "ratio": t_ours / t_peft,
    }


def to_markdown(rows: list[dict], peft: dict | None, env: dict) -> str:
    lines = [
        f"Machine: {env['machine']}; torch {env['torch']}; device {env['device']}; "
        f"batch {env['batch']}, {env['size']} px, {env['rounds']} round-robin steps per method.",
        "",
        "| model | strategy | trainable | % | step / full | train mem / full | latency / base |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["latency_ratio_vs_base"] is None:
            lat = "-"
        else:
            lat = f"{r['latency_ratio_vs_base']:.3f}" + ("" if r["latency_form"] == "merged" else " (unmerged)")
        lines.append(
            f"| {r['model']} | {r['strategy']} | {r['trainable_params']:,} | {r['trainable_pct']:.2f} | "
            f"{r['step_ratio_vs_full']:.2f} | {r['mem_ratio_vs_full']:.2f} | {lat} |"
        )
    if peft is None:
        return "\n".join(lines)
    lines += [
        "",
        f"visionpeft LoRA vs HF PEFT LoRA ({env.get('vit', 'vit_tiny')}, r=8, {VIT_TARGETS}, "
        f"{peft['trainable_params']:,} trainable): "
        f"{peft['visionpeft_step_s'] * 1e3:.1f} ms vs {peft['peft_step_s'] * 1e3:.1f} ms per step, "
        f"ratio {peft['ratio']:.3f}",
    ]
    return "\n".join(lines)


START, END = "<!-- strategies-benchmark:start -->", "<!-- strategies-benchmark:end -->"
YOLO_START, YOLO_END = "<!-- strategies-yolo-benchmark:start -->", "<!-- strategies-yolo-benchmark:end -->"

TARGETS = (
    ("head", "step_ratio_vs_full", 0.35, "head-only step <= 0.35x full fine-tuning"),
    ("lora r8+head", "step_ratio_vs_full", 0.8, "LoRA step <= 0.8x full fine-tuning"),
    ("lora r8+head", "latency_ratio_vs_base", 1.02, "merged LoRA latency <= 1.02x base"),
)


def target_lines(rows: list[dict], peft: dict | None) -> list[str]:
    """One line per target: measured value, met or missed."""
    out = []
    for strategy, key, limit, text in TARGETS:
        for r in rows:
            if r["strategy"] == strategy and r[key] is not None:
                ok = "met" if r[key] <= limit else "MISSED"
                out.append(f"- {text}: {r['model']} {r[key]:.3f} ({ok})")
    steps = {(r["model"], r["strategy"]): r["step_s"] for r in rows}
    for (model, strategy), t in steps.items():
        if strategy == "lora r8+head" and (model, "bitfit+head") in steps:  # issue 13: LoRA near its floor
            ratio = t / steps[(model, "bitfit+head")]
            ok = "met" if ratio <= 1.1 else "MISSED"
            out.append(f"- LoRA step <= 1.10x BitFit+head step: {model} {ratio:.3f} ({ok})")
    if peft is None:
        return out
    ok = "met" if peft["ratio"] <= 1.05 else "MISSED"
    out.append(f"- visionpeft / PEFT LoRA step <= 1.05: {peft['ratio']:.3f} ({ok})")
    return out


def update_docs(path: Path, md: str, rows: list[dict], peft: dict | None, detector_only: bool = False) -> None:
    """Replace the strategies section of ``path`` (between the markers), keeping the rest. A detector-only run
    (``--vit none --cnn none``) has a section of its own, so it does not replace the timm tables."""
    start, end = (YOLO_START, YOLO_END) if detector_only else (START, END)
    title = "Detector strategy costs side by side" if detector_only else "Strategy costs side by side"
    section = "\n".join([
        start,
        f"## {title} (`benchmarks/strategies.py`)",
        "",
        md,
        "",
        "Targets:",
        *target_lines(rows, peft),
        "",
        "Step and memory are ratios to full fine-tuning measured round-robin in one process; memory on CPU is",
        "parameters + gradients + optimizer state + activations saved for backward (`visionpeft.profiling`).",
        "Latency is the shipped form (merged where the method allows) against the plain base model.",
        end,
    ])
    replace_marked_section(path, start, end, section)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--latency-reps", type=int, default=10)
    ap.add_argument("--vit", default="vit_tiny_patch16_224", help="timm ViT of the first table and the PEFT row")
    ap.add_argument("--cnn", default="resnet18", help="timm CNN of the second table; 'none' skips it")
    ap.add_argument("--yolo", default=str(SHARED / "weights" / "yolov5nu-cocobackbone.pt"),
                    help="Ultralytics detector of the third table (a .pt or model yaml); 'none' skips it")
    ap.add_argument("--yolo-size", type=int, default=256, help="the detector's image size in pixels")
    ap.add_argument("--amp", default=None, help="comma-separated autocast twins to add: bf16, fp16 (fp16: GPU)")
    ap.add_argument("--compile", action="store_true", help="add torch.compile (inductor) twin rows")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (batch 2, 64 px, 2 rounds)")
    ap.add_argument("--only", default=None, help="comma-separated row names to run (full is always run)")
    ap.add_argument("--skip-peft", action="store_true", help="skip the visionpeft vs HF PEFT LoRA timing")
    ap.add_argument("--out", default="benchmarks/results/strategies.json")
    ap.add_argument("--update-docs", default=None, help="markdown file whose strategies section is replaced")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.size, args.rounds, args.latency_reps, args.yolo_size = 2, 64, 2, 2, 64
    bad = [a for a in (args.amp or "").split(",") if a and a not in AMP_DTYPES]
    if bad:
        ap.error(f"--amp: expected bf16 and/or fp16 (comma-separated), got {','.join(bad)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "batch": args.batch,
        "size": args.yolo_size if args.vit == args.cnn == "none" else args.size,
        "rounds": args.rounds,
        "vit": args.vit,
        "amp": args.amp,
        "compile": args.compile,
    }
    rows = [] if args.vit == "none" else bench_model(args.vit, vit_methods, args, device)
    if args.cnn != "none":
        rows += bench_model(args.cnn, cnn_methods, args, device)
    if args.yolo != "none":
        rows += bench_yolo(args, device)
    peft = None if args.skip_peft or args.vit == "none" else bench_peft(args, device)
    md = to_markdown(rows, peft, env)
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "rows": rows, "peft": peft}, indent=2))
    out.with_suffix(".md").write_text(md + "\n")
    if args.update_docs:
        update_docs(Path(args.update_docs), md, rows, peft, detector_only=args.vit == args.cnn == "none")


if __name__ == "__main__":
    main()
