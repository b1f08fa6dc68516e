"""Ultralytics YOLO backend: build detection models and describe them to the strategies.

Only this module (and ``visionpeft/tasks/detection``) imports Ultralytics, always lazily inside functions,
so ``import visionpeft`` stays cheap and works without Ultralytics installed.

Public names:
  * :func:`build_model` - a ``DetectionModel`` from an Ultralytics ``.pt`` checkpoint or a model yaml, with
    clear errors for files that are not Ultralytics checkpoints.
  * :func:`ultralytics_spec` - the :class:`~visionpeft.spec.ModelSpec` of a ``DetectionModel``
    (``visionpeft.backends.spec_for`` calls it).
  * :func:`is_detection_model` - whether a module is an Ultralytics ``DetectionModel``.
  * :func:`check_checkpoint_file` - inspect a ``.pt`` file's pickle *without executing it*.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..spec import ModelSpec

__all__ = [
    "build_model",
    "ultralytics_spec",
    "is_detection_model",
    "check_checkpoint_file",
    "unwrap_yolo",
    "LORA_TARGETS",
]

#: Default LoRA targets: the Conv2d inside every Ultralytics ``Conv`` block (``Conv``, ``DWConv``, the
#: bottlenecks of C3/C2f/C3k2, SPPF, the qkv/proj/pe/ffn convs of C2PSA attention, the head's stacked
#: ``Conv`` layers), i.e. every module named ``model.<i>...conv``. Blocks wrap their conv as ``.conv``, so
#: the bare prediction convs of the Detect head (``cv2.<j>.2``, ``cv3.<j>.2``) never match.
LORA_TARGETS: tuple[str, ...] = (r"re:model\.\d+\.(?:.*\.)?conv",)

# Ultralytics' trainer always freezes parameters whose name contains ".dfl" (the fixed DFL integral conv).
ALWAYS_FROZEN: tuple[str, ...] = (r"re:.*\.dfl.*",)

_SUFFIXES_YAML = (".yaml", ".yml")


def _require_ultralytics() -> Any:
    try:
        import ultralytics
    except ImportError as exc:  # pragma: no cover - ultralytics is a dependency
        raise ConfigError(
            "detection needs the 'ultralytics' package: pip install ultralytics"
        ) from exc
    return ultralytics


def unwrap_yolo(model: Any) -> nn.Module:
    """The ``DetectionModel`` inside an Ultralytics ``YOLO`` object (or the module itself)."""
    inner = getattr(model, "model", None)
    if not isinstance(model, nn.Module) and isinstance(inner, nn.Module):
        return inner
    if isinstance(model, nn.Module) and type(model).__name__ == "YOLO" and isinstance(inner, nn.Module):
        return inner  # ultralytics.YOLO subclasses nn.Module
    return model


def is_detection_model(model: Any) -> bool:
    """Whether ``model`` is an Ultralytics ``DetectionModel`` (checked by class name: no import needed)."""
    return any(cls.__name__ == "DetectionModel" for cls in type(model).__mro__) and hasattr(model, "model")


# --------------------------------------------------------------------------------------------- checkpoints
def _pickle_globals(path: Path) -> set[str]:
    """``module.name`` of every class the checkpoint's pickle references, read without unpickling."""
    try:
        with zipfile.ZipFile(path) as zf:
            pkl = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            if pkl is None:
                raise ConfigError(
                    f"{path}: not a PyTorch checkpoint (zip archive without data.pkl); give an Ultralytics "
                    "'.pt' file saved by Ultralytics (model.save / training) or a model yaml like 'yolo11n.yaml'"
                )
            data = zf.read(pkl)
    except zipfile.BadZipFile:
        raise ConfigError(
            f"{path}: not an Ultralytics checkpoint (not a torch zip archive: empty, truncated, a legacy "
            "pickle or another format). Give a '.pt' saved by Ultralytics or a model yaml like 'yolo11n.yaml'"
        ) from None
    found: set[str] = set()
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.add(str(arg).replace(" ", "."))
            elif op.name in {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE"}:
                strings.append(str(arg))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add(f"{strings[-2]}.{strings[-1]}")
    except Exception as exc:  # damaged pickle stream
        raise ConfigError(f"{path}: the checkpoint's pickle is damaged ({exc}); re-export or re-download it") from None
    return found


def check_checkpoint_file(path: str | Path) -> set[str]:
    """Check that ``path`` is an Ultralytics checkpoint before Ultralytics unpickles it.

    Nothing is executed: the pickle's opcodes are scanned for the classes it would create.

    Returns:
        The referenced ``module.class`` names.

    Raises:
        ConfigError: missing file, not a torch archive, an original YOLOv5-repo pickle (``models.yolo``), or no
            Ultralytics model class inside.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model: weight file {path} does not exist")
    if path.suffix == ".safetensors":
        raise ConfigError(
            f"{path}: a safetensors file holds tensors only; detection needs an Ultralytics '.pt' checkpoint "
            "(it records the architecture) or a model yaml"
        )
    names = _pickle_globals(path)
    legacy = sorted(n for n in names if n.split(".")[0] in {"models", "utils"})
    if legacy:
        raise ConfigError(
            f"{path}: this is an original YOLOv5-repository checkpoint (it references {legacy[:3]}), which "
            "Ultralytics cannot load. Use an Ultralytics-format checkpoint (e.g. 'yolov5nu.pt') or a yaml."
        )
    if not any(n.startswith("ultralytics.nn.tasks.") for n in names):
        raise ConfigError(
            f"{path}: not an Ultralytics checkpoint (no Ultralytics model class inside; found "
            f"{sorted(names)[:4]}). Give a '.pt' saved by Ultralytics or a model yaml like 'yolo11n.yaml'"
        )
    return names


def build_model(source: str | Path, *, nc: int | None = None, verbose: bool = False) -> nn.Module:
    """Build an Ultralytics ``DetectionModel`` from a checkpoint or a model yaml.

    Args:
        source: an Ultralytics ``.pt`` checkpoint (weights + architecture) or a model yaml. Bare Ultralytics
            names such as ``"yolo11n.yaml"`` resolve to the yaml files shipped with the package (no download);
            asset names such as ``"yolo11n.pt"`` resolve as ``YOLO()`` resolves them (working directory, then
            Ultralytics' ``weights_dir``, else downloaded; see :mod:`.ultralytics_names`).
        nc: number of classes; only for a yaml (a new, randomly initialised model). Leave ``None`` to keep the
            yaml's / checkpoint's own classes.
        verbose: print Ultralytics' layer table.

    Returns:
        The ``DetectionModel`` in float32, eval mode.

    Raises:
        ConfigError: unknown file type, missing file, not an Ultralytics detection checkpoint, or a checkpoint
            referencing objects outside the allow-list (see :mod:`.safe_load`).
    """
    _require_ultralytics()
    text = str(source)
    if text.lower().endswith(_SUFFIXES_YAML):
        return _from_yaml(text, nc=nc, verbose=verbose)
    if not text.lower().endswith(".pt"):
        raise ConfigError(
            f"model: {text!r} is neither an Ultralytics '.pt' checkpoint nor a model yaml ('.yaml'); "
            "e.g. model=yolo11n.yaml or model=path/to/weights.pt"
        )
    if nc is not None:
        raise ConfigError("model: 'nc' applies to a model yaml only; a checkpoint keeps its own classes")
    from .ultralytics_names import resolve_model

    text = resolve_model(text)  # Ultralytics' names (yolo11n.pt) -> the local file, downloaded as YOLO() does
    check_checkpoint_file(text)
    from .safe_load import load_checkpoint

    model, _ = load_checkpoint(text)  # restricted unpickling: no code from the file runs
    if not is_detection_model(model) or getattr(model, "task", "detect") != "detect":
        raise ConfigError(
            f"{text}: a {type(model).__name__} (task {getattr(model, 'task', '?')!r}); visionpeft detection "
            "needs a detection model (task 'detect')"
        )
    return _with_nc(model)


def _from_yaml(cfg: str, *, nc: int | None, verbose: bool) -> nn.Module:
    from ultralytics.nn.tasks import DetectionModel, guess_model_task, yaml_model_load

    # yaml_model_load resolves scaled names ('yolo11n.yaml' -> yolo11.yaml with scale 'n') inside the
    # package; it only downloads for URLs, which a model yaml name never is here.
    if "://" in cfg:
        raise ConfigError(f"model: {cfg!r}: give a local yaml path or an Ultralytics yaml name, not a URL")
    try:
        cfg_dict = yaml_model_load(cfg)
    except (FileNotFoundError, OSError):
        raise ConfigError(
            f"model: yaml {cfg!r} not found (neither a file nor a yaml shipped with Ultralytics, e.g. "
            "'yolo11n.yaml', 'yolov8n.yaml', 'yolov5n.yaml')"
        ) from None
    except Exception as exc:
        raise ConfigError(f"model: {cfg}: not a readable Ultralytics model yaml ({exc})") from None
    resolved = cfg_dict.get("yaml_file", cfg) if isinstance(cfg_dict, dict) else cfg
    if not isinstance(cfg_dict, dict) or "backbone" not in cfg_dict or "head" not in cfg_dict:
        raise ConfigError(f"{resolved}: not an Ultralytics model yaml (needs 'backbone' and 'head' sections)")
    task = guess_model_task(cfg_dict)
    if task != "detect":
        raise ConfigError(f"{resolved}: a {task!r} model yaml; visionpeft detection needs a 'detect' model")
    model = DetectionModel(cfg_dict, nc=nc, verbose=verbose)
    return _with_nc(model).float().eval()


def _with_nc(model: nn.Module) -> nn.Module:
    # Ultralytics sets ``nc`` during training only (the yaml holds it); callers expect the attribute.
    if not hasattr(model, "nc"):
        model.nc = int(model.yaml["nc"])
    return model


# -------------------------------------------------------------------------------------------------- spec
def _model_identity(model: nn.Module) -> str:
    yaml_cfg = getattr(model, "yaml", None) or {}
    stem = Path(str(yaml_cfg.get("yaml_file", "") or "yolo")).stem
    nc = yaml_cfg.get("nc", getattr(model, "nc", "?"))
    return f"ultralytics:{stem}:nc{nc}"


def ultralytics_spec(model: Any) -> ModelSpec:
    """Describe an Ultralytics ``DetectionModel`` (or a ``YOLO`` wrapping one) to the strategies.

    * ``blocks``: ``model.0`` ... ``model.<last>``, the layers of ``model.model``. ``freeze: {n: N}`` freezes
      ``blocks[:N]`` - every parameter whose name starts with ``model.<i>.`` for ``i < N`` - which is exactly
      what Ultralytics' ``freeze=N`` freezes (it matches the substring ``model.<i>.``); a list ``[0, 3]``
      matches Ultralytics' ``freeze=[0, 3]``.
    * ``head``: the last layer (``Detect``), re-initialised by Ultralytics when the dataset's classes differ.
    * ``always_frozen``: ``.dfl`` (the fixed distribution-focal-loss integral conv Ultralytics never trains).
    * ``lora_targets``: the conv inside every Ultralytics ``Conv``-family block (see :data:`LORA_TARGETS`).
      ``lora_exclude`` removes three groups, and why:
        - the stem ``model.0``: 3 input channels, so a rank-r adapter is about as large as the layer while
          it sees raw pixels, where pretrained filters transfer best;
        - the Detect head's bare 1x1 prediction convs (``cv2.<j>.2`` box / ``cv3.<j>.2`` class): they depend
          on ``nc``/``reg_max`` and are re-initialised for a new dataset, so a low-rank update of a random
          matrix is meaningless - train them with the ``head`` strategy;
        - ``.dfl``: never trains.
      Depthwise convs (the DWConv layers of YOLO11 heads, C2PSA's positional conv) stay targets; the LoRA
      strategy skips a layer whose adapter would exceed ``max_param_fraction`` of its weight.
    * ``ssf_targets``: the BatchNorm of every ``Conv`` block (SSF folds into its affine); ``lora_exclude`` and
      the head apply as for LoRA.
    """
    model = unwrap_yolo(model)
    if not is_detection_model(model):
        raise ConfigError(
            f"ultralytics_spec: expected an Ultralytics DetectionModel or YOLO object, got {type(model).__name__}"
        )
    n_layers = len(model.model)
    last = n_layers - 1
    head = f"model.{last}"
    exclude = (
        r"re:model\.0(?:\..*)?",
        rf"re:model\.{last}\.(?:one2one_)?cv[23]\.\d+\.2(?:\..*)?",
        rf"re:model\.{last}\.dfl(?:\..*)?",
    )
    return ModelSpec(
        backend="ultralytics",
        name=_model_identity(model),
        head=(head,),
        blocks=tuple(f"model.{i}" for i in range(n_layers)),
        lora_targets=LORA_TARGETS,
        lora_exclude=exclude,
        always_frozen=ALWAYS_FROZEN,
        prompt=None,
        ssf_targets=("BatchNorm2d",),
        extra={
            "nc": int(getattr(model, "nc", model.yaml.get("nc", 0)) or 0),
            "head_type": type(model.model[last]).__name__,
            "n_layers": n_layers,
        },
    )
