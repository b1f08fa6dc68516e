"""Reading YAML from user files with bounded resources, and bounded echoes of user values in messages.

``yaml.safe_load`` never runs code, but it is not resource-safe on its own:

* an *alias bomb* (``a: &a [x, x, ...]``, ``b: &b [*a, *a, ...]``, ...) loads in milliseconds as a small graph
  of shared lists, yet anything that walks it as a tree (``repr`` in an error message, pydantic validation,
  ``json.dumps``) expands it to billions of nodes: minutes of CPU and all memory;
* deeply nested input (``[[[[...]]]]``) makes PyYAML's constructor raise ``RecursionError``.

:func:`load_yaml_file` / :func:`load_yaml_text` therefore refuse files over :data:`MAX_FILE_BYTES`, documents
whose tree (aliases expanded) has more than :data:`MAX_NODES` nodes or is nested deeper than :data:`MAX_DEPTH`,
each with one :class:`~visionpeft.errors.ConfigError` line naming the source. :func:`brief` is the one way to
put a user value into a message: its ``repr`` is cut to a few hundred characters without expanding it.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["read_text_file", "load_yaml_file", "load_yaml_text", "check_size", "brief", "brief_text",
           "MAX_FILE_BYTES", "MAX_NODES", "MAX_DEPTH"]

#: Largest YAML file read (recipes, dataset descriptors and data yamls are a few KB; a label list inline in a
#: data yaml stays far below this).
MAX_FILE_BYTES = 4 * 1024 * 1024
#: Most scalars + containers in a loaded document, aliases counted once per use (as a tree walk sees them).
MAX_NODES = 200_000
#: Deepest nesting of mappings / lists (a recipe needs about 4).
MAX_DEPTH = 32

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 6, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 120, 120, 40
_MAX_BRIEF = 240


def brief(value: Any) -> str:
    """``repr(value)`` bounded to about 240 characters, without walking more than a few dozen nodes.

    Use it for every user-supplied value echoed in an error message (``got {brief(v)}``).
    """
    text = _REPR.repr(value)
    return text if len(text) <= _MAX_BRIEF else text[: _MAX_BRIEF - 3] + "..."


def check_size(doc: Any, source: str, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a loaded document that is too large (aliases expanded) or nested too deeply.

    The walk stops as soon as a limit is passed, so an alias bomb costs at most ``max_nodes`` steps.

    Raises:
        ConfigError: naming ``source`` and the limit.
    """
    stack: list[tuple[Any, int]] = [(doc, 1)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > max_nodes:
            raise ConfigError(
                f"{source}: the YAML expands to more than {max_nodes:,} values (YAML aliases '*name' are counted at "
                "each use); a recipe or dataset file is a few hundred values. Remove the repeated aliases"
            )
        if isinstance(node, dict):
            children: Any = [*node.keys(), *node.values()]
        elif isinstance(node, (list, tuple, set)):
            children = node
        else:
            continue
        if depth >= max_depth and children:
            raise ConfigError(f"{source}: the YAML is nested more than {max_depth} levels deep; a recipe or dataset "
                              "file needs a handful. Flatten it")
        stack.extend((child, depth + 1) for child in children)


def load_yaml_text(text: str, source: str) -> Any:
    """``yaml.safe_load(text)`` with the size and nesting limits; every failure is one ``ConfigError`` line."""
    import yaml

    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: {len(text):,} characters of YAML; more than the {MAX_FILE_BYTES:,} accepted")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML is nested too deeply to read (more than {MAX_DEPTH} levels is "
                          "refused); flatten it") from None
    check_size(doc, source)
    return doc


def _yaml_problem(exc: Exception) -> str:
    """PyYAML's problem and position as one short phrase (its own message spans several lines)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if not problem:
        return brief_text(" ".join(str(exc).split()))
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(exc, "context", None)
    return brief_text(f"{problem}{where}" + (f" ({context})" if context else ""))


def read_text_file(path: str | Path, what: str = "", encoding: str = "utf-8") -> str:
    """The text of a file a user gave (CSV split, image list, label file, JSON), decoded as UTF-8.

    ``encoding="utf-8-sig"`` also accepts a leading byte-order mark (CSV files saved by spreadsheets).

    Raises:
        ConfigError: missing or unreadable file, or bytes that are not UTF-8 (with the byte offset).
    """
    path = Path(path)
    where = f"{what}: {path}" if what else str(path)
    try:
        return path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not a UTF-8 text file (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}"
                          "); save it as UTF-8 (or is it a binary file?)") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read ({exc.strerror or exc})") from None


def load_yaml_file(path: str | Path, what: str = "") -> Any:
    """Read the YAML file at ``path`` (``what`` prefixes messages, e.g. ``"data"``) with the limits above.

    Raises:
        ConfigError: missing / unreadable / oversized file, invalid YAML, too large or too deep a document.
    """
    path = Path(path)
    where = f"{what}: {path}" if what else str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{where}: {size:,} bytes; a YAML file here is at most {MAX_FILE_BYTES:,} bytes")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not a UTF-8 text file (is it a binary file?)") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read ({exc.strerror or exc})") from None
    return load_yaml_text(text, where)


def brief_text(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters at a word boundary, marked with ``...`` (for library messages that
    quote the input or another library's message)."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:") + "..."
