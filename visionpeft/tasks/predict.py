"""``visionpeft predict RUN_DIR source=PATH``: run a trained run's adapted model on images, write predictions.

One entry point for every task: the run's ``recipe.yaml`` names its task, and the task's predictor
(:mod:`.classification.predict`, :mod:`.detection.predict`) turns images into one record per image. This module
owns what they share: the ``key=value`` options, the list of images a source names, the output folder and
``predictions.json``::

    {"run_dir": ..., "task": ..., "merged": true, "options": {...},
     "images": [{"file": "/abs/path/x.jpg", "predictions": [...]}, ...]}

Detection-like tasks also write Ultralytics' own annotated images (``Results.save``) into ``<out>/images``.
"""

from __future__ import annotations

import glob
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, closest

__all__ = ["PredictOptions", "parse_predict_args", "list_images", "predict_run", "OnImage"]

#: Called after each image, in order: ``(index, total, file, predictions, speed)``, ``speed`` in milliseconds per
#: stage (``preprocess``, ``inference``, ``postprocess``) as Ultralytics' ``Results.speed``.
OnImage = Callable[[int, int, str, list, dict], None]



@dataclass(frozen=True)
class PredictOptions:
    """What ``visionpeft predict`` was asked.

    Attributes:
        source: an image file, a folder (its images, not recursive, as Ultralytics reads a folder) or a glob
            pattern (``"imgs/**/*.jpg"``; quote it in the shell).
        out: output folder; default ``RUN_DIR/predict-<timestamp>``.
        merged: fold the adapter into plain weights first (faster; the same predictions up to float rounding).
            Methods that cannot be folded (VPT prompts) run unmerged, recorded in ``predictions.json``.
        conf: Ultralytics' confidence threshold (default 0.25, Ultralytics' own); detection-like tasks only.
        imgsz: Ultralytics' inference size in pixels (default: the run's training ``imgsz``); detection-like only.
            Classification always uses the run's own eval preprocessing.
        topk: classes listed per image (classification; default 5, capped at the number of classes).
        device: ``cpu``, ``cuda``, ``cuda:1``, ``0``...; default: the run's training device setting.
    """

    source: str
    out: str | None = None
    merged: bool = True
    conf: float | None = None
    imgsz: int | None = None
    topk: int | None = None
    device: str | None = None


_BOOL = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
def _check_device(text: str) -> str:
    """Every form :mod:`visionpeft.devices` reads, and only devices this machine has."""
    from ..devices import check_device

    check_device(text, "predict: device")
    return text


def _value(key: str, text: str) -> Any:
    """``text`` converted for option ``key``, or a ``ConfigError`` naming the key and what it expects."""
    if key == "device":
        return _check_device(text)
    try:
        if key == "merged":
            return _BOOL[text.lower()]
        if key == "conf":
            value = float(text)
            if not 0.0 <= value <= 1.0:
                raise ValueError
            return value
        if key in ("imgsz", "topk"):
            value = int(text)
            low, high = (32, 8192) if key == "imgsz" else (1, 10_000)
            if not low <= value <= high:
                raise ValueError
            return value
    except (KeyError, ValueError):
        expected = {"merged": "true or false", "conf": "a confidence in [0, 1] such as 0.25",
                    "imgsz": "an image size of 32..8192 pixels such as 640", "topk": "a number of classes >= 1"}[key]
        raise ConfigError(f"predict: {key}={text}: expected {expected}") from None
    return text


