"""Validate a detection run exactly as its training did (``visionpeft eval RUN_DIR``).

The mAP a run reports (``metrics.json``) comes from Ultralytics' final validation inside the trainer: the best
epoch's EMA model, adapters merged (:func:`~.trainer.merged_copy`), validated with the trainer's validator. That
validator reuses the trainer's val dataloader, which differs from a freshly configured ``DetectionValidator``:

* rectangular batches (``rect=True``: the trainer builds its val set in ``mode="val"``, which turns them on),
  with the **batch size** of that loader (twice the training batch), since rect letterboxing pads each batch to
  its own shape and so depends on which images share a batch;
* the trainer's ``imgsz`` after ``check_imgsz`` (a multiple of the stride), its ``conf``/``iou``/``max_det``/
  ``single_cls``/``classes``/``fraction`` and the inference precision (fp16 on CUDA with AMP).

:func:`record_settings` captures exactly those from the trainer's validator after the final validation; the
trainer stores them in ``metrics.json`` (``extra.val``) and :func:`evaluate_run` configures a standalone
validator with them, so the same weights on the same split give the same numbers (same device type; CPU and CUDA
kernels round differently). Runs written before these settings were recorded fall back to the training
arguments stored in the checkpoint (``rect``, twice the training batch), the same rule the trainer follows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import ConfigError

__all__ = ["VAL_ARG_KEYS", "record_settings", "settings_from_train_args", "evaluate_run"]

#: Validator arguments that change which boxes are found or how they are scored.
VAL_ARG_KEYS: tuple[str, ...] = ("imgsz", "conf", "iou", "max_det", "single_cls", "agnostic_nms", "classes",
                                 "fraction", "quantize", "half", "nms", "augment")


def _plain(value: Any) -> Any:
    """JSON-able copy (Ultralytics keeps some values as tuples or numpy scalars)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def record_settings(validator: Any) -> dict[str, Any]:
    """What the trainer's final validation used: validator arguments, batch size and rect of its dataloader."""
    args = vars(validator.args)
    out = {k: _plain(args[k]) for k in VAL_ARG_KEYS if k in args}
    loader = validator.dataloader
    out["batch"] = int(loader.batch_size)
    out["rect"] = bool(getattr(loader.dataset, "rect", False))
    return out


def settings_from_train_args(train_args: dict[str, Any]) -> dict[str, Any]:
    """The trainer's rule for its val loader, for runs that did not record their settings: rect, 2 x batch."""
    out = {k: _plain(train_args[k]) for k in VAL_ARG_KEYS if k in train_args and k not in ("quantize", "half")}
    out["batch"] = 2 * int(train_args.get("batch") or 8)
    out["rect"] = True
    return out


def _recorded(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("extra", {}).get("val")
    except json.JSONDecodeError:
        return None


def evaluate_run(run_dir: Path, data: str, split: str, device: Any = None,
                 recorder: Any = None) -> dict[str, float]:
    """The metrics of the run's best model (adapters merged) on ``split``, with the training settings.

    The validator is Ultralytics' own for the model's task (``YOLO.task_map`` / ``RTDETR.task_map``).

    Args:
        run_dir: an Ultralytics-engine run directory (``weights/best.pt`` or ``last.pt``, ``metrics.json``).
        data: the run's data yaml.
        split: ``val`` reproduces the reported metrics exactly; ``test`` uses the same settings on that split.
        device: Ultralytics device string; ``None`` uses the recorded training device.
        recorder: an :class:`~.per_image.ImageRecorder` to attach to the validator (per-image results).
    """
    from ...backends.ultralytics import is_rtdetr, model_task, task_classes
    from .callbacks import metrics_from_ultralytics
    from .merge import load_run_model, merged_copy

    model = load_run_model(run_dir)
    task = model_task(model)
    train_args = dict(getattr(model, "args", None) or {})
    settings = _recorded(run_dir) or settings_from_train_args(train_args)
    save_dir = run_dir / f"eval-{split}"
    args = {k: v for k, v in settings.items() if k != "quantize" or v is not None}
    args.update(data=data, split=split, device=device if device is not None else train_args.get("device"),
                plots=False, verbose=False, save_json=False, task=task, mode="val", project=str(run_dir),
                name=save_dir.name, exist_ok=True)
    validator = task_classes(task, rtdetr=is_rtdetr(model))["validator"](args=args, save_dir=save_dir)
    if recorder is not None:
        recorder.attach(validator)
    try:
        results = validator(model=merged_copy(model))
    except FileNotFoundError as exc:
        raise ConfigError(f"{data}: split {split!r}: {exc}") from None
    return metrics_from_ultralytics(results, task)
