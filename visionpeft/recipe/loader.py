"""Read a recipe YAML, apply ``key=value`` overrides, validate it with its task's schema.

YAML is read with ``yaml.safe_load`` only: a recipe can never execute code.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..engines import ENGINES, get_engine, load_attr
from ..errors import ConfigError, closest
from ..packaged import PATH_KEYS, find_recipe, packaged_path
from ..safe_yaml import brief, brief_text, check_size, load_yaml_file
from .base import BaseRecipe

__all__ = ["TASK_SCHEMAS", "load_recipe", "load_cli_recipe", "parse_recipe", "apply_overrides", "save_resolved",
           "schema_for", "recipe_to_dict"]

#: task name -> ``"module:Class"`` of its recipe schema: a view of :data:`visionpeft.engines.ENGINES`
#: (imported lazily, so Ultralytics costs nothing here).
TASK_SCHEMAS: dict[str, str] = {name: engine.schema for name, engine in ENGINES.items()}


def schema_for(task: str) -> type[BaseRecipe]:
    """The recipe class registered for ``task``."""
    engine = get_engine(str(task))
    return load_attr(engine.schema, f"task: the {task!r} recipe schema")


def _parse_value(text: str) -> Any:
    """Parse an override value the way YAML would (``3e-4`` -> float, ``true`` -> bool, ``[1,2]`` -> list)."""
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        return text
    check_size(value, f"override value {brief_text(text, 60)!r}")
    # YAML 1.1 reads "3e-4" (no dot) as a string; accept it as the float the user meant.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in "eE") and value[0] in "+-.0123456789" else value
        except ValueError:
            return value
    return value


def _set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``doc[a][b][1][c] = value`` for ``"a.b.1.c"``; create missing mapping keys along the way."""
    parts = dotted.split(".")
    if "" in parts:
        raise ConfigError(f"override {dotted!r}: empty key between dots (position {parts.index('') + 1}); "
                          "write dotted keys like train.epochs=3 or strategies.0.rank=16")
    node: Any = doc
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit():
                raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:depth]) or 'recipe'} is a list; "
                                  f"use an index, e.g. {'.'.join([*parts[:depth], '0'])}")
            idx = int(part)
            if idx == len(node):
                node.append({} if not last else value)  # appending one item at the end is allowed
            elif not -len(node) <= idx < len(node):
                raise ConfigError(f"override {dotted!r}: index {idx} out of range at {where} "
                                  f"(the list has {len(node)} items)")
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:depth])} is a value ({brief(node)}), "
                              "not a mapping or list")


