"""Turn a visionpeft Ultralytics run into a plain Ultralytics checkpoint (no visionpeft needed to load it).

LoRA is folded into the conv weights *before* any Conv+BN fusion (Ultralytics fuses from ``conv.weight`` when
it loads a model for inference or export, which would drop an unmerged LoRA update). The result is the
original architecture - plain ``Conv2d`` layers, original state-dict keys, no visionpeft hooks or attributes -
saved in Ultralytics' own checkpoint layout, so ``ultralytics.YOLO(path)`` loads, validates and exports it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from ... import api
from ...errors import ConfigError

__all__ = ["merged_copy", "load_run_model", "merge_run", "run_checkpoint", "rebuild_from_adapter"]


def merged_copy(model: nn.Module) -> nn.Module:
    """A deep copy of an adapted model with every strategy folded into plain weights (safe to fuse)."""
    from ultralytics.utils.torch_utils import unwrap_model

    out = copy.deepcopy(unwrap_model(model))
    if api.get_state(out) is not None:
        api.merge(out)
    return out


def run_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint of a run: Ultralytics' ``weights/best.pt`` (else ``last.pt``)."""
    run_dir = Path(run_dir)
    for name in ("best.pt", "last.pt"):
        path = run_dir / "weights" / name
        if path.is_file():
            return path
    raise ConfigError(
        f"{run_dir}: no weights/best.pt or weights/last.pt; expected a run directory written by "
        "'visionpeft train' for an Ultralytics recipe (detection, segment, pose, obb, classify)"
    )


def load_run_model(run_dir: str | Path) -> nn.Module:
    """The adapted model of a run (EMA weights of the best epoch), float32, eval mode (restricted unpickling)."""
    from ...backends.safe_load import load_checkpoint

    model, _ = load_checkpoint(run_checkpoint(run_dir))
    return model.float().eval()


def rebuild_from_adapter(run_dir: str | Path, base: str | Path | None = None, adapter: str = "adapter") -> nn.Module:
    """Rebuild a run's model from the base checkpoint and the run's adapter directory.

    The base is built as Ultralytics' trainer builds it (the recipe's ``model`` with a head for the data
    yaml's classes), then :func:`visionpeft.load_adapter` applies the recorded strategies, checks the base
    fingerprint and loads the tensors.
    """

    from ...adapter_io import load_adapter
    from ...ultralytics_tasks import get as task_row
    from .data import check_data, model_kwargs

    run_dir = Path(run_dir)
    from ...run_dir import read_run_dir

    recipe = read_run_dir(run_dir, keys=("model", "data")).doc
    row = task_row(str(recipe.get("task", "detect")))
    info = check_data(recipe["data"], check_labels=False, task=row.name)
    model = build_training_model(str(base or recipe["model"]), info.nc, info.names,
                                 **model_kwargs(recipe["data"], row))
    load_adapter(model, run_dir / adapter)
    return model.eval()


def build_training_model(source: str, nc: int, names: dict[int, str], **extra: Any) -> nn.Module:
    """A model built exactly like the task trainer's ``get_model`` (same nc, weights loaded; ``extra``: the
    keywords the task's model class takes from the data yaml, :func:`.data.model_kwargs`, e.g. pose's
    ``data_kpt_shape``)."""
    from ...backends.ultralytics import build_model, model_from_cfg

    if source.lower().endswith((".yaml", ".yml")):
        model = build_model(source, nc=nc) if not extra else _from_yaml(source, nc, extra)
    else:
        weights = build_model(source)
        model = model_from_cfg(weights.yaml, nc=nc, verbose=False, **extra)
        model.names = dict(names)  # before load(): Ultralytics remaps class rows by name (cls_remap)
        model.load(weights, verbose=False)
    model.names = dict(names)
    return model.float()


def _from_yaml(source: str, nc: int, extra: dict[str, Any]) -> nn.Module:
    from ultralytics.nn.tasks import yaml_model_load

    from ...backends.ultralytics import model_from_cfg

    return model_from_cfg(yaml_model_load(source), nc=nc, verbose=False, **extra)


def merge_run(run_dir: str | Path, out: str | Path) -> Path:
    """``visionpeft merge RUN_DIR -o OUT`` for an Ultralytics run: fold adapters, write a plain Ultralytics ``.pt``."""
    from ...backends import backend_named
    from ...outputs import check_output_file
    from ...run_dir import read_run_dir

    backend = backend_named(read_run_dir(run_dir).engine.backend)  # checks the run directory first
    run_dir = Path(run_dir)
    out = check_output_file(out, "merge -o")
    model = load_run_model(run_dir)
    state = api.get_state(model)
    if state is None:
        raise ConfigError(f"{run_checkpoint(run_dir)}: the checkpoint carries no visionpeft strategies")
    strategies = [c.model_dump(mode="json") for c in state.configs]
    api.merge(model)
    for p in model.parameters():
        p.requires_grad_(False)
    meta = {"merged_from": str(run_dir), "strategies": strategies}
    return backend.export_merged(model, out, meta)
