"""Transfer-learning benchmark: every strategy against full fine-tuning, with pretrained weights, on CPU.

Runs one ``visionpeft compare`` per requested (model, dataset) pair under the honest protocol (``--seeds``
seeds, checkpoints chosen on validation, the headline measured on a test split, the paired two-level bootstrap
verdict of :mod:`visionpeft.report.bootstrap` against full fine-tuning). Models (``--models``): ``cnn``, ImageNet
EfficientNet-Lite0, and ``vit``, ImageNet ViT-Tiny/16, both from ``../shared/weights``. Datasets
(``--datasets``): ``flowers`` (flowers5_128), ``hymenoptera`` (hymenoptera_data) and the quickstart's ``digits``.
Every row trains at its method's default rate (:data:`visionpeft.optim_settings.DEFAULT_LR`, the head's
included) unless ``--lr-sweep``. It also measures head-only training with and without ``cache_features`` (CNN,
flowers) and writes a Markdown summary (``--out``, default ``benchmarks/results/transfer_classification.md``);
``--update-docs docs/benchmarks.md`` also replaces the classification section of that file (between the
classification-benchmark markers)::

    python benchmarks/transfer_classification.py --update-docs docs/benchmarks.md   # the long run (hours, 2 cores)
    python benchmarks/transfer_classification.py --smoke --out /tmp/b.md            # a smoke run (minutes)
    python benchmarks/transfer_classification.py --models vit --datasets flowers --only lora_r8,ssf --skip-cache

**Test split.** None of the datasets ships one, so one is carved out of ``train`` deterministically
(:func:`carve_test_split`): within each class the file names are sorted, shuffled with ``random.Random(0)``
and the first 20% become ``test``; the remaining 80% stay ``train`` and ``val`` is unchanged. The three
lists are written as ``path,label`` CSV files with a dataset yaml into ``<runs>/splits/<dataset>/`` (never into
``../shared``), so every model, strategy and seed sees the same split and the lists can be inspected.

``VISIONPEFT_SHARED`` overrides the location of the shared material (default: ``../shared``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transfer_vit import STRATEGIES as VIT_STRATEGIES  # benchmarks/transfer_vit.py: the ViT rows' one definition

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- classification-benchmark:start -->", "<!-- classification-benchmark:end -->"

#: The CNN's rows (full fine-tuning is added first by ``visionpeft compare``); ``benchmarks/precision.py`` reads it.
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
#: Rows every model runs by default; the ViT adds its own methods.
COMMON_ROWS = ("linear_probe", "bitfit", "lora_r8", "dora_r8", "lokr_r8", "ssf")


@dataclass(frozen=True)
class Model:
    """One backbone of the benchmark.

    Attributes:
        label: the name in the tables.
        arch: the timm architecture.
        weights: the weights file under ``../shared``.
        rows: every row the model can run (``--only`` picks among them).
        default_rows: the rows run without ``--only``.
        patch: the image size must be a multiple of this (the ViT's patch size; 1: any size).
    """

    label: str
    arch: str
    weights: str
    rows: dict[str, list[dict[str, Any]]]
    default_rows: tuple[str, ...]
    patch: int = 1


MODELS = {
    "cnn": Model("EfficientNet-Lite0", "tf_efficientnet_lite0", "weights/tf_efficientnet_lite0.in1k.safetensors",
                 COMPARE, COMMON_ROWS),
    "vit": Model("ViT-Tiny/16", "vit_tiny_patch16_224", "weights/vit_tiny_patch16_224.in1k.safetensors",
                 VIT_STRATEGIES, (*COMMON_ROWS, "vpt_deep", "adaptformer_16"), patch=16),
}
#: Dataset name -> (location: under ``../shared`` or ``REPO``, horizontal-flip probability).
DATASETS = {
    "flowers": ("shared:data/flowers5_128", 0.5),
    "hymenoptera": ("shared:data/hymenoptera_data", 0.5),
    "digits": ("repo:visionpeft/assets/datasets/digits.yaml", 0.0),  # left/right matters for digits
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


def selected_rows(model: Model, only: str | None) -> dict[str, list[dict[str, Any]]]:
    """The rows ``model`` runs: those of ``--only`` it has (in its own order), else its default rows."""
    names = [n for n in model.rows if n in only.split(",")] if only else list(model.default_rows)
    return {n: model.rows[n] for n in names}


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


def base_doc(args: argparse.Namespace, name: str, data: str, model: Model, img_size: int,
             hflip: float) -> dict[str, Any]:
    """The compare recipe of ``model`` on ``data``: no rate anywhere, so every method (the head's included)
    trains at its default (:data:`visionpeft.optim_settings.DEFAULT_LR`), or ``--lr-sweep``'s grid."""
    rows = selected_rows(model, args.only)
    return {
        "name": name, "model": model.arch, "weights": str(shared_dir() / model.weights), "data": data, "seed": 0,
        "seeds": args.seeds, **({"lr_grid": lr_grid(rows)} if args.lr_sweep else {}),
        "output": str(args.runs),
        "compare": rows,
        "dataset": {"max_per_class": args.max_per_class},
        "train": {"epochs": args.epochs, "batch_size": 32, "workers": args.workers, "progress": False,
                  "threads": args.threads, "patience": None},
        "optim": {"warmup_epochs": 1 if args.epochs > 2 else 0},
        "augment": {"img_size": img_size, "crop_pct": 1.0, "scale": [0.5, 1.0], "hflip": hflip},
    }


def run_compare_on(doc: dict[str, Any], what: str) -> dict[str, Any]:
    """Run the compare of ``doc``; its report.json with ``compare_dir`` and a ``title`` starting with ``what``."""
    from visionpeft.recipe import parse_recipe
    from visionpeft.tasks.compare import run_compare

    cdir = run_compare(parse_recipe(doc))
    report = json.loads((cdir / "report.json").read_text())
    report["compare_dir"] = str(cdir)
    full_run = next(r for r in report["seed_runs"] if r["strategy"] == "full")
    data = json.loads((Path(full_run["run_dir"]) / "data.json").read_text())
    tests = _count_csv(Path(doc["data"]).parent / "test.csv", doc["dataset"]["max_per_class"])
    report["title"] = (f"{what}: {data['train_images']:,} train / "
                       f"{data['val_images']:,} val / {tests:,} test images, {len(data['classes'])} classes, "
                       f"{doc['augment']['img_size']} px")
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
    """Head-only epochs of the CNN on flowers with and without cached backbone features (same result, less time)."""
    from visionpeft.recipe import parse_recipe
    from visionpeft.tasks.classification import TASK

    out = {}
    for cached in (False, True):
        doc = base_doc(args, "flowers5_128", str(shared / "data" / "flowers5_128"), MODELS["cnn"], args.cnn_size,
                       hflip=0.0)
        doc.pop("compare")
        doc.pop("lr_grid", None)
        doc["strategies"] = [{"method": "head"}]
        doc["train"].update(epochs=args.cache_epochs, cache_features=cached)
        doc["augment"].update(random_resized_crop=False)
        run_dir = Path(args.runs) / f"cache-{cached}-{time.strftime('%H%M%S')}"
        res = TASK.train(parse_recipe(doc), doc["strategies"], run_dir, f"probe_cache_{cached}")
        hist = json.loads((run_dir / "metrics.json").read_text())["history"]
        out[cached] = {"top1": res.metrics["top1"], "epoch_seconds": [h["train_seconds"] for h in hist],
                       "cache_seconds": res.extra.get("cache_seconds", 0.0)}
        data = json.loads((run_dir / "data.json").read_text())
        out["title"] = f"EfficientNet-Lite0, flowers5_128, {data['train_images']:,} train images, {args.cnn_size} px"
    plain, cached = out[False]["epoch_seconds"], out[True]["epoch_seconds"]
    later = lambda xs: sum(xs[1:]) / max(len(xs) - 1, 1) if len(xs) > 1 else xs[0]  # noqa: E731
    out["speedup_later_epochs"] = later(plain) / max(later(cached), 1e-9)
    return out


def _default_lrs(methods: set[str]) -> str:
    from visionpeft.optim_settings import DEFAULT_LR, default_lr

    order = [*DEFAULT_LR, *sorted(methods - set(DEFAULT_LR))]
    return ", ".join(f"{m} {default_lr(m):g}" for m in order if m in methods)


def _methods(args: argparse.Namespace) -> set[str]:
    """Every method the requested rows train (full fine-tuning and the head included)."""
    rows = [e for m in args.models for entries in selected_rows(MODELS[m], args.only).values() for e in entries]
    return {"full", "head", *(e["method"] for e in rows)}


def conclusions(report: dict[str, Any]) -> list[str]:
    """What the verdicts say, row by row: strategies better / worse than full fine-tuning, the rest tied."""
    head = report["protocol"]["headline"]
    rows = [r for r in report["runs"] if r.get("verdict") != "baseline"]
    if not rows:
        return ["- only full fine-tuning ran: nothing to compare"]
    if all(str(r.get("verdict", "")).startswith("n/a") for r in rows):
        return [f"- one seed: no interval, so no strategy is called better or worse than full fine-tuning on `{head}`"]
    by = {v: [r["strategy"] for r in rows if r.get("verdict") == v] for v in ("better", "worse", "tied")}
    lines = [f"- better than full fine-tuning on `{head}` (95% interval of `delta` above 0): "
             f"{', '.join(by['better']) or 'none'}",
             f"- worse (interval below 0): {', '.join(by['worse']) or 'none'}",
             f"- tied (interval contains 0: not distinguishable with {rows[0]['seeds']} seeds on this test split): "
             f"{', '.join(by['tied']) or 'none'}"]
    other = [r["strategy"] for r in rows if r.get("verdict") not in by]
    if other:
        lines.append(f"- no verdict: {', '.join(other)}")
    by_t = [r["strategy"] for r in rows if not str(r.get("verdict_basis") or "").startswith("bootstrap")]
    if by_t:
        lines.append(f"- decided by the seed-only t-interval, not the bootstrap (`verdict_basis` in report.json): "
                     f"{', '.join(by_t)}")
    return lines


def results_table(report: dict[str, Any]) -> str:
    """The per-strategy table: rate and its source, test mean +- CI, validation alongside, paired delta [bootstrap
    CI], verdict, seed-only t-interval, and costs."""
    from visionpeft.report.markdown import display_rows, markdown_table

    head = report["protocol"]["headline"]
    other = "top1_val" if report["protocol"]["test_split"] else None
    cols = ["strategy", "lr", head, *([other] if other else []), "delta", "verdict", "t-interval", "trainable_pct",
            "adapter_mb", "train_seconds", *(["sweep_seconds"] if report["lr_sweeps"] else [])]
    return markdown_table(display_rows(report["runs"], head, other), cols)


def _setup_lines(args: argparse.Namespace) -> list[str]:
    sizes = {"cnn": args.cnn_size, "vit": args.vit_size}
    models = "; ".join(f"{MODELS[m].label} (`{MODELS[m].arch}`, `../shared/{MODELS[m].weights}`, "
                       f"{sizes[m]} px{f', digits {args.digits_size} px' if 'digits' in args.datasets else ''})"
                       for m in args.models)
    rate = ("each row's rate chosen on validation (first seed) from its default x 1/3, 1, 3; the head at its "
            "default" if args.lr_sweep else "every row at its method's default rate")
    return [f"`python benchmarks/transfer_classification.py {' '.join(args.argv)}` on "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
            f"{args.threads or 'default'}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
            f"Models (ImageNet-1k weights): {models}. {args.epochs} epoch{'s' * (args.epochs != 1)}, batch 32, "
            f"AdamW (weight decay 0.01), {rate} "
            f"(`visionpeft/optim_settings.py` DEFAULT_LR: {_default_lrs(_methods(args))}), cosine schedule"
            f"{', 1 warmup epoch' if args.epochs > 2 else ''}, RandomResizedCrop(0.5-1), horizontal flip 0.5 "
            "(digits: none); within a table every row uses the same data, epochs and schedule. Row definitions "
            "(ranks, alphas) are in the script (the ViT's are `benchmarks/transfer_vit.py` STRATEGIES)."
            + (f" At most {args.max_per_class} images per class in each split." if args.max_per_class else ""),
            f"Protocol: seeds 0-{args.seeds - 1} for every row. None of the datasets ships a test split, so one is "
            f"carved out of `train` ({TEST_FRACTION:.0%} of each class, names sorted then shuffled with "
            f"`random.Random({SPLIT_SEED})`; the rest stays `train`, `val` is unchanged; see `carve_test_split`). "
            "Each run keeps its best epoch by **validation** top-1 (`top1_val`) and that checkpoint is reported on "
            "the **test** split (`top1_test`, `+-` the 95% Student t-interval over seeds). `delta` is the mean "
            "per-seed difference to full fine-tuning (same seed) with its 95% interval from the compare's paired "
            "two-level bootstrap over seeds and test images (`visionpeft/report/bootstrap.py`: 10,000 resamples, "
            "the same images for both, a Student-t penalty on the seed-wide part for few seeds); `verdict` is "
            "better / worse when that interval excludes 0, else tied. `t-interval` is the seed-only paired "
            "t-interval, shown alongside, not used for the verdict. `lr` is the row's peak rate outside the head and "
            "where it came from; `adapter_mb` the file a run ships in MiB (full fine-tuning: every weight); "
            "`train_seconds` the mean training time per run (runs are sequential; the machine's load moves it).",
            ""]


def write_markdown(path: Path, args: argparse.Namespace, reports: dict[str, dict], cache: dict | None) -> None:
    md = [START, "## Classification: transfer learning against full fine-tuning (CNN and ViT)", "",
          *_setup_lines(args)]
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
    md += [END]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(md) + "\n")


def update_docs(path: Path, section: str) -> None:
    """Replace this script's section of ``path`` (or append it), leaving other sections alone."""
    from sections import replace_marked_section  # benchmarks/sections.py (scripts run from benchmarks/)

    replace_marked_section(path, START, END, section)


def dataset_path(name: str, shared: Path) -> str:
    where, rel = DATASETS[name][0].split(":", 1)
    return str((shared if where == "shared" else REPO) / rel)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="cnn,vit", help=f"comma-separated, of {sorted(MODELS)}")
    p.add_argument("--datasets", default="flowers,hymenoptera", help=f"comma-separated, of {sorted(DATASETS)}")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--cache-epochs", type=int, default=4)
    p.add_argument("--max-per-class", type=int, default=None, help="cap per class in each split (after the carve)")
    p.add_argument("--cnn-size", type=int, default=None, help="CNN image size on flowers/hymenoptera (default 128)")
    p.add_argument("--vit-size", type=int, default=None,
                   help="ViT image size on flowers/hymenoptera, a multiple of 16 (default 112)")
    p.add_argument("--digits-size", type=int, default=None, help="image size on digits, both models (default 32)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--runs", default=str(REPO / "runs" / "benchmarks"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "transfer_classification.md"))
    p.add_argument("--update-docs", default=None, help="markdown file whose classification section is replaced")
    p.add_argument("--only", default=None,
                   help="comma-separated rows to run (full always runs); a model runs those it has")
    p.add_argument("--skip-cache", action="store_true", help="skip the cached-features head-only timing")
    p.add_argument("--seeds", type=int, default=3, help="seeds per strategy (intervals need 2 or more)")
    p.add_argument("--lr-sweep", action="store_true",
                   help="choose each row's rate on validation from its default x 1/3, 1, 3 (3x the first seed)")
    p.add_argument("--smoke", "--tiny", action="store_true", dest="smoke",
                   help="smoke test: 1 epoch, 8 images per class, 48 px unless a size is given, 2 seeds")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    for flag, given, known in (("--models", args.models, MODELS), ("--datasets", args.datasets, DATASETS)):
        bad = sorted(set(given.split(",")) - set(known))
        if bad:
            p.error(f"{flag}: unknown {bad}; choose from {sorted(known)}")
    args.models, args.datasets = args.models.split(","), args.datasets.split(",")
    rows = {r for m in args.models for r in MODELS[m].rows}
    unknown = sorted(set(args.only.split(",")) - rows) if args.only else []
    if unknown:
        p.error(f"--only: unknown rows {unknown}; choose from {sorted(rows)} (models {','.join(args.models)})")
    if args.seeds < 1:
        p.error(f"--seeds: expected 1 or more, got {args.seeds}")
    if args.smoke:
        args.epochs, args.cache_epochs, args.max_per_class, args.seeds, args.workers = 1, 2, 8, 2, 0
    small = 48 if args.smoke else None
    args.cnn_size = args.cnn_size or small or 128
    args.vit_size = args.vit_size or small or 112
    args.digits_size = args.digits_size or 32
    for flag, size in (("--vit-size", args.vit_size), ("--digits-size", args.digits_size)):
        if "vit" in args.models and size % MODELS["vit"].patch:
            p.error(f"{flag}: the ViT needs a multiple of {MODELS['vit'].patch} px, got {size}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    shared = shared_dir()
    splits = Path(args.runs) / "splits"
    data = {d: str(carve_test_split(dataset_path(d, shared), splits / Path(dataset_path(d, shared)).stem))
            for d in args.datasets}
    reports: dict[str, dict] = {}
    for m in args.models:
        model = MODELS[m]
        for d in args.datasets:
            size = args.digits_size if d == "digits" else {"cnn": args.cnn_size, "vit": args.vit_size}[m]
            doc = base_doc(args, f"{m}-{d}", data[d], model, size, hflip=DATASETS[d][1])
            reports[f"{m}/{d}"] = run_compare_on(doc, f"{model.label} on {d}")
            write_markdown(Path(args.out), args, reports, None)  # what has finished survives a stop
    cache = (cache_speedup(args, shared) if "cnn" in args.models and "flowers" in args.datasets
             and not args.skip_cache else None)
    write_markdown(Path(args.out), args, reports, cache)
    section = Path(args.out).read_text()
    print(section)
    if args.update_docs:
        update_docs(Path(args.update_docs), section)


if __name__ == "__main__":
    main()
