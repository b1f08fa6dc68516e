"""The detection recipe: an Ultralytics YOLO model, a data yaml, strategies and Ultralytics' own arguments.

Ultralytics stays the engine, so its training arguments (``imgsz``, ``batch``, ``epochs``, ``lr0``,
``mosaic``...) are not re-declared here: they go in the ``ultralytics:`` section, where each key is checked
against Ultralytics' own argument list (``ultralytics.cfg.DEFAULT_CFG_DICT``) and type rules
(``ultralytics.cfg.check_cfg``). Keys visionpeft owns at the top level (``model``, ``data``, ``name``,
``seed``, the output folder, freezing) are refused there with a pointer to the right place.

Example::

    task: detection
    name: bccd-lora
    model: ../shared/weights/yolov5nu-cocobackbone.pt
    data: ../shared/data/bccd_yolo/data.yaml
    strategies: [{method: lora, rank: 8}, {method: head}]
    ultralytics: {epochs: 5, imgsz: 320, batch: 16, lr0: 0.01}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from ..errors import closest
from .base import BaseRecipe

__all__ = ["DetectionRecipe", "validate_ultralytics_args", "OWN_KEYS", "DEFAULT_ULTRALYTICS_ARGS"]

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
    "task": "the top-level 'task: detection'",
    "mode": "the CLI command (train / compare / eval)",
    "resume": "'visionpeft resume RUN_DIR' (continues from the run's weights/last.pt)",
    "pretrained": "the top-level 'model' key (a .pt checkpoint is the pretrained model)",
    "cfg": "the recipe itself",
}

#: Defaults visionpeft uses where they differ from Ultralytics' (override them in ``ultralytics:``).
#: ``plots: false`` avoids the font download and plotting time; ``deterministic`` makes compares fair.
DEFAULT_ULTRALYTICS_ARGS: dict[str, Any] = {"plots": False, "deterministic": True, "verbose": False}


# Names users bring from other trainers (timm, HF) -> the Ultralytics argument they mean.
_ALIASES = {"lr": "lr0", "learning_rate": "lr0", "batch_size": "batch", "img_size": "imgsz",
            "image_size": "imgsz", "num_workers": "workers", "wd": "weight_decay"}


def _ultralytics_cfg() -> tuple[dict[str, Any], Any]:
    from ultralytics.cfg import DEFAULT_CFG_DICT, check_cfg

    return DEFAULT_CFG_DICT, check_cfg


def validate_ultralytics_args(args: dict[str, Any], where: str = "ultralytics") -> dict[str, Any]:
    """Check Ultralytics training arguments: known keys only, right types; returns a converted copy.

    Raises:
        ValueError: naming ``ultralytics.<key>``, with a 'did you mean' for unknown keys.
    """
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise ValueError(f"{where}: expected a mapping of Ultralytics arguments like {{imgsz: 320}}, got {args!r}")
    known, check_cfg = _ultralytics_cfg()
    out: dict[str, Any] = {}
    problems = []
    for key, value in args.items():
        key = str(key)
        if key in OWN_KEYS:
            problems.append(f"{where}.{key}: set by visionpeft; use {OWN_KEYS[key]}")
        elif key not in known:
            hint = [_ALIASES[key]] if key in _ALIASES else closest(key, known, n=1)
            problems.append(
                f"{where}.{key}: not an Ultralytics training argument"
                + (f"; did you mean {hint[0]!r}?" if hint else "; see ultralytics.cfg.DEFAULT_CFG_DICT")
            )
        else:
            out[key] = _coerce(value)
    if problems:
        raise ValueError("; ".join(problems))
    try:
        check_cfg(out, hard=True)  # Ultralytics' own type/range rules (float, fraction, int, bool keys)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    return out


def _coerce(value: Any) -> Any:
    # YAML 1.1 reads "3e-4" as a string; Ultralytics' float keys would then reject it.
    if isinstance(value, str):
        try:
            return float(value) if value[:1] in "+-.0123456789" and any(c in value for c in "eE") else value
        except ValueError:
            return value
    return value


class DetectionRecipe(BaseRecipe):
    """An Ultralytics detector fine-tuned with visionpeft strategies, Ultralytics being the engine.

    Attributes:
        model: an Ultralytics ``.pt`` checkpoint (pretrained weights + architecture) or a model yaml such as
            ``yolo11n.yaml`` (random init: only for structural tests).
        data: an Ultralytics data yaml (``train``/``val``[/``test``] image folders, ``names``). Checked
            before training: missing folders, malformed label lines and class ids out of range are errors
            naming the file and line.
        ultralytics: Ultralytics training arguments passed through unchanged (``epochs``, ``imgsz``,
            ``batch``, ``lr0``, ``optimizer``, ``mosaic``, ``fraction``, ``device``, ``amp``, ``workers``...).
            visionpeft's defaults where they differ: ``plots: false``, ``deterministic: true``.
        check_labels: scan every label file before training (seconds for thousands of images); turn off
            only for huge datasets you have already checked.
    """

    task: Literal["detection"] = "detection"
    ultralytics: dict[str, Any] = Field(default_factory=dict)
    check_labels: bool = True

    @field_validator("ultralytics", mode="before")
    @classmethod
    def _check_ultralytics(cls, value: Any) -> dict[str, Any]:
        return validate_ultralytics_args(value)

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        if not value.lower().endswith((".pt", ".yaml", ".yml")):
            raise ValueError(
                f"expected an Ultralytics '.pt' checkpoint or a model yaml (e.g. yolo11n.yaml), got {value!r}"
            )
        return value

    @field_validator("data")
    @classmethod
    def _check_data(cls, value: str) -> str:
        if not value.lower().endswith((".yaml", ".yml")):
            raise ValueError(f"expected an Ultralytics data yaml (e.g. path/to/data.yaml), got {value!r}")
        return value

    def train_args(self) -> dict[str, Any]:
        """Ultralytics arguments for a run: visionpeft's defaults, then the recipe's ``ultralytics`` section."""
        return {**DEFAULT_ULTRALYTICS_ARGS, **self.ultralytics}