def apply_overrides(doc: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``doc`` with every ``key=value`` override applied in order."""
    out = copy.deepcopy(doc)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.epochs=3")
        value = _parse_value(raw)
        if key.strip() == "name" and _typed_scalar(value):
            value = raw.strip()  # a name is the text as written: name=1e3 stays "1e3", not "1000.0"
        _set_path(out, key.strip(), value)
    return out


def _typed_scalar(value: Any) -> bool:
    """A scalar YAML turned into a number, bool or date (its written text is lost in ``str(value)``)."""
    return isinstance(value, bool | int | float | datetime.date)


def _written_name(path: Path) -> str | None:
    """The top-level ``name:`` scalar exactly as written in the file (``2024.10``, ``no``, ``1e3``), read from
    YAML's node tree (``yaml.compose``: no objects are constructed), or None when there is none."""
    node = yaml.compose(path.read_text())
    if not isinstance(node, yaml.MappingNode):
        return None
    for key, value in node.value:
        if key.value == "name" and isinstance(value, yaml.ScalarNode):
            return value.value
    return None


def _fields_at(cls: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """Field names of the nested model that ``loc`` (minus its last item) points into."""
    model: Any = cls
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        info = model.model_fields.get(part)
        if info is None:
            return []
        model = info.annotation
        args = getattr(model, "__args__", ())
        if args:  # Optional[Section] and similar: pick the model out of the union
            model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), model)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def format_errors(exc: ValidationError, cls: type[BaseModel]) -> str:
    """One line per problem: ``field.path: message``, with a 'did you mean' for unknown keys."""
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"]]
        path = ".".join(str(p) for p in loc) or "recipe"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            fields = _fields_at(cls, loc)
            hint = closest(str(loc[-1]), fields, n=1)
            msg = "unknown key" + (f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {fields}")
        elif "input" in err and err["type"] not in ("missing", "value_error"):
            msg += f" (got {brief(err['input'])})"
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        # Strategy errors already start with their own path (strategies.1.rank: ...).
        # A whole-recipe check (empty loc) names its own field path (lr_grid.<run>: ...).
        lines.append(msg if msg.startswith(path) or not loc else f"{path}: {msg}")
    return "; ".join(lines)


#: Keys whose validation needs the strategy registry (and so torch): left out of the unknown-key pre-check.
_STRATEGY_KEYS = ("strategies", "compare", "lr_grid")


def _unknown_keys_first(cls: type[BaseModel], doc: dict[str, Any], source: str) -> None:
    """Report unknown keys (typos) outside the strategy lists before those are validated.

    Validating a strategy list imports every strategy module and torch (seconds); a typo such as
    ``train.epochz=3`` is then reported in a fraction of a second. Only unknown-key errors stop here; every other
    problem is reported by the full validation, together with the strategies' own.
    """
    try:
        cls.model_validate({k: v for k, v in doc.items() if k not in _STRATEGY_KEYS})
    except ValidationError as exc:
        if any(e["type"] == "extra_forbidden" for e in exc.errors()):
            raise ConfigError(f"{source}: {format_errors(exc, cls)}") from None


def parse_recipe(doc: dict[str, Any], source: str = "recipe") -> BaseRecipe:
    """Validate a recipe mapping with the schema its ``task`` key selects."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: a recipe must be a YAML mapping, got {type(doc).__name__}")
    check_size(doc, source)
    cls = schema_for(str(doc.get("task", "classification")))
    _unknown_keys_first(cls, doc, source)
    try:
        return cls.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_errors(exc, cls)}") from None


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> BaseRecipe:
    """Read the recipe ``path`` names, apply ``key=value`` overrides, validate, return the frozen recipe.

    ``path`` is a file, or the name of a recipe that ships with visionpeft (``quickstart``,
    ``classification/lora_vit``; see :mod:`visionpeft.packaged`). Relative ``data``/``weights``/``model``
    paths are read from the working directory, like every CLI path; one that does not exist there but ships under
    ``visionpeft/assets`` (``datasets/digits.yaml``) is the shipped file. The resolved recipe saved in a run
    directory records absolute paths.
    """
    path = find_recipe(path)
    doc = apply_overrides(_read_recipe(path), overrides)
    return parse_recipe(_with_packaged_paths(doc), source=str(path))


def _read_recipe(path: Path) -> dict[str, Any]:
    doc = load_yaml_file(path) or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping, got {type(doc).__name__}")
    if _typed_scalar(doc.get("name")):
        doc["name"] = _written_name(path)  # name: 2024.10 names the run "2024.10" (YAML would say 2024.1)
    return doc


def _with_packaged_paths(doc: dict[str, Any]) -> dict[str, Any]:
    for key in PATH_KEYS:
        if isinstance(doc.get(key), str):
            doc[key] = packaged_path(doc[key])
    return doc


def load_cli_recipe(items: Sequence[str], command: str = "train") -> BaseRecipe:
    """The recipe of a ``visionpeft train`` / ``compare`` command line: ``[RECIPE] key=value ...``.

    Without a recipe the flat keys describe the run (``model=yolo11n.pt data=coco8.yaml freeze=10 epochs=5``; see
    :mod:`.flat`): the task comes from the model, ``train`` trains the strategies given (``freeze``, ``strategies``;
    none: full fine-tuning, as ``yolo train``), and ``compare`` compares full fine-tuning with them, or with the
    default set of :mod:`.defaults` when none is given. With a recipe, flat keys override it.

    Raises:
        ConfigError: one line: the recipe file, an unknown key (closest of both vocabularies), a missing
            ``model``/``data``, or whatever the task's schema refuses.
    """
    from .defaults import recipe_less
    from .flat import FlatArgs, build_document, is_ultralytics_model, split_cli

    recipe_arg, items = split_cli(items)
    args = FlatArgs(items, _parse_value)
    path = find_recipe(recipe_arg) if recipe_arg is not None else None
    doc = _read_recipe(path) if path is not None else {}
    task = args.flat.get("task", doc.get("task"))
    model = args.flat.get("model", doc.get("model"))
    ultralytics = str(task) != "classification" if task is not None else is_ultralytics_model(model or "")
    doc = build_document(doc, args, ultralytics)
    if path is None:
        doc = recipe_less(_with_packaged_paths(doc), args, ultralytics, command)
    doc = apply_overrides(doc, args.dotted)
    return parse_recipe(_with_packaged_paths(doc), source=str(path) if path else "command line")


def recipe_to_dict(recipe: BaseRecipe) -> dict[str, Any]:
    """The recipe as plain YAML-able data (every default filled in)."""
    return recipe.model_dump(mode="json")


def save_resolved(recipe: BaseRecipe, path: str | Path) -> Path:
    """Write the fully resolved recipe (defaults included) as YAML; loading it gives the same recipe."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    return path
