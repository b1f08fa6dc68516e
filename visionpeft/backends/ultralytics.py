"""Ultralytics backend: build YOLO / RT-DETR models of every supported task and describe them to the strategies.

Only this module (and ``visionpeft/tasks/ultralytics``) imports Ultralytics, always lazily inside functions,
so ``import visionpeft`` stays cheap and works without Ultralytics installed.

Supported Ultralytics tasks: the rows of :data:`visionpeft.ultralytics_tasks.TASKS` (``detect``, YOLO and RT-DETR,
``segment``, ``pose``, ``obb``, ``classify``). The classes of each come from Ultralytics' own table
(``YOLO.task_map``, ``RTDETR.task_map``), see :func:`task_classes`.

Public names:
  * :func:`build_model` - an Ultralytics model from a ``.pt`` checkpoint or a model yaml, with clear errors for
    files that are not Ultralytics checkpoints and for a model of another task than asked.
  * :func:`ultralytics_spec` - the :class:`~visionpeft.spec.ModelSpec` of an Ultralytics model
    (``visionpeft.backends.spec_for`` calls it).
  * :func:`is_detection_model` / :func:`is_ultralytics_model` - whether a module is an Ultralytics
    ``DetectionModel`` (detect, segment, pose, obb, RT-DETR) / any supported Ultralytics model.
  * :func:`model_task` / :func:`is_rtdetr` - a model's Ultralytics task; whether it is RT-DETR.
  * :func:`check_checkpoint_file` - inspect a ``.pt`` file's pickle *without executing it*.
"""

from __future__ import annotations

import copy
import json
import pickletools
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import ultralytics_tasks
from ..errors import ConfigError
from ..spec import ModelSpec

