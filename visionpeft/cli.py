"""``visionpeft`` command line: train, compare, report, resume, eval, merge, export, predict, params.

Every command dispatches on the recipe's (or run directory's) ``task``. A ``VisionPeftError`` (bad input)
prints one line and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import VisionPeftError
from .outputs import make_dir

__all__ = ["main", "build_parser"]

#: TensorBoard's page with curve smoothing off (TensorBoard >= 2.5 reads ``smoothing`` from the URL): validation
#: curves have one point per epoch, and the default smoothing (0.6) shows a 3-epoch curve's last value well off.
TB_URL = "http://localhost:6006/?smoothing=0#timeseries"


def _runner_of_run(run_dir: Path) -> Any:
    """The runner of the engine that wrote ``run_dir`` (its recipe.yaml's task), from the engine registry."""
    from .run_dir import engine_of_run
    from .tasks import get_task

    return get_task(engine_of_run(run_dir).task)


def cmd_train(args: argparse.Namespace) -> int:
    from .recipe.loader import load_cli_recipe

    recipe = load_cli_recipe(args.items, "train")  # before the task modules: a typo is reported at once
    from .tasks import get_task
    from .tasks.compare import new_run_dir, write_experiment_for

    if not recipe.strategies:
        from .errors import ConfigError

        raise ConfigError(f"{args.items[0]}: 'strategies' is empty; 'visionpeft train' trains that list "
                          "(use 'visionpeft compare' for the recipe's compare runs)")
    if int(getattr(recipe, "seeds", 1) or 1) > 1 or getattr(recipe, "lr_grid", None):
        # compare-only fields: say so instead of silently training one run at one rate
        print(f"visionpeft: note: 'seeds' and 'lr_grid' apply to 'visionpeft compare'; 'visionpeft train' trains "
              f"'strategies' once with seed {recipe.seed} at their own rates", file=sys.stderr)
    with _output_root(recipe.output):
        run_dir = new_run_dir(recipe)
        result = get_task(recipe.task).train(recipe, list(recipe.strategies), run_dir, recipe.name)
    write_experiment_for(run_dir, recipe, [result])
    _print_result(result)
    return 0


@contextlib.contextmanager
def _output_root(output: str) -> Iterator[None]:
    """The runs' root folder (made if missing); a run that fails before writing a file leaves no new empty one."""
    from .tasks.compare import remove_empty_tree

    missing = [p for p in (Path(output), *Path(output).parents) if not p.exists()]  # runs/visionpeft, runs
    make_dir(output, "output")
    try:
        yield
    except BaseException:
        if missing:
            remove_empty_tree(missing[-1])
        raise


def cmd_resume(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    # Each task checks the run (checkpoint present and readable, overrides compatible) before writing anything.
    from .recipe.flat import to_dotted
    from .run_dir import engine_of_run

    overrides = to_dotted(args.overrides, engine_of_run(run_dir).backend == "ultralytics")  # device=0 as in yolo
    result = _runner_of_run(run_dir).resume(run_dir, overrides)
    _print_result(result)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .recipe.loader import load_cli_recipe

    recipe = load_cli_recipe(args.items, "compare")
    from .tasks.compare import run_compare
    from .tasks.distributed import is_main

    with _output_root(recipe.output):
        out = run_compare(recipe)
    if is_main():
        print(f"report: {out / 'report.md'}\ntensorboard --logdir {out}\n  then open {TB_URL}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .tasks.compare import report_compare

    print(f"report: {report_compare(Path(args.compare_dir))}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    # Per-example results too (<split>_examples.json / <split>_images.npz): an older compare's runs evaluated
    # on test this way give 'visionpeft report' its bootstrap verdict.
    metrics = _runner_of_run(Path(args.run_dir)).evaluate(Path(args.run_dir), args.split, save_examples=True)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    out = _runner_of_run(Path(args.run_dir)).merge(Path(args.run_dir), Path(args.output))
    print(f"merged model written to {out}")
    side = out.with_suffix(".json")
    if side.is_file():  # a timm run: the Python line that rebuilds it (an Ultralytics checkpoint loads with YOLO(path))
        print(f"load it in Python: {json.loads(side.read_text()).get('load', '')}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .tasks.predict import parse_predict_args, predict_run
    from .tasks.predict_console import PredictConsole

    console = PredictConsole()  # a line per image with its speed (a bar and a summary for many), as yolo predict
    out = predict_run(Path(args.run_dir), parse_predict_args(args.options), on_image=console)
    console.finish()
    print(f"predictions written to {out / 'predictions.json'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .tasks.export import export_run

    out = export_run(Path(args.run_dir), args.format, Path(args.output))
    hint = " (peft.PeftModel.from_pretrained(base, DIR) loads it)" if args.format == "peft" else ""
    print(f"{args.format} adapter written to {out}{hint}")
    return 0


def parse_strategy_arg(text: str) -> list[Any]:
    """``--strategy``: bare method names (``lora``, ``lora,head``), a YAML/JSON list or mapping, or a file."""
    from .recipe.flat import parse_strategy_text

    return parse_strategy_text(text, "--strategy")


def cmd_params(args: argparse.Namespace) -> int:
    from .api import apply
    from .params import format_parameter_report, parameter_report

    out = sys.stdout
    # --json output is for programs: libraries' chatter (Ultralytics announces a new settings file on its first
    # import) goes to stderr so stdout holds the JSON document alone.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        strategies = parse_strategy_arg(args.strategy) if args.strategy else None
        model = _build_for_params(args)
        if strategies:
            apply(model, strategies)
        report = parameter_report(model)
    print(json.dumps(report, indent=2, default=str) if args.json else format_parameter_report(report, args.model),
          file=out)
    return 0


def _build_for_params(args: argparse.Namespace) -> Any:
    from .backends import backend_named

    if args.model.endswith((".pt", ".yaml", ".yml")):
        return backend_named("ultralytics").build_model(args.model)
    if _is_ultralytics_stem(args.model):
        return backend_named("ultralytics").build_model(f"{args.model.strip()}.pt")  # as `yolo ... model=yolo11n`
    return backend_named("timm").build_model(args.model, num_classes=args.num_classes, weights=args.weights)


def _is_ultralytics_stem(name: str) -> bool:
    """A bare Ultralytics asset name (``yolo11n``, ``yolov8n-seg``) that is not also a timm model name."""
    import timm
    from ultralytics.utils.downloads import GITHUB_ASSETS_STEMS

    return name.strip() in GITHUB_ASSETS_STEMS and not timm.is_model(name.strip())


def _print_result(result: Any) -> None:
    from .tasks.distributed import is_main

    if is_main():
        metrics = " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
        print(f"[{result.strategy}] {metrics} trainable={result.trainable_params:,} "
              f"({result.trainable_pct:.3f}%) run dir: {result.run_dir}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visionpeft", description="Parameter-efficient fine-tuning for vision "
                                "models, compared with full fine-tuning.")
    sub = p.add_subparsers(dest="command", required=True)
    over = {"nargs": "*", "default": [], "help": "key=value overrides, e.g. train.epochs=3 strategies.0.rank=16"}
    items = {"nargs": "*", "metavar": "ARG", "help": "model=... data=... and Ultralytics' own keys "
             "(epochs=5 imgsz=320 freeze=10 ...), strategies=lora,head; or a recipe file / packaged recipe name "
             "first (quickstart, detection/lora; see 'visionpeft recipes'), then key=value overrides"}
    t = sub.add_parser("train", help="train one run: model=yolo11n.pt data=coco8.yaml freeze=10 epochs=5, or a recipe",
                       usage="visionpeft train [RECIPE] key=value ...",
                       epilog="docs/detection.md maps every 'yolo train' key")
    t.add_argument("items", **items)
    t.set_defaults(func=cmd_train)
    c = sub.add_parser("compare", help="full fine-tuning + each compare run, then report.{md,json,csv,png}",
                       usage="visionpeft compare [RECIPE] key=value ...")
    c.add_argument("items", **items)
    c.set_defaults(func=cmd_compare)
    rp = sub.add_parser("report", help="rebuild a compare's report.{md,json,csv,png} from its saved runs "
                        "(no training)")
    rp.add_argument("compare_dir")
    rp.set_defaults(func=cmd_report)
    r = sub.add_parser("resume", help="continue a killed 'train' run from its last checkpoint")
    r.add_argument("run_dir")
    r.add_argument("overrides", **over)
    r.set_defaults(func=cmd_resume)
    e = sub.add_parser("eval", help="evaluate a run's saved adapter (also saves its per-example results)")
    e.add_argument("run_dir")
    e.add_argument("--split", default="val")
    e.set_defaults(func=cmd_eval)
    m = sub.add_parser("merge", help="fold a run's adapter into a plain model file")
    m.add_argument("run_dir")
    m.add_argument("-o", "--output", required=True)
    m.set_defaults(func=cmd_merge)
    x = sub.add_parser("export", help="write a run's adapter as visionpeft files or HF PEFT files")
    x.add_argument("run_dir")
    x.add_argument("--format", default="visionpeft", help="visionpeft (default) or peft (adapter_config.json + "
                   "adapter_model.safetensors for peft.PeftModel.from_pretrained)")
    x.add_argument("-o", "--output", required=True, help="a new or empty folder")
    x.set_defaults(func=cmd_export)
    pr = sub.add_parser("predict", help="run a run's adapted model on images; write predictions.json (+ images)")
    pr.add_argument("run_dir")
    pr.add_argument("options", nargs="*", default=[], help="source=PATH (an image, a folder, a glob; required) "
                    "[merged=false] [conf=0.25] [imgsz=640] [topk=5] [device=cpu] [out=DIR]")
    pr.set_defaults(func=cmd_predict)
    lst = sub.add_parser("recipes", help="list the recipes that ship with visionpeft (run them by name)")
    lst.set_defaults(func=cmd_recipes)
    q = sub.add_parser("params", help="parameter report of a model, optionally with strategies applied")
    q.add_argument("model", help="timm model name, or an Ultralytics .pt / model .yaml")
    q.add_argument("--strategy", help="method names (lora or lora,head), a YAML/JSON strategy list such as "
                   "'[{method: lora, rank: 8}, {method: head}]', or a file holding one")
    q.add_argument("--weights", help="local weights for a timm model")
    q.add_argument("--num-classes", type=int, default=1000)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_params)
    return p


def cmd_recipes(args: argparse.Namespace) -> int:
    from .packaged import RECIPES_DIR, packaged_recipes, recipe_summary

    recipes = packaged_recipes()
    width = max(map(len, recipes), default=0)
    for name, path in recipes.items():
        print(f"{name:<{width}}  {recipe_summary(path)}")
    print(f"\n{len(recipes)} recipes in {RECIPES_DIR}; run one by name from any folder "
          "(visionpeft train classification/lora_vit, visionpeft compare quickstart) or copy and edit it")
    return 0


def _worker_message(exc: BaseException) -> str | None:
    """The original error line of an exception re-raised from a DataLoader worker."""
    text = str(exc)
    if "Original Traceback" not in text:
        return None
    last = text.strip().splitlines()[-1]
    name, sep, rest = last.partition(": ")
    return rest if sep and name.replace(".", "").replace("_", "").isalnum() else last


def _is_distributed() -> bool:
    from .tasks.distributed import is_distributed

    return is_distributed()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("train", "compare", "resume") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from .tasks.distributed import init_distributed

            init_distributed()  # under torchrun: before run directories are named (rank 0 decides)
        return int(args.func(args) or 0)
    except VisionPeftError as exc:
        msg = _worker_message(exc) or str(exc)
        print(f"visionpeft: error: {' '.join(msg.split())}", file=sys.stderr)  # one line, always
        return 2
    except KeyboardInterrupt:
        print("visionpeft: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error of ours; silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        # No process group without torch.distributed imported: a command that never needed torch stays torch-free.
        if "torch.distributed" in sys.modules and _is_distributed():
            import torch.distributed as dist

            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
