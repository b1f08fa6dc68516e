"""Dataset descriptors: a YAML in ``datasets/`` (or a bare folder) -> where each split's samples are.

A descriptor, in the spirit of Ultralytics' data yamls::

    name: digits
    format: imagefolder      # or csv
    path: digits             # root, relative to the YAML's folder (or absolute)
    train: train             # a folder (imagefolder) or a CSV file with a ``path,label`` header
    val: val
    test: test               # optional
    names: ["0", "1", ...]   # optional for imagefolder (default: sorted class folders); order = class index
    download: https://...    # optional, for online users; never fetched by visionpeft
    source: ...              # free text shown in reports
    license: ...

``data`` may also be a folder holding ``train/`` and ``val/`` (and optionally ``test/``) ImageFolders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigError, closest
from ..safe_yaml import load_yaml_file

__all__ = ["DatasetInfo", "load_descriptor"]

_SPLITS = ("train", "val", "test")


class _Descriptor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str | None = None
    format: Literal["imagefolder", "csv"] = "imagefolder"
    path: str = "."
    train: str | None = None
    val: str | None = None
    test: str | None = None
    names: list[str] | None = None
    download: str | None = None
    source: str | None = None
    license: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """A resolved dataset: absolute split locations, format, class names (if declared) and provenance."""

    name: str
    format: str
    root: Path
    splits: dict[str, Path]
    names: tuple[str, ...] | None = None
    source: str | None = None
    license: str | None = None
    download: str | None = None
    descriptor: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> Path:
        """The location of split ``name``; a clear error when the dataset has no such split."""
        if name not in self.splits:
            hint = closest(name, self.splits, n=1)
            raise ConfigError(
                f"dataset {self.name!r} has no split {name!r}; it has {sorted(self.splits)}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )
        return self.splits[name]

    def describe(self) -> str:
        """One line for logs and reports: name, location, source."""
        src = f"; source: {self.source}" if self.source else ""
        return f"{self.name} ({self.format}, {self.descriptor or self.root}){src}"


def _from_folder(root: Path) -> DatasetInfo:
    splits = {s: root / s for s in _SPLITS if (root / s).is_dir()}
    if "train" not in splits or "val" not in splits:
        raise ConfigError(
            f"data: {root} is a folder but has no train/ and val/ sub-folders (found: "
            f"{sorted(p.name for p in root.iterdir() if p.is_dir())[:10]}). Expected an ImageFolder root "
            "with train/<class>/*.jpg and val/<class>/*.jpg, or a dataset YAML (see datasets/)."
        )
    return DatasetInfo(name=root.name, format="imagefolder", root=root, splits=splits)


def _from_yaml(path: Path) -> DatasetInfo:
    doc = load_yaml_file(path, "data") or {}
    try:
        desc = _Descriptor.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                hint = closest(key, _Descriptor.model_fields, n=1)
                problems.append(f"{key}: unknown key" + (f"; did you mean {hint[0]!r}?" if hint else ""))
            else:
                problems.append(f"{key}: {err['msg']}")
        raise ConfigError(f"data: {path}: " + "; ".join(problems)) from None
    root = Path(desc.path)
    root = root if root.is_absolute() else (path.parent / root)
    splits = {s: root / getattr(desc, s) for s in _SPLITS if getattr(desc, s)}
    if "train" not in splits or "val" not in splits:
        raise ConfigError(f"data: {path} must name a 'train' and a 'val' split")
    missing = {s: str(p) for s, p in splits.items() if not p.exists()}
    if missing:
        hint = f" It can be downloaded from {desc.download}." if desc.download else ""
        raise ConfigError(f"data: {path}: split locations do not exist: {missing}.{hint}")
    return DatasetInfo(
        name=desc.name or path.stem, format=desc.format, root=root.resolve(),
        splits={k: v.resolve() for k, v in splits.items()},
        names=tuple(desc.names) if desc.names else None, source=desc.source, license=desc.license,
        download=desc.download, descriptor=path.resolve(),
    )


def load_descriptor(data: str | Path) -> DatasetInfo:
    """Resolve a recipe's ``data`` value (a descriptor YAML or an ImageFolder root)."""
    path = Path(data).expanduser()
    if path.is_dir():
        return _from_folder(path.resolve())
    if path.is_file() and path.suffix in {".yaml", ".yml"}:
        return _from_yaml(path)
    if path.is_file():
        raise ConfigError(f"data: {path} is a file but not a dataset YAML (.yaml/.yml)")
    raise ConfigError(
        f"data: {path} does not exist; give a dataset YAML (e.g. datasets/digits.yaml) or a folder with "
        "train/ and val/ class sub-folders"
    )
