"""Flat ``key=value`` arguments in the users' own words -> a recipe document.

``visionpeft train model=yolo11n.pt data=coco8.yaml freeze=10 epochs=5`` is ``yolo train``'s line: every key of
Ultralytics' default configuration (``epochs``, ``imgsz``, ``batch``, ``lr0``, ``optimizer``, ``device``...) is
accepted at the top level and goes into the recipe's ``ultralytics:`` section, where Ultralytics' own config check
validates it. visionpeft's own keys sit beside them:

* ``freeze=N`` / ``freeze=[i, j]``: exactly Ultralytics' ``freeze`` (a ``{method: freeze, n: ...}`` strategy, so the
  trainability plan knows it); ``freeze=0`` freezes nothing, as in Ultralytics.
* ``strategies=lora,head`` (method names with their defaults) or ``strategies='[{method: lora, rank: 16}, head]'``
  (a YAML list); dotted keys then reach into it (``strategies.0.rank=16``).
* ``project=`` is where runs go (the recipe's ``output``), ``name=`` names the run, ``pretrained=PATH`` is
  Ultralytics' transfer from another checkpoint into a model yaml.

A timm model (``model=vit_tiny_patch16_224``, a hub tag such as ``vit_tiny_patch16_224.augreg_in21k``, or a weights
file named after its timm architecture) takes the same words where they mean the same (``epochs``, ``batch``,
``imgsz``, ``lr0``, ``optimizer``, ``device``, ``workers``, ``patience``...), and the classification recipe's own
field names (``batch_size``, ``img_size``, ``hflip``...) without their section. Without a recipe, a timm model
starts from its pretrained weights, as ``yolo train model=yolo11n.pt`` does.

A recipe may come first; flat keys then override it (``visionpeft train detection/lora epochs=5 freeze=10``).
Dotted keys (``train.epochs=3``, ``ultralytics.mosaic=0``) are the recipe's own paths, applied last.

Imports nothing heavy: Ultralytics' keys are read from its ``cfg/default.yaml`` file, so an unknown key is reported
in a fraction of a second. The run name is derived from data and strategies (:mod:`.naming`) when none is given.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, closest
from ..safe_yaml import brief, load_yaml_file, load_yaml_text

__all__ = ["FlatArgs", "split_cli", "is_flat", "build_document", "to_dotted", "ultralytics_keys",
           "parse_strategy_text", "is_ultralytics_model", "CLASSIFICATION_WORDS", "TOP_KEYS"]

#: Top-level recipe keys a flat argument sets as they are (every task).
TOP_KEYS = ("model", "data", "task", "name", "seed", "seeds", "lr_grid", "tensorboard", "output", "compare",
            "pretrained")
#: Keys the flat form reads itself (not recipe fields of the same name).
_FLAT_OWN = ("freeze", "strategies", "project", "cfg")
#: Top-level keys of one kind of recipe only.
_ULTRALYTICS_TOP = ("check_labels", "ultralytics", "dataset")
_CLASSIFICATION_TOP = ("weights", "head_init_std", "train", "optim", "augment", "dataset")

#: Ultralytics' words (and common names from other trainers) -> the classification recipe path meaning the same.
CLASSIFICATION_WORDS: dict[str, str] = {
    "epochs": "train.epochs", "batch": "train.batch_size", "batch_size": "train.batch_size",
    "imgsz": "augment.img_size", "img_size": "augment.img_size", "lr0": "optim.lr", "lr": "optim.lr",
    "optimizer": "optim.name", "workers": "train.workers", "device": "train.device", "patience": "train.patience",
    "weight_decay": "optim.weight_decay", "momentum": "optim.momentum", "warmup_epochs": "optim.warmup_epochs",
    "fliplr": "augment.hflip", "amp": "train.amp", "label_smoothing": "train.label_smoothing",
}

#: Ultralytics' keys a flat argument may not set, and what to do instead (the rest of ``OWN_KEYS`` is mapped).
_REFUSED = {
    "mode": "the command picks it (visionpeft train / compare)",
    "resume": "continue a run with 'visionpeft resume RUN_DIR'",
    "save_dir": "use project= (and name=)",
    "exist_ok": "every run gets its own folder (<project>/<name>-<time>)",
}

_KEY = re.compile(r"^[A-Za-z_][\w.\-]*=")


@functools.lru_cache(maxsize=1)
def ultralytics_keys() -> dict[str, Any]:
    """Ultralytics' default configuration (its ``cfg/default.yaml``, read as a file: no import of Ultralytics)."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / "cfg" / "default.yaml"
    doc = load_yaml_file(path, "Ultralytics' default.yaml") if path.is_file() else {}
    return dict(doc) if isinstance(doc, dict) else {}