def parse_predict_args(items: Sequence[str]) -> PredictOptions:
    """``["source=imgs/", "merged=false", "conf=0.5"]`` -> :class:`PredictOptions` (unknown keys: did you mean)."""
    fields = set(PredictOptions.__dataclass_fields__)
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"predict: {item!r} is not key=value; e.g. visionpeft predict RUN_DIR source=images/ "
                              "merged=false")
        if key not in fields:
            hint = closest(key, fields, n=1)
            raise ConfigError(f"predict: unknown option {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                              + f" (options: {', '.join(sorted(fields))})")
        values[key] = _value(key, text.strip())
    if not values.get("source"):
        raise ConfigError("predict: source= is required: an image, a folder of images or a glob such as "
                          "'images/*.jpg'")
    return PredictOptions(**values)


def list_images(source: str, suffixes: frozenset[str]) -> list[Path]:
    """The image files ``source`` names (a file, a folder's images, or a glob), sorted; checked to exist.

    ``suffixes`` are the image suffixes of the run's own image reader (its runner's ``image_suffixes``: a
    classification run reads what the classification folder reader reads, ``.ppm`` included; an Ultralytics run
    what Ultralytics reads, its ``IMG_FORMATS``).

    Raises:
        ConfigError: the source does not exist, names no image, or is a file that is not an image.
    """
    path = Path(source).expanduser()
    if any(c in source for c in "*?[") and not path.exists():
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        where = f"the pattern {source!r}"
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        where = f"the folder {path}"
    elif path.is_file():
        if path.suffix.lower() not in suffixes:
            raise ConfigError(f"source: {path} is not an image (suffixes {sorted(suffixes)[:8]}...); give an "
                              "image, a folder of images or a glob")
        return [path.resolve()]
    else:
        raise ConfigError(f"source: {source} does not exist; give an image, a folder of images or a glob such as "
                          "'images/*.jpg'")
    images = [p.resolve() for p in files if p.suffix.lower() in suffixes]
    if not images:
        raise ConfigError(f"source: {where} holds no images ({len(files)} other files; image suffixes "
                          f"{sorted(suffixes)[:8]}...){_nested_hint(path, suffixes) if path.is_dir() else ''}")
    return images


def _nested_hint(folder: Path, suffixes: frozenset[str]) -> str:
    """A folder is read without recursion (as Ultralytics does); say so when its subfolders hold images, as in an
    ImageFolder split (``val/<class>/*.jpg``)."""
    nested = next((p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() in suffixes), None)
    if nested is None:
        return ""
    return (f"; its subfolders do (e.g. {nested.relative_to(folder)}): pass a glob such as "
            f"'{folder}/**/*{nested.suffix}'")


def _out_dir(run_dir: Path, out: str | None) -> Path:
    from ..outputs import make_dir

    if out:
        return make_dir(Path(out), "predict out")
    base = run_dir / f"predict-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 2
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return make_dir(path, "predict out")


def predict_run(run_dir: str | Path, options: PredictOptions, on_image: OnImage | None = None) -> Path:
    """Predict with a run's adapted model; write ``predictions.json`` (and images); return the output folder.

    ``on_image`` sees each image's predictions and speed as they come (the CLI prints them); ``predictions.json``
    records the mean speed per image (``speed_ms``).

    Raises:
        ConfigError: not a run directory, a bad source (missing, no images, an unreadable image, naming it), or
            an option the task does not take.
    """
    from ..engines import load_attr
    from ..run_dir import engine_of_run
    from . import get_task

    run_dir = Path(run_dir)
    engine = engine_of_run(run_dir)
    task = engine.task
    images = list_images(options.source, get_task(task).image_suffixes)
    predict_images = load_attr(engine.predict, f"predict for task {task!r}")
    out = _out_dir(run_dir, options.out)
    speeds: list[dict[str, float]] = []

    def seen(index: int, total: int, file: str, predictions: list, speed: dict) -> None:
        speeds.append(speed)
        if on_image is not None:
            on_image(index, total, file, predictions, speed)

    try:
        records, info = predict_images(run_dir, images, options, out, seen)
    except BaseException:
        if not options.out and not any(out.iterdir()):
            out.rmdir()  # a failed predict leaves no empty folder in the run directory
        raise
    from .predict_console import mean_speed

    doc = {"run_dir": str(run_dir.resolve()), "task": task, **info, "options": asdict(options),
           "speed_ms": mean_speed(speeds), "images": records}
    (out / "predictions.json").write_text(json.dumps(doc, indent=2))
    return out


def unreadable(message: str) -> ConfigError:
    """A decoding error of a source image as ``predict`` reports it (without the recipe's skip hint)."""
    from ..data.image import SKIP_HINT

    return ConfigError(f"source: {message.replace(SKIP_HINT, 'Fix or delete the file, or leave it out of source=')}")


def merged_or_adapted(model: Any, merged: bool) -> tuple[Any, dict[str, Any]]:
    """``model`` with its adapter folded in when ``merged`` (and foldable); ``(model, {"merged": ..., ...})``."""
    if not merged:
        return model, {"merged": False}
    from ..api import merge

    try:
        merge(model)
    except ConfigError as exc:  # a method that cannot be folded (VPT prompts): predict with the adapted model
        return model, {"merged": False, "not_merged_because": str(exc)}
    return model, {"merged": True}