__all__ = [
    "build_model",
    "source_facts",
    "ultralytics_spec",
    "is_detection_model",
    "is_ultralytics_model",
    "model_task",
    "is_rtdetr",
    "task_classes",
    "check_checkpoint_file",
    "save_plain_checkpoint",
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
            "Ultralytics models (detection, segment, pose, obb, classify) need the 'ultralytics' package: "
            "pip install ultralytics"
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
    """Whether ``model`` is an Ultralytics ``DetectionModel`` (also Segmentation/Pose/OBB/RT-DETR models, its
    subclasses; checked by class name: no import needed)."""
    return any(cls.__name__ == "DetectionModel" for cls in type(model).__mro__) and hasattr(model, "model")


def is_ultralytics_model(model: Any) -> bool:
    """Whether ``model`` is an Ultralytics model of a supported task: its class or a base class is a row's
    ``model_class`` in :data:`visionpeft.ultralytics_tasks.TASKS` (checked by name: no import needed)."""
    names = [cls.__name__ for cls in type(model).__mro__]
    return ultralytics_tasks.task_of_classes(names) is not None and hasattr(model, "model")


def is_rtdetr(model: Any) -> bool:
    """Whether ``model`` is an RT-DETR model (``RTDETRDetectionModel``; Ultralytics trains it with its own trainer)."""
    return any(cls.__name__ == "RTDETRDetectionModel" for cls in type(model).__mro__)


def model_task(model: Any) -> str:
    """The Ultralytics task of a model: from its class (a checkpoint's recorded ``args.task`` can be stale, e.g. a
    segment model built on a detector's weights), else Ultralytics' ``guess_model_task``."""
    from ultralytics.nn.tasks import guess_model_task

    model = unwrap_yolo(model)
    found = ultralytics_tasks.task_of_classes([cls.__name__ for cls in type(model).__mro__])
    return found if found is not None else guess_model_task(model)


def task_classes(task: str, rtdetr: bool = False) -> dict[str, Any]:
    """Ultralytics' own classes for ``task``: ``{"model", "trainer", "validator", "predictor"}``.

    Read from ``YOLO.task_map`` (``RTDETR.task_map`` for RT-DETR), the table Ultralytics' ``Model`` uses.
    """
    from ultralytics.models import RTDETR, YOLO

    table = (RTDETR if rtdetr else YOLO).task_map.fget(None)  # a property that does not read the instance
    if task not in table:
        raise ConfigError(f"task {task!r}: not an Ultralytics {'RT-DETR ' if rtdetr else ''}task; "
                          f"available: {sorted(table)}")
    return table[task]


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


def build_model(source: str | Path, *, nc: int | None = None, verbose: bool = False,
                task: str | None = None) -> nn.Module:
    """Build an Ultralytics model (detect / segment / pose / obb / classify, RT-DETR) from a checkpoint or yaml.

    Args:
        source: an Ultralytics ``.pt`` checkpoint (weights + architecture) or a model yaml. Bare Ultralytics
            names such as ``"yolo11n.yaml"`` resolve to the yaml files shipped with the package (no download);
            asset names such as ``"yolo11n.pt"`` resolve as ``YOLO()`` resolves them (working directory, then
            Ultralytics' ``weights_dir``, else downloaded; see :mod:`.ultralytics_names`).
        nc: number of classes; only for a yaml (a new, randomly initialised model). Leave ``None`` to keep the
            yaml's / checkpoint's own classes.
        verbose: print Ultralytics' layer table.
        task: the Ultralytics task the model must have (``None``: any supported task).

    Returns:
        The model (``DetectionModel`` or a subclass, ``ClassificationModel``) in float32, eval mode.

    Raises:
        ConfigError: unknown file type, missing file, not an Ultralytics checkpoint, a model of another task than
            ``task``, or a checkpoint referencing objects outside the allow-list (see :mod:`.safe_load`).
    """
    _require_ultralytics()
    text = str(source)
    if text.lower().endswith(_SUFFIXES_YAML):
        return _from_yaml(text, nc=nc, verbose=verbose, task=task)
    if not text.lower().endswith(".pt") and _is_asset_stem(text):
        text = f"{text.strip()}.pt"  # yolo11n -> yolo11n.pt, as YOLO("yolo11n") and yolo train model=yolo11n read it
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
    found = model_task(model) if is_ultralytics_model(model) else getattr(model, "task", "?")
    _check_task(found, task, f"{text}: a {type(model).__name__}")
    return _with_nc(model)


def _is_asset_stem(text: str) -> bool:
    from ultralytics.utils.downloads import GITHUB_ASSETS_STEMS

    return text.strip() in GITHUB_ASSETS_STEMS


def _check_task(found: str, wanted: str | None, what: str) -> None:
    """A model of an unsupported task, or of another task than the engine's, is an error naming both."""
    supported = list(ultralytics_tasks.TASKS)
    if found not in supported:
        raise ConfigError(f"{what} of task {found!r}; visionpeft trains Ultralytics tasks {supported}")
    if wanted is not None and found != ultralytics_tasks.canonical(wanted):
        raise ConfigError(f"{what} of task {found!r}, but the recipe's task trains {wanted!r} models; set "
                          f"task: {found} or give a {wanted!r} model")


def _from_yaml(cfg: str, *, nc: int | None, verbose: bool, task: str | None = None) -> nn.Module:
    from ultralytics.nn.tasks import yaml_model_load

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
    head = _head_module(cfg_dict)
    if head.startswith(_OPEN_VOCABULARY):
        raise ConfigError(
            f"{resolved}: a YOLO-World / YOLOE open-vocabulary model ({head} head, built by Ultralytics' YOLOWorld / "
            "YOLOE classes); visionpeft trains the YOLO and RT-DETR models of Ultralytics' tasks, e.g. "
            "'yolo26n.yaml', 'yolo26n-seg.yaml', 'yolo26n-pose.yaml', 'yolo26n-obb.yaml', 'yolo26n-cls.yaml'"
        )
    _check_task(yaml_task(cfg_dict), task, f"{resolved}: a model yaml")
    return _with_nc(model_from_cfg(cfg_dict, nc=nc, verbose=verbose)).float().eval()


#: Output modules of the open-vocabulary families (``WorldDetect``, ``YOLOEDetect``, ``YOLOESegment[26]``), which
#: Ultralytics builds with their own model classes (``WorldModel``, ``YOLOEModel``), not its tasks' ``task_map``.
_OPEN_VOCABULARY = ("World", "YOLOE")


def _head_module(cfg_dict: dict[str, Any]) -> str:
    """The name of a model yaml's output module (its last layer's module: ``Detect``, ``Segment26``, ...)."""
    layers = cfg_dict.get("head") or [[]]
    return str(layers[-1][2]) if len(layers[-1]) > 2 else ""


def yaml_is_rtdetr(cfg_dict: dict[str, Any]) -> bool:
    """Whether a model yaml's head ends in ``RTDETRDecoder`` (Ultralytics builds it as ``RTDETRDetectionModel``)."""
    return any("RTDETRDecoder" in str(layer[2]) for layer in cfg_dict.get("head", []) if len(layer) > 2)


def yaml_task(cfg_dict: dict[str, Any]) -> str:
    """The Ultralytics task of a model yaml, from its output module as Ultralytics' ``guess_model_task`` reads it
    (``Segment26`` -> ``segment``, ``Pose26`` -> ``pose``, ...); RT-DETR is Ultralytics' ``detect``."""
    from ultralytics.nn.tasks import guess_model_task

    if yaml_is_rtdetr(cfg_dict):
        return "detect"
    found = guess_model_task(cfg_dict)
    return found if isinstance(found, str) else "?"


def model_from_cfg(cfg_dict: dict[str, Any], *, nc: int | None, verbose: bool = False, **kwargs: Any) -> nn.Module:
    """A new model of the class Ultralytics uses for this yaml's task (random init); ``kwargs`` go to the class
    (``data_kpt_shape`` for pose, as ``PoseTrainer.get_model`` passes it)."""
    cls = task_classes(yaml_task(cfg_dict), rtdetr=yaml_is_rtdetr(cfg_dict))["model"]
    return cls(cfg_dict, nc=nc, verbose=verbose, **kwargs)


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
    """Describe an Ultralytics model (any task; or a ``YOLO`` wrapping one) to the strategies by role.

    Roles: ``stem`` ``model.0``, ``blocks``, ``head``, ``always_frozen`` below; no ``tokens``. Unlike the timm
    backend this one also sets three method overrides (:class:`~visionpeft.spec.ModelSpec`), because it knows
    better than the role derivations (:mod:`visionpeft.strategies.roles`): ``lora_targets`` and
    ``lora_exclude`` (the derivation would leave the whole head out, while the pretrained stacked ``Conv``
    layers of a Detect head are good targets and only its bare prediction convs, re-initialised per dataset,
    and ``.dfl`` must stay out; RT-DETR adds its decoder's Linear layers) and ``ssf_targets`` (``BatchNorm2d``
    only: SSF is the affine of each ``Conv`` block's BatchNorm, which fuses into the conv; the derivation's
    "every norm layer" would add RT-DETR's LayerNorms).

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
    from ..strategies.roles import with_defaults

    model = unwrap_yolo(model)
    if not is_ultralytics_model(model):
        raise ConfigError(
            f"ultralytics_spec: expected an Ultralytics model or YOLO object, got {type(model).__name__}"
        )
    n_layers = len(model.model)
    last = n_layers - 1
    head: tuple[str, ...] = (f"model.{last}",)
    targets = LORA_TARGETS
    if is_rtdetr(model):
        head, targets = _rtdetr_roles(model, last)
    has_dfl = any(".dfl" in n for n, _ in model.named_parameters())
    spec = ModelSpec(
        backend="ultralytics", name=_model_identity(model), head=head, stem=("model.0",),
        blocks=tuple(f"model.{i}" for i in range(n_layers)), lora_targets=targets,
        lora_exclude=_lora_exclude(model, last), always_frozen=ALWAYS_FROZEN if has_dfl else (),
        ssf_targets=("BatchNorm2d",),
        extra={"nc": int(getattr(model, "nc", model.yaml.get("nc", 0)) or 0),
               "head_type": type(model.model[last]).__name__, "n_layers": n_layers, "task": model_task(model)},
    )
    return with_defaults(model, spec)


def _lora_exclude(model: nn.Module, last: int) -> tuple[str, ...]:
    """The stem, the task row's head exclusions (``{last}``: the head's index) and ``.dfl``."""
    row = ultralytics_tasks.TASKS.get(model_task(model))
    head = tuple(p.replace("{last}", str(last)) for p in (row.head_exclude if row else ()))
    return (r"re:model\.0(?:\..*)?", *head, rf"re:model\.{last}\.dfl(?:\..*)?")


def _rtdetr_roles(model: nn.Module, last: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """RT-DETR: the head is the decoder's class-dependent part; LoRA also targets the decoder's Linear layers.

    Ultralytics re-initialises ``enc_score_head``, ``dec_score_head`` (Linear to ``nc``) and
    ``denoising_class_embed`` (``nc + 1`` rows) for a new dataset: those are the ``head`` strategy's. The
    transformer decoder layers (``decoder.layers.<i>``: the deformable cross-attention's ``sampling_offsets``,
    ``attention_weights``, ``value_proj``, ``output_proj`` and the FFN's ``linear1``/``linear2``) keep their
    pretrained weights and are LoRA targets beside the convs of the backbone and encoder.
    """
    dec = model.model[last]
    head = tuple(f"model.{last}.{n}" for n in ("enc_score_head", "dec_score_head", "denoising_class_embed")
                 if hasattr(dec, n))
    decoder = (rf"re:model\.{last}\.decoder\.layers\.\d+\.(?:cross_attn\.(?:sampling_offsets|attention_weights|"
               r"value_proj|output_proj)|linear[12])")
    return head, (*LORA_TARGETS, decoder)


# ------------------------------------------------------------------------------------------ merged output
def _assert_plain(model: nn.Module) -> None:
    """No visionpeft class, attribute or hook may be left: the file must load without visionpeft."""
    leftovers = [n for n, m in model.named_modules() if type(m).__module__.startswith("visionpeft")]
    hooks = [n for n, m in model.named_modules() if m._forward_pre_hooks or m._forward_hooks]
    attrs = [n for n, m in model.named_modules() if any(k.startswith("_visionpeft") for k in vars(m))]
    if leftovers or hooks or attrs:
        raise ConfigError(
            f"merge left visionpeft state behind: modules {leftovers[:3]}, hooks {hooks[:3]}, attributes "
            f"{attrs[:3]}; this strategy cannot be merged into a plain checkpoint"
        )


def save_plain_checkpoint(model: nn.Module, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save a merged Ultralytics model in Ultralytics' checkpoint layout (fp16, like Ultralytics' own).

    ``train_args`` are the model's ``args`` with ``task`` set to the model's own task (:func:`model_task`):
    Ultralytics' ``load_checkpoint`` fills missing arguments from its defaults (``task: detect``) and ``YOLO(path)``
    takes its task from them, so a segment, pose, obb or classify model built from a yaml (no ``args`` yet) would
    load as a detector.
    """
    import ultralytics

    _assert_plain(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    args = getattr(model, "args", {})
    train_args = dict(vars(args)) if hasattr(args, "__dict__") else dict(args or {})
    train_args["task"] = model_task(model)
    model = copy.deepcopy(model)  # the caller's model keeps its float32 weights
    if hasattr(model, "criterion"):
        model.criterion = None  # training-only state, as Ultralytics strips it
    ckpt = {
        "date": datetime.now().astimezone().isoformat(),
        "version": ultralytics.__version__,
        "model": None,
        "ema": model.half(),
        "train_args": train_args,
        # Plain data only (JSON string): loading this file must not need visionpeft.
        "visionpeft": json.dumps(extra or {}, default=str),
    }
    torch.save(ckpt, out)
    return out


class _UltralyticsBackend:
    """The Ultralytics :class:`~visionpeft.backends.Backend` (``BACKEND``): the functions of this module."""

    name = "ultralytics"

    def build_model(self, source: str | Path, **kwargs: Any) -> nn.Module:
        """:func:`build_model` (keywords ``nc``, ``task``, ``verbose``)."""
        return build_model(source, **kwargs)

    def spec(self, model: nn.Module) -> ModelSpec:
        return ultralytics_spec(model)

    def data_config(self, model: nn.Module) -> dict[str, Any]:
        """Ultralytics letterboxes to ``imgsz`` (a multiple of the stride) in [0, 1]: no mean/std."""
        inner = unwrap_yolo(model)
        stride = getattr(inner, "stride", None)
        return {"stride": int(stride.max()) if stride is not None else 32, "mean": (0.0, 0.0, 0.0),
                "std": (1.0, 1.0, 1.0), "task": model_task(inner)}

    def export_merged(self, model: nn.Module, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """A merged model as a plain Ultralytics checkpoint (``YOLO(out)`` loads it without visionpeft)."""
        return save_plain_checkpoint(unwrap_yolo(model), out, extra)


BACKEND = _UltralyticsBackend()


def source_facts(source: str | Path) -> tuple[str, int]:
    """(Ultralytics task, number of backbone layers) of a checkpoint or model yaml, read as :func:`build_model` reads
    it (restricted unpickling; Ultralytics' names resolved as ``YOLO()`` resolves them).

    The backbone length is the ``freeze=N`` that freezes exactly the backbone (10 for YOLOv8, 11 for YOLO11/YOLO26),
    the "backbone freeze" of a recipe-less compare.
    """
    model = build_model(source)
    layers = (getattr(model, "yaml", None) or {}).get("backbone") or []
    return model_task(model), len(layers)
