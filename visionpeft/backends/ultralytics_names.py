"""Ultralytics' own model and dataset names (``yolo11n.pt``, ``coco8.yaml``), resolved as Ultralytics does.

Every Ultralytics user starts from ``model=yolo11n.pt data=coco8.yaml``: names, not paths. Ultralytics turns them
into files itself, and these functions call the same Ultralytics code so that visionpeft resolves them exactly
the same way, downloads included (for users with internet), into the folders Ultralytics uses:

* a model name (``yolo11n.pt``, ``yolov8n-seg.pt``, ``rtdetr-l.pt``, ``yolov5n.pt`` -> ``yolov5nu.pt``):
  ``ultralytics.utils.downloads.attempt_download_asset``: the file in the working directory, else in
  Ultralytics' ``weights_dir`` setting, else downloaded from the ``ultralytics/assets`` GitHub release into the
  working directory (where ``YOLO("yolo11n.pt")`` puts it).
* a detection-like dataset name (``coco8.yaml``, ``coco8-seg.yaml``, ``coco8-pose.yaml``, ``dota8.yaml``,
  ``coco128.yaml``, or the bare ``coco8``): the yaml shipped in ``ultralytics/cfg/datasets``; its images live
  under Ultralytics' ``datasets_dir`` setting (``path: coco8`` -> ``<datasets_dir>/coco8``) and
  ``ultralytics.data.utils.check_det_dataset`` downloads them there (the yaml's ``download:``) when missing.
* a classification dataset name (``imagenette160``, ``mnist160``): ``<datasets_dir>/<name>``, downloaded by
  ``ultralytics.data.utils.check_cls_dataset`` from Ultralytics' assets (``<name>.zip``) when missing.

A local file always wins: a path that exists is returned unchanged, and a value with a folder part that does not
exist is a missing file, never a name. Offline (``YOLO_OFFLINE=1``, or no network) nothing is attempted: the
error is one line naming the file Ultralytics would download and how to pass a local path instead.

Only this module (with the rest of ``visionpeft/backends``) imports Ultralytics, lazily inside functions.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError, closest

__all__ = ["resolve_model", "resolve_data", "resolve_cls_data", "is_offline", "asset_url", "datasets_dir",
           "DATASETS_SUBDIR", "retired_transfer_hint"]

#: Where Ultralytics keeps the dataset yamls it ships, inside its package.
DATASETS_SUBDIR = ("cfg", "datasets")
_YAML = (".yaml", ".yml")
_OFFLINE = "this machine is offline (YOLO_OFFLINE=1 or no network)"


def is_offline() -> bool:
    """Ultralytics' own verdict (``ultralytics.utils.is_online``: ``YOLO_OFFLINE`` or no DNS), read at each call."""
    from ultralytics.utils import is_online

    return not is_online()


def datasets_dir() -> Path:
    """Ultralytics' ``datasets_dir`` setting (``ultralytics.utils.DATASETS_DIR``), where its datasets live."""
    from ultralytics.utils import DATASETS_DIR

    return Path(DATASETS_DIR)


def _has_folder(text: str) -> bool:
    """Whether ``text`` names a location (a folder part) rather than a bare Ultralytics name."""
    return "/" in text or "\\" in text or os.sep in text or text.startswith("~")


def asset_url(name: str) -> str:
    """The URL ``attempt_download_asset`` downloads the asset ``name`` from (the release it defaults to)."""
    from ultralytics.utils.downloads import GITHUB_ASSETS_REPO, attempt_download_asset

    release = inspect.signature(attempt_download_asset).parameters["release"].default
    return f"https://github.com/{GITHUB_ASSETS_REPO}/releases/download/{release}/{name}"


# ------------------------------------------------------------------------------------------------- models
#: Checkpoints written by the removed ``python -m visionpeft.backends.ultralytics_transfer TASK SOURCE -o OUT``
#: (a task model on the COCO YOLOv5n backbone + neck), named as its docs and the former recipes named them.
_RETIRED = re.compile(r"yolov5nu-(seg|pose|obb)-cocobackbone\.pt$")
_RETIRED_TASK = {"seg": "segment", "pose": "pose", "obb": "obb"}


def retired_transfer_hint(path: str) -> str:
    """What to write instead of a missing checkpoint of the removed transfer command ('' for any other file).

    Ultralytics' own transfer replaced it: the task's model yaml with ``pretrained`` naming the detect checkpoint.
    """
    found = _RETIRED.search(str(path).replace("\\", "/"))
    if found is None:
        return ""
    kind = found.group(1)
    return (f"; it was written by the removed 'python -m visionpeft.backends.ultralytics_transfer'. Ultralytics "
            f"transfers the backbone itself now: write 'model: models/yolov5nu-{kind}.yaml' and 'pretrained: "
            f"../shared/weights/yolov5nu-cocobackbone.pt' instead (as 'yolo {_RETIRED_TASK[kind]} train "
            f"model=yolov5nu-{kind}.yaml pretrained=yolov5nu.pt')")


