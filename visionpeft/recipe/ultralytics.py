"""The Ultralytics recipe (every Ultralytics task): a model, its data, strategies and Ultralytics' own arguments.

Ultralytics stays the engine, so its training arguments (``imgsz``, ``batch``, ``epochs``, ``lr0``,
``mosaic``...) are not re-declared here: they go in the ``ultralytics:`` section, where each key is checked
against Ultralytics' own argument list (``ultralytics.cfg.DEFAULT_CFG_DICT``) and type rules
(``ultralytics.cfg.check_cfg``). Keys visionpeft owns at the top level (``model``, ``data``, ``name``,
``seed``, the output folder, freezing) are refused there with a pointer to the right place.

One schema serves every row of the task table (:data:`visionpeft.ultralytics_tasks.TASKS`): ``task`` names the row
(Ultralytics' task name; ``detection``, the former name of ``detect``, is read as ``detect``), and the row's data
format decides what ``data`` must be (a data yaml or a dataset folder).

Example::

    task: detect
    name: bccd-lora
    model: ../shared/weights/yolov5nu-cocobackbone.pt
    data: ../shared/data/bccd_yolo/data.yaml
    strategies: [{method: lora, rank: 8}, {method: head}]
    ultralytics: {epochs: 5, imgsz: 320, batch: 16, lr0: 0.01}

A task model started from another task's checkpoint names the model yaml and Ultralytics' ``pretrained``
(``yolo segment train model=yolo11n-seg.yaml pretrained=yolo11n.pt``); Ultralytics' trainer transfers every
tensor whose name and shape match ("Transferred N/M items")::

    task: segment
    model: models/yolov5nu-seg.yaml        # shipped in visionpeft/assets/models
    pretrained: ../shared/weights/yolov5nu-cocobackbone.pt
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .. import ultralytics_tasks
from ..devices import parse_device
from ..errors import closest
from ..safe_yaml import brief, brief_text
from .base import BaseRecipe, Section

__all__ = ["UltralyticsRecipe", "DetectionDatasetSection", "validate_ultralytics_args", "OWN_KEYS", "ALIASES",
           "DEFAULT_ULTRALYTICS_ARGS"]

#: Ultralytics arguments visionpeft sets itself, and where the recipe sets them instead.
OWN_KEYS: dict[str, str] = {
    "model": "the top-level 'model' key",
    "data": "the top-level 'data' key",
    "name": "the top-level 'name' key",
    "project": "the top-level 'output' key",
    "save_dir": "the top-level 'output' key",
    "exist_ok": "visionpeft (each run gets its own directory)",
    "seed": "the top-level 'seed' key",
    "freeze": "a strategy: {method: freeze, n: 10} (exactly Ultralytics' freeze=10)",
    "task": "the top-level 'task' key (detect, segment, pose, obb or classify)",
    "mode": "the CLI command (train / compare / eval)",
    "resume": "'visionpeft resume RUN_DIR' (continues from the run's weights/last.pt)",
    "pretrained": "the top-level 'pretrained' key (with a model yaml: model: yolo11n-seg.yaml, pretrained: yolo11n.pt)",
    "cfg": "the recipe itself",
}

#: Defaults visionpeft uses where they differ from Ultralytics' (override them in ``ultralytics:``).
#: ``plots: false`` avoids the font download and plotting time; ``deterministic`` makes compares fair.
DEFAULT_ULTRALYTICS_ARGS: dict[str, Any] = {"plots": False, "deterministic": True, "verbose": False}


# Names users bring from other trainers (timm, HF) -> the Ultralytics argument they mean.
ALIASES = {"lr": "lr0", "learning_rate": "lr0", "batch_size": "batch", "img_size": "imgsz",
            "image_size": "imgsz", "num_workers": "workers", "wd": "weight_decay"}


def _ultralytics_cfg() -> tuple[dict[str, Any], Any]:
    from ultralytics.cfg import DEFAULT_CFG_DICT, check_cfg

    return DEFAULT_CFG_DICT, check_cfg


def ultralytics_arg(args: dict[str, Any], key: str) -> Any:
    """``args[key]`` (a recipe's ``ultralytics:`` section), else visionpeft's default, else Ultralytics' own
    (``ultralytics.cfg.DEFAULT_CFG_DICT``)."""
    if key in args:
        return args[key]
    return DEFAULT_ULTRALYTICS_ARGS[key] if key in DEFAULT_ULTRALYTICS_ARGS else _ultralytics_cfg()[0].get(key)


def validate_ultralytics_args(args: dict[str, Any], where: str = "ultralytics") -> dict[str, Any]:
    """Check Ultralytics training arguments: known keys only, right types; returns a converted copy.

    Raises:
        ValueError: naming ``ultralytics.<key>``, with a 'did you mean' for unknown keys.
    """
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise ValueError(f"{where}: expected a mapping of Ultralytics arguments like {{imgsz: 320}}, got {brief(args)}")
    known, check_cfg = _ultralytics_cfg()
    out: dict[str, Any] = {}
    problems = []
    for key, value in args.items():
        key = str(key)
        if key in OWN_KEYS:
            problems.append(f"{where}.{key}: set by visionpeft; use {OWN_KEYS[key]}")
        elif key not in known:
            hint = [ALIASES[key]] if key in ALIASES else closest(key, known, n=1)
            problems.append(
                f"{where}.{key}: not an Ultralytics training argument"
                + (f"; did you mean {hint[0]!r}?" if hint else "; see ultralytics.cfg.DEFAULT_CFG_DICT")
            )
        else:
            out[key] = _coerce(value)
            if (msg := _non_finite(out[key])) is not None:  # before check_cfg, which takes inf for a float
                problems.append(f"{where}.{key}: {msg} (got {brief(out[key])})")
            default = known[key]
            if isinstance(out[key], bool) and isinstance(default, int | float) and not isinstance(default, bool) \
                    and key not in _AUG_PROBABILITIES:
                # check_cfg takes True for an int / float (epochs: yes -> 1, lr0: true -> 1.0)
                problems.append(f"{where}.{key}: expected a number, got {str(out[key]).lower()} (a boolean; YAML "
                                "reads true/false/yes/no/on/off as booleans)")
    if problems:
        raise ValueError("; ".join(problems))
    try:
        check_cfg(out, hard=True)  # Ultralytics' own type/range rules (float, fraction, int, bool keys)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {brief_text(str(exc))}") from None
    problems = [f"{where}.{key}: {msg} (got {brief(out[key])})" for key in out
                if (msg := _value_problem(key, out[key], known)) is not None]
    if problems:
        raise ValueError("; ".join(problems))
    return out


_OPTIMIZERS = ("SGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSprop", "MuSGD", "auto")


#: Ultralytics ``imgsz`` bounds: below 32 the stride-32 heads have no cells; above 8192 one mosaic image alone
#: needs gigabytes (OpenCV's "Insufficient memory").
IMGSZ_RANGE = (32, 8192)


#: Augmentation probabilities, where ``mosaic: false`` (0.0) / ``fliplr: true`` (1.0) mean what they say.
_AUG_PROBABILITIES = frozenset({"mosaic", "mixup", "cutmix", "copy_paste", "fliplr", "flipud", "bgr"})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _non_finite(value: Any) -> str | None:
    """Ultralytics' ``check_cfg`` takes ``inf`` / ``nan`` as floats (``lr0: .inf`` turns every rate into NaN)."""
    values = value if isinstance(value, list | tuple) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        return "expected a finite number"
    return None


def _value_problem(key: str, value: Any, known: dict[str, Any]) -> str | None:
    """What is wrong with ``value`` for the arguments ``check_cfg`` leaves unchecked (``None``: fine).

    ``check_cfg`` types Ultralytics' float / fraction / int / bool keys only; these rules cover the keys a
    training run reads that it does not (``imgsz``, ``optimizer``, ``cache``, ``device``) and the ranges of
    ``batch`` and ``workers``; any other key whose default is a string must be a string.
    """
    if key == "imgsz":
        sizes = value if isinstance(value, list) and len(value) in (1, 2) else [value]
        if not all(_is_int(v) and v > 0 for v in sizes):
            return "expected a positive image size in pixels such as 640 (or [height, width])"
        if not all(IMGSZ_RANGE[0] <= v <= IMGSZ_RANGE[1] for v in sizes):
            return (f"expected an image size of {IMGSZ_RANGE[0]}..{IMGSZ_RANGE[1]} pixels (Ultralytics rounds it to a "
                    "multiple of the model stride, 32), such as 640; larger images do not fit in memory")
    elif key == "batch":
        if not (value == -1 or (_is_int(value) and value >= 1) or (isinstance(value, float) and 0 < value < 1)):
            return "expected images per batch (>= 1), -1 (auto batch) or a GPU-memory fraction in (0, 1)"
    elif key == "workers":
        if not (_is_int(value) and value >= 0):
            return "expected a number of dataloader workers >= 0"
    elif key == "optimizer":
        if not isinstance(value, str) or value.lower() not in {o.lower() for o in _OPTIMIZERS}:
            return f"expected one of {list(_OPTIMIZERS)}"
    elif key == "cache":
        if not (isinstance(value, bool) or value in ("ram", "disk")):
            return "expected true / false, 'ram' or 'disk'"
    elif key == "device":
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "Ultralytics has no 'auto': leave device out to let it choose (a GPU when there is one)"
        try:
            parse_device(value)  # the form; the machine is checked when a run starts
        except ValueError as exc:
            return str(exc)
    elif isinstance(known.get(key), str) and not isinstance(value, str):
        return f"expected a string like {known[key]!r}"
    return None


def _asset_name(value: str) -> str | None:
    """``yolo11n`` -> ``yolo11n.pt`` for a bare Ultralytics model name (as ``yolo train model=yolo11n`` takes it)."""
    from ultralytics.utils.downloads import GITHUB_ASSETS_STEMS

    return f"{value.strip()}.pt" if value.strip() in GITHUB_ASSETS_STEMS else None


def _coerce(value: Any) -> Any:
    # YAML 1.1 reads "3e-4" as a string; Ultralytics' float keys would then reject it.
    if isinstance(value, str):
        try:
            return float(value) if value[:1] in "+-.0123456789" and any(c in value for c in "eE") else value
        except ValueError:
            return value
    return value


class DetectionDatasetSection(Section):
    """How detection images are read.

    Attributes:
        skip_bad_images: skip images that cannot be decoded (empty, truncated, too large, 32-bit samples),
            counted in the run's ``data.json``, instead of stopping with an error naming the file.
    """

    skip_bad_images: bool = False


class UltralyticsRecipe(BaseRecipe):
    """An Ultralytics model of any task fine-tuned with visionpeft strategies, Ultralytics being the engine.

    Attributes:
        task: Ultralytics' task name, a row of :data:`visionpeft.ultralytics_tasks.TASKS` (``detect``, ``segment``,
            ``pose``, ``obb``, ``classify``); ``detection`` is read as ``detect``.
        model: an Ultralytics ``.pt`` checkpoint (pretrained weights + architecture) or a model yaml such as
            ``yolo11n.yaml`` (random init, unless ``pretrained`` names weights). Ultralytics' names
            (``yolo11n.pt``, bare ``yolo11n``) resolve and download as in Ultralytics
            (:mod:`visionpeft.backends.ultralytics_names`).
        pretrained: Ultralytics' ``pretrained=``: an Ultralytics ``.pt`` checkpoint (or asset name) whose tensors
            the trainer copies into the ``model`` yaml wherever name and shape match, as
            ``yolo train model=yolo11n-seg.yaml pretrained=yolo11n.pt`` does. Set it to start a task model
            (segment, pose, obb) from another task's checkpoint, e.g. a detector's backbone and neck; the new
            head stays randomly initialised. Only with a model yaml (a ``.pt`` model is its own weights).
        data: an Ultralytics data yaml (``train``/``val``[/``test``] image folders, ``names``), or the name of one
            Ultralytics ships (``coco8.yaml``, bare ``coco8``), resolved and downloaded as Ultralytics does. Checked
            before training: missing folders, malformed label lines and class ids out of range are errors
            naming the file and line. ``classify`` (a task whose data format is a folder): a folder with
            ``train/`` and ``val/`` (or ``test/``) holding one sub-folder per class.
        ultralytics: Ultralytics training arguments passed through unchanged (``epochs``, ``imgsz``,
            ``batch``, ``lr0``, ``optimizer``, ``mosaic``, ``fraction``, ``device``, ``amp``, ``workers``...).
            visionpeft's defaults where they differ: ``plots: false``, ``deterministic: true``.
        check_labels: scan every label file and decode every image of the train and val splits before training
            (seconds for thousands of images); turn off only for huge datasets you have already checked.
        dataset: ``skip_bad_images: true`` leaves unreadable images out of training and evaluation (counted in
            the run's ``data.json``) instead of stopping with an error naming the first one.
    """

    task: str = "detect"
    pretrained: str | None = None
    FIXED_ON_RESUME: ClassVar[tuple[str, ...]] = (*BaseRecipe.FIXED_ON_RESUME, "pretrained")
    ultralytics: dict[str, Any] = Field(default_factory=dict)
    check_labels: bool = True
    dataset: DetectionDatasetSection = Field(default_factory=lambda: DetectionDatasetSection())

    @field_validator("task", mode="before")
    @classmethod
    def _check_task(cls, value: Any) -> str:
        if not isinstance(value, str) or ultralytics_tasks.canonical(value) not in ultralytics_tasks.TASKS:
            known = sorted(ultralytics_tasks.TASKS)
            hint = closest(str(value), known, n=1)
            raise ValueError(f"expected an Ultralytics task {known}, got {brief(value)}"
                             + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        return ultralytics_tasks.canonical(value)

    @field_validator("ultralytics", mode="before")
    @classmethod
    def _check_ultralytics(cls, value: Any) -> dict[str, Any]:
        return validate_ultralytics_args(value)

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        if value.lower().endswith((".pt", ".yaml", ".yml")):
            return value
        if (name := _asset_name(value)) is not None:
            return name
        raise ValueError(
            f"expected an Ultralytics '.pt' checkpoint or a model yaml (e.g. yolo11n.yaml), got {brief(value)}"
        )

    @field_validator("pretrained")
    @classmethod
    def _check_pretrained(cls, value: str | None) -> str | None:
        if value is None or value.lower().endswith(".pt"):
            return value
        if (name := _asset_name(value)) is not None:
            return name
        raise ValueError(f"expected an Ultralytics '.pt' checkpoint whose tensors the model yaml takes by name and "
                         f"shape (e.g. yolo11n.pt), got {brief(value)}")

    @model_validator(mode="after")
    def _pretrained_needs_a_yaml(self) -> UltralyticsRecipe:
        # Ultralytics' trainer would load `pretrained` into the .pt model's architecture, silently replacing the
        # weights the recipe names as its model: one of the two is a mistake.
        if self.pretrained is not None and not self.model.lower().endswith((".yaml", ".yml")):
            raise ValueError(f"pretrained: {self.pretrained} goes with a model yaml (model: yolo11n-seg.yaml, "
                             f"pretrained: yolo11n.pt); the model {self.model} already holds its weights. Remove "
                             "pretrained, or name the architecture's yaml as the model")
        return self

    @field_validator("data")
    @classmethod
    def _check_data(cls, value: str, info: ValidationInfo) -> str:
        task = info.data.get("task")
        if task is not None and ultralytics_tasks.get(task).data_format == "folder":
            if value.lower().endswith((".yaml", ".yml")):
                raise ValueError(f"expected a classification dataset folder (train/<class>/*.jpg, val/<class>/*.jpg), "
                                 f"got the yaml {brief(value)}")
            return value
        bare_name = "/" not in value and "\\" not in value  # an Ultralytics name: coco8 -> coco8.yaml
        if not value.lower().endswith((".yaml", ".yml")) and not bare_name:
            raise ValueError(f"expected an Ultralytics data yaml (e.g. path/to/data.yaml), got {brief(value)}")
        return value

    def train_args(self) -> dict[str, Any]:
        """Ultralytics arguments for a run: visionpeft's defaults, then the recipe's ``ultralytics`` section."""
        return {**DEFAULT_ULTRALYTICS_ARGS, **self.ultralytics}
