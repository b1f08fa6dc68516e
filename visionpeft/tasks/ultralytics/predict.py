"""Predict with an Ultralytics run through Ultralytics' own predictor and plotting (``visionpeft predict``).

The run's adapted model (the EMA weights of the best epoch, ``weights/best.pt``, restricted unpickling) is merged
(unless ``merged=false``) and handed to the predictor Ultralytics itself uses for the model's task
(``YOLO.task_map[task]["predictor"]``, ``RTDETR``'s for RT-DETR): detect, segment, pose, obb and classify models
all go the same way. Predictions are ``Results.summary()`` (class, name, confidence, box in pixels, plus
``segments`` / ``keypoints`` where the task has them; ``semantic``: each class's ``pixel_ratio``), or the row's own
``predictions`` function (``depth``: the map's size and valid range in metres); annotated images are
``Results.save()`` (``Results.plot``: ``semantic`` overlays the class map, ``depth`` a colour map).
Defaults follow ``YOLO(best.pt).predict``: ``conf`` 0.25 and the run's training ``imgsz``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["predict_images", "predictor_class", "ultralytics_predict"]


def predictor_class(model: nn.Module) -> tuple[str, Any]:
    """``(task, Ultralytics predictor class)`` for an Ultralytics model, from Ultralytics' own task map."""
    from ...backends.ultralytics import is_rtdetr, model_task, task_classes

    task = model_task(model)
    return task, task_classes(task, rtdetr=is_rtdetr(model))["predictor"]


def _check_images(images: list[Path]) -> None:
    from ..predict import unreadable
    from .images import image_problem

    for image in images:
        problem = image_problem(image)
        if problem is not None:
            raise unreadable(problem)


def _overrides(run_dir: Path, model: nn.Module, options: Any, out: Path) -> dict[str, Any]:
    from ...run_dir import read_run_dir

    train = read_run_dir(run_dir).doc.get("ultralytics") or {}
    args = getattr(model, "args", None) or {}
    args = vars(args) if hasattr(args, "__dict__") else dict(args)
    imgsz = options.imgsz or args.get("imgsz") or train.get("imgsz") or 640
    device = options.device or train.get("device")
    over = {"mode": "predict", "imgsz": imgsz, "save": False, "verbose": False, "batch": 1, "rect": True,
            "project": str(out), "name": "ultralytics", "exist_ok": True}
    if device is not None:
        over["device"] = str(device)
    if options.conf is not None:
        over["conf"] = options.conf
    return over


def _unique_name(used: set[str], path: Path) -> str:
    name, n = path.name, 2
    while name in used:
        name, n = f"{path.stem}-{n}{path.suffix}", n + 1
    used.add(name)
    return name


def predict_images(run_dir: Path, images: list[Path], options: Any, out: Path,
                   on_image: Any = None) -> tuple[list[dict], dict[str, Any]]:
    """One record per image (``{"file", "predictions"}``) and Ultralytics' annotated images in ``out/images``;
    ``on_image(index, total, file, predictions, speed)`` after each (Ultralytics' ``Results.speed``)."""
    from ...errors import ConfigError
    from ..predict import merged_or_adapted
    from .merge import load_run_model

    if options.topk is not None:
        raise ConfigError("predict: topk= applies to classification runs; set conf= to keep fewer detections")
    _check_images(images)
    model, info = merged_or_adapted(load_run_model(run_dir), options.merged)
    records, extra = ultralytics_predict(model, images, _overrides(run_dir, model, options, out), out, on_image)
    return records, {**info, **extra}


def ultralytics_predict(model: nn.Module, images: list[Path], overrides: dict[str, Any], out: Path,
                        on_image: Any = None) -> tuple[list[dict], dict[str, Any]]:
    """Run Ultralytics' predictor for ``model``'s task on ``images``; records and annotated images in ``out``.

    Results are streamed (``stream=True``), so ``on_image`` sees each image as it is done.
    """
    from ...errors import ConfigError

    task, cls = predictor_class(model)
    predictor = cls(overrides=overrides)
    records, used = [], set()
    from ...engines import load_attr
    from ...ultralytics_tasks import get as task_row

    row = task_row(task)
    draw = row.draws
    fields = load_attr(row.predictions, f"the prediction fields of task {task!r}") if row.predictions else None
    if draw:
        (out / "images").mkdir(exist_ok=True)
    for image, result in zip(images, predictor(source=[str(p) for p in images], model=model, stream=True)):
        rows = fields(result) if fields is not None else result.summary(normalize=False, decimals=5)
        records.append({"file": str(image), "predictions": rows})
        if draw:
            result.save(filename=str(out / "images" / _unique_name(used, image)))
        if on_image is not None:
            speed = {k: float(v or 0.0) for k, v in (result.speed or {}).items()}
            on_image(len(records) - 1, len(images), str(image), records[-1]["predictions"], speed)
    if len(records) != len(images):
        raise ConfigError(f"predict: Ultralytics returned {len(records)} results for {len(images)} images")
    return records, {"ultralytics_task": task, "imgsz": overrides["imgsz"], "conf": float(predictor.args.conf)}