def is_flat(item: str) -> bool:
    """Whether a command-line item is ``key=value`` (else it names a recipe)."""
    return bool(_KEY.match(item))


def split_cli(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """``[recipe] key=value ...`` -> (the recipe argument or None, the ``key=value`` items).

    Raises:
        ConfigError: nothing given, or a second item that is not ``key=value``.
    """
    items = list(items)
    if not items:
        raise ConfigError("nothing to train: give model= and data= (e.g. model=yolo11n.pt data=coco8.yaml "
                          "freeze=10 epochs=5), or a recipe (visionpeft recipes lists those that ship)")
    recipe = None if is_flat(items[0]) else items.pop(0)
    for item in items:
        if not is_flat(item):
            raise ConfigError(f"{item!r}: expected key=value (e.g. epochs=5 or train.epochs=3); "
                              + ("only the first argument may name a recipe" if recipe else
                                 "a recipe, if any, comes first"))
    return recipe, items


_BARE_METHODS = re.compile(r"^\s*[A-Za-z_][\w-]*(\s*,\s*[A-Za-z_][\w-]*)*\s*$")


def parse_strategy_text(text: str, where: str = "strategies") -> list[Any]:
    """Method names (``lora`` or ``lora,head``), a YAML/JSON list or mapping, or a file holding one.

    Raises:
        ConfigError: a path that is no file, or text that is not YAML.
    """
    path = Path(text)
    if path.is_file():
        doc = load_yaml_file(path, where)
    elif path.is_dir() or (text.strip().lower().endswith((".yaml", ".yml", ".json"))
                            or "/" in text or "\\" in text) and not text.lstrip().startswith(("[", "{")):
        what = "is a directory" if path.is_dir() else "file not found"
        raise ConfigError(f"{where} {text}: {what}. {where} takes a YAML/JSON file holding a strategy list, "
                          "method names (lora or lora,head) or an inline list such as '[{method: lora, rank: 8}]'")
    elif _BARE_METHODS.match(text):
        return [{"method": name.strip()} for name in text.split(",")]
    else:
        doc = load_yaml_text(text, where)
    entries = doc if isinstance(doc, list) else [doc]
    return [{"method": e} if isinstance(e, str) else e for e in entries]


def is_ultralytics_model(model: Any) -> bool:
    """A model Ultralytics builds: a ``.pt`` checkpoint, a model yaml, or a bare asset name (``yolo11n``)."""
    text = str(model).strip()
    if text.lower().endswith((".pt", ".yaml", ".yml")):
        return True
    return "/" not in text and "\\" not in text and _is_asset_stem(text)


def _is_asset_stem(text: str) -> bool:
    """A bare Ultralytics model name (``yolo11n``); only YOLO and RT-DETR names are looked up, so a timm name never
    costs the import of Ultralytics."""
    if not text.lower().startswith(("yolo", "rtdetr")) or importlib.util.find_spec("ultralytics") is None:
        return False
    from ultralytics.utils.downloads import GITHUB_ASSETS_STEMS

    return text in GITHUB_ASSETS_STEMS


class FlatArgs:
    """Parsed ``key=value`` items: the flat ones by key (last wins) and the dotted ones in order.

    Args:
        items: the command line's ``key=value`` items.
        parse: turns a value's text into a value as YAML would (the recipe loader's rule).
    """

    def __init__(self, items: Sequence[str], parse: Any) -> None:
        self.flat: dict[str, Any] = {}
        self.text: dict[str, str] = {}
        self.dotted: list[str] = []
        for item in items:
            key, _, raw = item.partition("=")
            key = key.strip()
            if "." in key:
                self.dotted.append(item)
            elif key == "cfg":  # Ultralytics' cfg=FILE: its keys, then the command line's
                self._read_cfg(raw, parse)
            else:
                self.flat[key], self.text[key] = parse(raw), raw.strip()

    def _read_cfg(self, raw: str, parse: Any) -> None:
        doc = load_yaml_file(raw.strip(), "cfg")
        if not isinstance(doc, dict):
            raise ConfigError(f"cfg={raw}: expected a YAML mapping of arguments (epochs: 5, imgsz: 320 ...), "
                              f"got {brief(doc)}")
        for key, value in doc.items():
            self.flat.setdefault(str(key), value)
            self.text.setdefault(str(key), str(value))


def build_document(doc: dict[str, Any], args: FlatArgs, ultralytics: bool) -> dict[str, Any]:
    """``doc`` (a recipe mapping, or ``{}``) with the flat arguments applied (dotted ones are left to the caller).

    Raises:
        ConfigError: one line naming the key: unknown (with the closest key of both vocabularies), owned by a
            command, or a value of the wrong form for ``freeze`` / ``strategies`` / ``pretrained``.
    """
    out = dict(doc)
    for key, value in args.flat.items():
        if key == "name":
            out["name"] = args.text[key] if isinstance(value, bool | int | float) else value
        elif key == "project":
            out["output"] = value
        elif key == "strategies":
            out["strategies"] = parse_strategy_text(str(value)) if isinstance(value, str) else value
        elif key == "freeze":
            continue  # below, once strategies are known
        elif key == "pretrained":
            _set_pretrained(out, value, ultralytics)
        elif key in TOP_KEYS or key in (_ULTRALYTICS_TOP if ultralytics else _CLASSIFICATION_TOP):
            out[key] = value
        elif ultralytics:
            _set_ultralytics(out, key, value)
        else:
            _set_classification(out, key, value)
    if "freeze" in args.flat:
        out["strategies"] = with_freeze(out.get("strategies"), args.flat["freeze"])
    return out


def with_freeze(strategies: Any, value: Any) -> list[Any]:
    """``strategies`` with Ultralytics' ``freeze`` value as its freeze entry (replaced, or put first)."""
    if isinstance(value, bool) or not (isinstance(value, int) and value >= 0 or value is None or (
            isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value))):
        shown = str(value).lower() if isinstance(value, bool) else brief(value)
        raise ConfigError(f"freeze={shown}: expected a number of leading layers (freeze=10 freezes model.0-"
                          "model.9, as in Ultralytics) or a list of layer indices (freeze=[0,3])")
    entries = [e for e in (strategies or []) if not _is_freeze(e)]
    if value in (0, None, []):
        return entries or [{"method": "full"}]  # Ultralytics' freeze=0 / freeze=None freeze nothing
    old = next((e for e in (strategies or []) if _is_freeze(e)), None)
    entry = {**(old if isinstance(old, dict) else {}), "method": "freeze", "n": value}
    return [entry, *entries]


