"""What a command line without a recipe means: the task, the strategies, the compare set, the timm weights.

``visionpeft train model=yolo11n.pt data=coco8.yaml freeze=10`` trains what ``yolo train`` with the same keys
trains: the task is the model's, and with neither ``freeze`` nor ``strategies`` it is full fine-tuning.
``visionpeft compare model=M data=D`` compares full fine-tuning with :func:`default_compare_set`; with
``strategies=`` / ``freeze=`` it compares full fine-tuning with those. A timm model starts from its pretrained
weights (``pretrained=false`` for a random start), as an Ultralytics ``.pt`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .naming import strategies_label

__all__ = ["recipe_less", "default_compare_set", "timm_weights_file"]

#: Suffixes of a timm weights file given as ``model=`` (an Ultralytics model is a ``.pt`` or a yaml).
_TIMM_WEIGHTS = (".safetensors", ".pth", ".bin", ".ckpt")


def default_compare_set(ultralytics: bool, backbone_layers: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The runs a recipe-less ``visionpeft compare`` trains beside full fine-tuning (always trained first).

    Ultralytics: the backbone frozen (``freeze=<backbone layers>``, Ultralytics' idiom; the neck and head train),
    LoRA + a trained head (the base frozen), the head alone. timm: LoRA + head and the head alone (a linear probe,
    which is a classifier's backbone freeze).
    """
    runs: dict[str, list[dict[str, Any]]] = {}
    if ultralytics and backbone_layers > 0:
        runs[f"freeze{backbone_layers}"] = [{"method": "freeze", "n": backbone_layers}]
    runs["lora_head"] = [{"method": "lora"}, {"method": "head"}]
    runs["head"] = [{"method": "head"}]
    return runs


def recipe_less(doc: dict[str, Any], args: Any, ultralytics: bool, command: str) -> dict[str, Any]:
    """``doc`` (built from flat keys alone) completed as the module docstring says.

    Raises:
        ConfigError: no ``model`` or ``data``; a timm weights file whose architecture nothing names; a model
            Ultralytics cannot read or fetch (offline: the file it would download and how to pass a local one).
    """
    missing = [k for k in ("model", "data") if not doc.get(k)]
    if missing:
        raise ConfigError(f"{' and '.join(f'{k}=' for k in missing)} missing: give the model and the data, e.g. "
                          "model=yolo11n.pt data=coco8.yaml freeze=10 epochs=5, or model=vit_tiny_patch16_224 "
                          "data=path/to/images strategies=lora,head (or a recipe first: visionpeft recipes)")
    doc = dict(doc)
    backbone = 0
    wants_defaults = command == "compare" and not doc.get("strategies") and not doc.get("compare")
    if ultralytics and (not doc.get("task") or wants_defaults):
        from ..backends.ultralytics import source_facts

        task, backbone = source_facts(str(doc["model"]))
        doc.setdefault("task", task)
    if not ultralytics:
        doc = _timm_model(doc)
    if command != "compare":
        doc.setdefault("strategies", [{"method": "full"}])
    elif not doc.get("compare"):
        strategies = doc.pop("strategies", None)
        doc["compare"] = ({strategies_label(strategies): strategies} if strategies
                          else default_compare_set(ultralytics, backbone))
    return doc


def _timm_model(doc: dict[str, Any]) -> dict[str, Any]:
    """A timm model: a weights file as ``model=`` names its architecture; no weights -> the pretrained ones."""
    doc["task"] = "classification"
    model = str(doc["model"])
    if model.lower().endswith(_TIMM_WEIGHTS):
        doc["model"], doc["weights"] = timm_weights_file(model), model
    if not doc.get("weights"):
        doc.setdefault("pretrained", True)
    return doc


def timm_weights_file(path: str) -> str:
    """The timm architecture of a weights file: its name (``vit_tiny_patch16_224.in1k.safetensors``), else the
    ``timm_model`` of the ``.json`` that ``visionpeft merge`` writes beside a merged model.

    Raises:
        ConfigError: the file is missing, or nothing names its architecture.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"model={path}: weights file not found")
    side = file.with_suffix(".json")
    if side.is_file():
        try:
            name = json.loads(side.read_text()).get("timm_model")
        except (OSError, ValueError, AttributeError):
            name = None
        if isinstance(name, str) and name:
            return name
    import timm

    stem = file.name[: -len(file.suffix)]
    if timm.is_model(stem):
        return stem.split(".")[0]
    raise ConfigError(f"model={path}: a weights file does not say its architecture; give the timm name and the file: "
                      f"model=vit_tiny_patch16_224 weights={path}")