def resolve_model(value: str | Path, field: str = "model") -> str:
    """A local ``.pt`` file for ``value``: the path itself, or the Ultralytics asset it names (downloaded).

    Model yamls (``yolo11n.yaml``) are returned unchanged: Ultralytics builds them from its package, no file
    needed. ``field`` names the recipe key / argument in messages.

    Raises:
        ConfigError: a missing path; a name that is no Ultralytics asset (with the nearest names); offline, the
            URL Ultralytics would download and how to pass a local file; a failed download.
    """
    text = str(value).strip()
    if Path(text).expanduser().is_file() or text.lower().endswith(_YAML):
        return text
    if (_has_folder(text) and "://" not in text) or retired_transfer_hint(text):
        raise ConfigError(f"{field}: weight file {text} does not exist{retired_transfer_hint(text)}")
    from ultralytics.utils import SETTINGS
    from ultralytics.utils.checks import check_yolov5u_filename
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES, attempt_download_asset

    name = check_yolov5u_filename(text, verbose=False)  # yolov5n.pt -> yolov5nu.pt, as Ultralytics renames it
    if "://" in text:
        from urllib.parse import urlparse

        name = Path(urlparse(text).path).name or "weights.pt"
    for found in (Path(name), Path(SETTINGS["weights_dir"]) / name):
        if found.is_file():
            return str(found)
    url = text if "://" in text else asset_url(name)
    known = "://" in text or name in GITHUB_ASSETS_NAMES
    if not known and is_offline():
        hint = closest(name, sorted(GITHUB_ASSETS_NAMES), n=3)
        raise ConfigError(
            f"{field}: {text} is neither a local file nor an Ultralytics model name (e.g. yolo11n.pt, yolov8n-seg.pt, "
            f"rtdetr-l.pt){f'; did you mean {hint}?' if hint else ''} Give the path of a local .pt checkpoint"
        )
    if is_offline():
        raise ConfigError(
            f"{field}: {text} is not a local file, so Ultralytics would download {url} into {Path.cwd()}, but "
            f"{_OFFLINE}. Download it where there is internet and pass its path instead: {field}=path/to/{name}"
        )
    try:
        path = attempt_download_asset(text)
    except Exception as exc:  # requests / ConnectionError / disk errors, as Ultralytics raises them
        raise ConfigError(f"{field}: downloading {url} failed ({' '.join(str(exc).split())[:200]}); download it "
                          f"yourself and pass its path: {field}=path/to/{name}") from None
    if not Path(path).is_file():
        raise ConfigError(f"{field}: {text} is neither a local file nor an asset of Ultralytics' releases; give the "
                          "path of a local .pt checkpoint (e.g. yolo11n.pt, yolov8n-seg.pt, rtdetr-l.pt)")
    return str(path)


# ----------------------------------------------------------------------------------------------- datasets
def _packaged_yaml(name: str) -> Path | None:
    """The dataset yaml ``name`` shipped with Ultralytics (``coco8.yaml``), or ``None``."""
    from ultralytics.utils import ROOT

    path = Path(ROOT, *DATASETS_SUBDIR, name)
    return path if path.is_file() else None


def _packaged_names() -> list[str]:
    from ultralytics.utils import ROOT

    return sorted(p.name for p in Path(ROOT, *DATASETS_SUBDIR).glob("*.y*ml"))


def _dataset_root(doc: dict[str, Any], yaml_path: Path) -> Path:
    """The dataset root as ``check_det_dataset`` computes it (relative ``path:`` -> ``datasets_dir``)."""
    root = Path(doc.get("path") or yaml_path.parent)
    if not root.exists() and not root.is_absolute():
        root = (datasets_dir() / root).resolve()
    return root


def _present(doc: dict[str, Any], root: Path) -> bool:
    """Whether the yaml's ``val`` images are there (what ``check_det_dataset`` checks before downloading)."""
    val = doc.get("val") or doc.get("validation")
    if not val:
        return True
    return all((root / str(v)).exists() for v in (val if isinstance(val, list) else [val]))