def _is_freeze(entry: Any) -> bool:
    return entry == "freeze" or isinstance(entry, dict) and entry.get("method") == "freeze"


def _set_pretrained(out: dict[str, Any], value: Any, ultralytics: bool) -> None:
    if not ultralytics:
        if isinstance(value, bool):
            out["pretrained"] = value
        else:
            out["weights"] = value  # a weights file for the timm architecture
        return
    if isinstance(value, bool):
        model = str(out.get("model", ""))
        if not value and model.lower().endswith(".pt"):
            raise ConfigError(f"pretrained=false: the model {model} holds its weights (Ultralytics trains from them "
                              "anyway); for a random start name the architecture's yaml (model=yolo11n.yaml)")
        return  # pretrained=true is Ultralytics' default; a model yaml without a path starts random either way
    out["pretrained"] = value


def _set_ultralytics(out: dict[str, Any], key: str, value: Any) -> None:
    if key in _REFUSED:
        raise ConfigError(f"{key}=: set by visionpeft; {_REFUSED[key]}")
    if key not in ultralytics_keys():
        _unknown(key, ultralytics=True)
    section = dict(out.get("ultralytics") or {})
    section[key] = value
    out["ultralytics"] = section


def _set_classification(out: dict[str, Any], key: str, value: Any) -> None:
    path = CLASSIFICATION_WORDS.get(key) or _section_fields().get(key)
    if path is None:
        if key in ultralytics_keys():
            raise ConfigError(f"{key}=: an Ultralytics argument, and {out.get('model')} is a timm model; the timm "
                              f"backend's words are {sorted(CLASSIFICATION_WORDS)} and its recipe fields "
                              "(augment.scale=[0.6,1], train.grad_accum=2 ...; see docs/classification.md)")
        _unknown(key, ultralytics=False)
    if path == "optim.name" and isinstance(value, str):
        value = value.lower()  # Ultralytics writes AdamW / SGD
    if path == "train.amp" and isinstance(value, bool):
        value = "auto" if value else "off"  # Ultralytics' amp=True: mixed precision where it helps
    section_name, field = path.split(".")
    section = dict(out.get(section_name) or {})
    section[field] = value
    out[section_name] = section


