"""The recipes, datasets and model yamls that ship inside the package (``visionpeft/assets``), found by name.

Rule, as Ultralytics resolves ``coco8.yaml`` or ``yolo11n.yaml``: a path that exists (relative to the working
directory) always wins; otherwise a recipe argument is looked up by name among the packaged recipes
(``quickstart``, ``classification/lora_vit``; a leading ``recipes/`` and the ``.yaml`` suffix are optional), and a
relative ``data`` / ``weights`` / ``model`` / ``pretrained`` path inside a recipe is looked up under
``visionpeft/assets`` (``datasets/digits.yaml``, ``models/yolov5nu-seg.yaml``). So the packaged recipes run from
any folder after a plain install.

Imports nothing heavy: ``visionpeft recipes`` and recipe errors start in well under a second.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError, closest

__all__ = ["ASSETS", "RECIPES_DIR", "packaged_recipes", "recipe_summary", "find_recipe", "packaged_path"]

#: Everything that ships beside the code: ``recipes/``, ``datasets/`` and ``models/`` (model yamls).
ASSETS = Path(__file__).resolve().parent / "assets"
RECIPES_DIR = ASSETS / "recipes"
_SUFFIXES = (".yaml", ".yml")
#: Top-level recipe keys that may hold a file path (each task's schema decides what they mean).
PATH_KEYS = ("data", "weights", "model", "pretrained")


def packaged_recipes() -> dict[str, Path]:
    """Name (``classification/lora_vit``) -> file of every recipe that ships, sorted by name."""
    files = [p for p in RECIPES_DIR.rglob("*") if p.suffix in _SUFFIXES and p.is_file()]
    return {p.relative_to(RECIPES_DIR).with_suffix("").as_posix(): p for p in sorted(files)}


def recipe_summary(path: Path, width: int = 100) -> str:
    """The first sentence of the recipe's leading comment block, cut to ``width`` characters."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text:  # a blank comment line ends the first paragraph
            break
        words.append(text)
    para = " ".join(words)
    end = next((i for i, c in enumerate(para) if c == "." and para[i + 1:i + 2] in ("", " ")), len(para))
    sentence = para[:end].strip()
    return sentence if len(sentence) <= width else sentence[: width - 3].rstrip() + "..."


def _recipe_name(arg: str) -> str:
    """``recipes/classification/lora_vit.yaml`` -> ``classification/lora_vit`` (the packaged name)."""
    name = arg.strip().replace("\\", "/")
    name = name[len("recipes/"):] if name.startswith("recipes/") else name
    return next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), name)


def find_recipe(arg: str | Path) -> Path:
    """The recipe file ``arg`` names: an existing file, else a packaged recipe of that name.

    Raises:
        ConfigError: neither exists; the message lists the nearest packaged names.
    """
    path = Path(arg)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"recipe file not found: {path} (it is a directory)")
    recipes = packaged_recipes()
    name = _recipe_name(str(arg))
    if name in recipes:
        return recipes[name]
    near = closest(name, recipes, n=4) or closest(name.rpartition("/")[2], recipes, n=4)
    hint = f"; did you mean {', '.join(near)}" if near else ""
    raise ConfigError(f"recipe file not found: {arg} (no such file, and no packaged recipe {name!r}{hint}; "
                      "'visionpeft recipes' lists them)")


def packaged_path(value: str) -> str:
    """``value`` unchanged unless it is a relative path missing here that ships under ``visionpeft/assets``."""
    path = Path(value)
    # ".." never reaches into the package: such a path is relative to where the user is (../shared/...).
    if not value or path.is_absolute() or ":" in value or ".." in path.parts or path.exists():
        return value
    shipped = ASSETS / path
    return str(shipped) if shipped.exists() else value