def _what_downloads(doc: dict[str, Any], yaml_path: Path) -> str:
    """``download https://...zip`` for a URL ``download:``, else ``run the download script ...`` (what it fetches)."""
    script = str(doc.get("download") or "")
    if script.lower().startswith("http"):
        return f"download {script.strip()}"
    urls = re.findall(r"https?://[^\s'\"]+", script)
    return f"run the download script in {yaml_path}" + (f" (it fetches {urls[0]} ...)" if urls else "")


def resolve_data(value: str | Path, field: str = "data") -> str:
    """A local data yaml for ``value``: the path itself, or the Ultralytics dataset yaml it names.

    Names resolve as ``check_det_dataset`` resolves them (a bare ``coco8`` means ``coco8.yaml``); when the named
    dataset's images are not under Ultralytics' ``datasets_dir`` yet, Ultralytics downloads them there.

    Raises:
        ConfigError: a missing path; an unknown name (with the nearest shipped names); offline, what Ultralytics
            would download and how to pass a local yaml instead; a failed download.
    """
    text = str(value).strip()
    if Path(text).expanduser().exists():
        return text
    if "://" in text:
        return _remote_data(text, field)
    if _has_folder(text):
        raise ConfigError(f"{field}: data yaml {text} does not exist")
    name = text if text.lower().endswith(_YAML) else f"{text}.yaml"
    yaml_path = _packaged_yaml(name)
    if yaml_path is None:
        hint = closest(name, _packaged_names(), n=3)
        raise ConfigError(
            f"{field}: {text} is neither a local file nor a dataset yaml shipped with Ultralytics (e.g. coco8.yaml, "
            f"coco8-seg.yaml, coco8-pose.yaml, dota8.yaml){f'; did you mean {hint}?' if hint else ''} Give the path "
            "of a data yaml"
        )
    from ..safe_yaml import load_yaml_file

    doc = load_yaml_file(yaml_path, field)
    root = _dataset_root(doc, yaml_path)
    if _present(doc, root):
        return str(yaml_path)
    if is_offline():
        raise ConfigError(
            f"{field}: {text} is Ultralytics' dataset yaml {yaml_path}; its images are not in {root}, so Ultralytics "
            f"would {_what_downloads(doc, yaml_path)} into {datasets_dir()}, but {_OFFLINE}. Download and "
            f"unzip it there where there is internet, or pass a local data yaml instead: {field}=path/to/data.yaml"
        )
    _download(lambda: _check_det(str(yaml_path)), _what_downloads(doc, yaml_path).split(" ", 1)[1], field)
    return str(yaml_path)


def _check_det(path: str) -> Any:
    from ultralytics.data.utils import check_det_dataset

    return check_det_dataset(path)


def _download(fn: Any, what: str, field: str) -> Any:
    try:
        return fn()
    except Exception as exc:  # ConnectionError, FileNotFoundError, a failing download script
        raise ConfigError(f"{field}: Ultralytics could not download {what} ({' '.join(str(exc).split())[:200]}); "
                          f"download it yourself and pass a local path: {field}=path/to/data") from None


def _remote_data(url: str, field: str) -> str:
    """A data yaml or dataset archive given as a URL: Ultralytics downloads it (``check_det_dataset``)."""
    if is_offline():
        raise ConfigError(f"{field}: Ultralytics would download {url}, but {_OFFLINE}. Download it where there is "
                          f"internet and pass the local data yaml instead: {field}=path/to/data.yaml")
    data = _download(lambda: _check_det(url), url, field)
    return str(data["yaml_file"])


def resolve_cls_data(value: str | Path, field: str = "data") -> str:
    """A local classification dataset folder (``train/``, ``val/``) for ``value``: the path, or the named set.

    A bare name (``imagenette160``) means ``<datasets_dir>/<name>``, downloaded by ``check_cls_dataset`` from
    Ultralytics' assets (``<name>.zip``) when missing.

    Raises:
        ConfigError: a missing path; offline, the archive Ultralytics would download; a failed download.
    """
    text = str(value).strip()
    if Path(text).expanduser().exists():
        return text
    if _has_folder(text) or Path(text).suffix:
        raise ConfigError(f"{field}: dataset folder {text} does not exist")
    from ultralytics.utils import ASSETS_URL

    local = datasets_dir() / text
    if local.is_dir():
        return str(local)
    url = f"{ASSETS_URL}/{text}.zip"
    if is_offline():
        raise ConfigError(
            f"{field}: {text} is not a local folder, so Ultralytics would download {url} into {datasets_dir()}, but "
            f"{_OFFLINE}. Download and unzip it where there is internet and pass the folder: {field}=path/to/{text}"
        )

    def fetch() -> Any:
        from ultralytics.data.utils import check_cls_dataset

        return check_cls_dataset(text)

    data = _download(fetch, url, field)
    return str(Path(data["train"]).parent)