@functools.lru_cache(maxsize=1)
def _section_fields() -> dict[str, str]:
    """Field name -> ``section.field`` for every classification section field whose name is unique."""
    from .classification import ClassificationRecipe

    seen: dict[str, list[str]] = {}
    for section, info in ClassificationRecipe.model_fields.items():
        fields = getattr(info.annotation, "model_fields", None)
        for field in fields or ():
            seen.setdefault(field, []).append(f"{section}.{field}")
    return {field: paths[0] for field, paths in seen.items() if len(paths) == 1 and field not in TOP_KEYS}


def _unknown(key: str, ultralytics: bool) -> None:
    """Raise for a key the model's vocabulary lacks, with the closest key of visionpeft's and the backend's."""
    from .ultralytics import ALIASES

    if ultralytics:
        words = [*TOP_KEYS, *_FLAT_OWN, *ultralytics_keys(), *_ULTRALYTICS_TOP]
    else:
        words = [*TOP_KEYS, *_FLAT_OWN, *CLASSIFICATION_WORDS, *_section_fields(), *_CLASSIFICATION_TOP]
    hint = [ALIASES[key]] if ultralytics and key in ALIASES else closest(key, words, n=1)
    raise ConfigError(f"{key}=: not a visionpeft or Ultralytics argument"
                      + (f"; did you mean {hint[0]}=?" if hint else "")
                      + " (recipe paths are dotted: train.epochs=3, ultralytics.mosaic=0)")


def to_dotted(items: Sequence[str], ultralytics: bool) -> list[str]:
    """``key=value`` items of a command that takes recipe paths (``visionpeft resume RUN_DIR device=0``) with each flat
    key written as the recipe path it means (``ultralytics.device=0``; timm: ``train.device=0``); dotted and
    top-level recipe keys are kept as they are (the command then says what it cannot change).

    Raises:
        ConfigError: a key neither vocabulary knows (with the closest).
    """
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        own = _ULTRALYTICS_TOP if ultralytics else _CLASSIFICATION_TOP
        if not sep or "." in key or key in TOP_KEYS or key in own:
            out.append(item)
        elif key == "project":
            out.append(f"output={raw}")
        elif key in ("freeze", "strategies"):
            out.append(f"strategies={raw}")  # refused by the command: what trains is the run's own
        elif ultralytics and key in ultralytics_keys() and key not in _REFUSED:
            out.append(f"ultralytics.{key}={raw}")
        elif not ultralytics and (path := CLASSIFICATION_WORDS.get(key) or _section_fields().get(key)):
            out.append(f"{path}={raw}")
        else:
            _unknown(key, ultralytics)
    return out
