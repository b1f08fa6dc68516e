"""Resume a killed detection run from Ultralytics' ``weights/last.pt``.

Ultralytics resumes by loading ``last.pt`` (``check_resume``), building the model from the checkpoint's EMA
weights (``setup_model`` -> ``get_model(weights=ema)``) and restoring optimizer, EMA, epoch and early-stopping
state (``resume_training``). For a visionpeft run that EMA model is already adapted (LoRA layers, BatchNorm
hooks, the attached plan), and it was saved in float16. Applying the strategies to it again would adapt
twice; adopting it as is would make every frozen tensor a float16-rounded copy of the base, so the adapter's
base fingerprint would no longer match the base checkpoint. Instead:

1. the plain model is rebuilt from the run's *base* (the ``model`` the run started from, recorded in the
   checkpoint's training arguments) exactly as a fresh run builds it, and the strategies are applied to it;
2. the strategies and the trainable set must equal those stored in the checkpoint;
3. the checkpoint provides what training changed (trainable tensors, statistics of BatchNorm layers in
   ``train`` mode, integer buffers); every frozen tensor stays the base's, after checking that it equals
   the checkpoint's float16 copy (a different base file is an error, not a silent mix). Frozen tensors the
   base file does not provide (randomly initialised, e.g. a new head's class convs) are rebuilt exactly
   with the run's seed and number of processes; otherwise their float16 copies are used, with a warning.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ... import api
from ...errors import ConfigError
from ...plan import TrainabilityPlan

__all__ = ["saved_strategies", "check_same_strategies", "load_base_weights", "random_init", "load_resumed_state",
           "restore_frozen", "base_source", "read_checkpoint", "check_resumable", "run_dir_of"]


def run_dir_of(last: str | Path) -> Path | None:
    """The run directory a ``.../weights/last.pt`` belongs to (``None`` for a file elsewhere).

    Ultralytics resumes into the ``save_dir`` recorded *inside* the checkpoint; a copied or moved run directory
    would then write its checkpoints into the original. The run is where its ``last.pt`` is.
    """
    path = Path(last).resolve()
    return path.parent.parent if path.parent.name == "weights" else None


def read_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load an Ultralytics checkpoint for resuming; a damaged file is a ``ConfigError`` naming its size.

    Ultralytics answers a torn or empty ``last.pt`` with "Resume checkpoint not found" although the file exists.
    """
    from ...backends.safe_load import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no checkpoint to resume from")
    try:
        model, ckpt = load_checkpoint(path)  # restricted unpickling: no code from the file runs
    except Exception as exc:  # noqa: BLE001 - truncated zip, empty file, foreign pickle: say which
        if isinstance(exc, ConfigError) and "refused to load" in str(exc):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(
            f"{path}: damaged checkpoint ({path.stat().st_size} bytes; {type(exc).__name__}: {first}), e.g. written "
            "by a run killed while saving. It cannot be resumed: put an intact checkpoint of this run in its place "
            "(weights/epochN.pt with ultralytics.save_period) or start a new run"
        ) from None
    return model, ckpt


def check_resumable(ckpt: dict[str, Any], model: nn.Module, strategies: list[dict[str, Any]],
                    names: dict[int, str], where: str) -> str:
    """Everything a resume needs, checked before anything is written; returns the base model source.

    The checkpoint must hold an unfinished visionpeft run with these ``strategies`` and the data's classes, and
    the base model it started from must still be there.
    """
    check_same_strategies(saved_strategies(model, where), strategies, where)
    start, epochs = int(ckpt.get("epoch", -1)) + 1, int((ckpt.get("train_args") or {}).get("epochs", 0))
    if not 0 < start < epochs or ckpt.get("optimizer") is None:
        # Ultralytics strips a finished run's last.pt: epoch -1 and no optimizer state.
        done = (f"finished all {epochs} epochs" if start <= 0 or start >= epochs
                else f"stopped after epoch {start} of {epochs} and its last.pt holds no optimizer state")
        raise ConfigError(f"{where}: nothing to resume: the run {done}; nothing was changed. A resume cannot extend "
                          "a run; to train longer, start a new run with 'visionpeft train' and more epochs")
    saved_names = {int(k): str(v) for k, v in dict(getattr(model, "names", {}) or {}).items()}
    if saved_names and saved_names != dict(names):
        raise ConfigError(f"{where}: the data's classes {list(names.values())[:5]} differ from the run's "
                          f"{list(saved_names.values())[:5]}; resume with the run's data")
    source = base_source(model, where)
    if not source.lower().endswith((".yaml", ".yml")) and not Path(source).is_file():
        raise ConfigError(
            f"{where}: the base model {source} this run started from is missing; the frozen weights are taken "
            "from it (the checkpoint holds float16 copies only). Put it back at that path to resume"
        )
    return source


def saved_strategies(model: nn.Module, where: str) -> list[dict[str, Any]]:
    """The strategy entries attached to an adapted checkpoint model."""
    state = api.get_state(model)
    if state is None:
        raise ConfigError(f"{where}: the checkpoint carries no visionpeft strategies; resume it with Ultralytics' "
                          "own DetectionTrainer, or start a new visionpeft run")
    return [c.model_dump(mode="json") for c in state.configs]


def check_same_strategies(saved: list[dict[str, Any]], configured: list[dict[str, Any]], where: str) -> None:
    """Resuming with other strategies than the checkpoint's would load tensors into the wrong places.

    Both sides are compared as validated configs (defaults filled in), so an entry written with or without its
    default values (``lr: null``) is the same strategy.
    """
    from ...strategies.registry import parse_config

    def canonical(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [parse_config(e, where=f"strategies.{i}").model_dump(mode="json") for i, e in enumerate(entries)]

    if canonical(saved) != canonical(configured):
        raise ConfigError(
            f"{where}: the run was trained with strategies {saved}, but the resuming trainer is configured with "
            f"{configured}. Resume with the run's own strategies (visionpeft resume RUN_DIR reads them from "
            "recipe.yaml) or start a new run"
        )


def base_source(model: nn.Module, where: str) -> str:
    """The ``model`` argument the run started from (kept in every checkpoint's training arguments)."""
    args = getattr(model, "args", None)
    source = args.get("model") if isinstance(args, dict) else getattr(args, "model", None)
    if not source:
        raise ConfigError(f"{where}: the checkpoint does not record the base model it was trained from")
    return str(source)


def load_base_weights(source: str, where: str) -> nn.Module | None:
    """The base checkpoint's model (``None`` for a model yaml: random initialisation, like the first run)."""
    if source.lower().endswith((".yaml", ".yml")):
        return None
    path = Path(source)
    if not path.is_file():
        raise ConfigError(
            f"{where}: the base model {source} this run started from is missing; the frozen weights are taken "
            "from it (the checkpoint holds float16 copies only). Put it back at that path to resume"
        )
    from ...backends.safe_load import load_checkpoint

    weights, _ = load_checkpoint(path)
    if api.get_state(weights) is not None:
        raise ConfigError(f"{where}: the recorded base model {source} is itself adapted by visionpeft")
    return weights


def _from_checkpoint(plan: TrainabilityPlan) -> set[str]:
    return set(plan.trainable) | set(plan.bn_buffers())


def _same_in_fp16(base: torch.Tensor, saved: torch.Tensor) -> bool:
    """``saved`` is ``base`` as Ultralytics stores it: float16, overflow clamped (``save_model``)."""
    return torch.equal(torch.nan_to_num(base.detach().half()).float(), saved.detach().float())


def random_init(model: nn.Module, base: nn.Module | None) -> set[int]:
    """Identities of ``model``'s tensors that ``base`` did not provide (random init: a new head's class convs).

    Call it on the plain model, before the strategies: adapters keep the wrapped tensors themselves, so the
    identities still hold afterwards (the state-dict names do not: LoRA moves ``conv.weight`` to
    ``conv.base_layer.weight``).
    """
    have = base.state_dict() if base is not None else {}
    return {id(v) for k, v in model.state_dict(keep_vars=True).items()
            if k not in have or have[k].shape != v.shape}


def load_resumed_state(model: nn.Module, plan: TrainabilityPlan, saved: nn.Module, where: str,
                       random_ids: Collection[int] = ()) -> list[str]:
    """Load what training changed from ``saved`` into ``model`` (freshly built base + strategies).

    Args:
        random_ids: tensors the base file does not provide (:func:`random_init`). The rebuild reproduces
            them only with the same seed and number of processes; if it did not, they are taken from the
            checkpoint (float16 copies). Any other frozen tensor that differs from the checkpoint is an error.

    Returns:
        the frozen tensors taken from the checkpoint instead of the rebuilt base.
    """
    saved_plan = api.get_plan(saved)
    if saved_plan is not None and set(saved_plan.trainable) != set(plan.trainable):
        differ = sorted(set(saved_plan.trainable) ^ set(plan.trainable))
        raise ConfigError(f"{where}: the rebuilt trainability plan differs from the checkpoint's in "
                          f"{len(differ)} tensors {differ[:5]} (another Ultralytics or visionpeft version?)")
    src, dst = saved.state_dict(), model.state_dict(keep_vars=True)
    if set(src) != set(dst):
        differ = sorted(set(src) ^ set(dst))
        raise ConfigError(f"{where}: the checkpoint does not fit the rebuilt model: {len(differ)} keys differ "
                          f"{differ[:5]}")
    changed = _from_checkpoint(plan)
    mismatched = [k for k, v in dst.items()
                  if k not in changed and v.is_floating_point() and not _same_in_fp16(v, src[k])]
    from_file = [k for k in mismatched if id(dst[k]) not in random_ids]
    if from_file:
        raise ConfigError(
            f"{where}: {len(from_file)} frozen tensors of the rebuilt base differ from the checkpoint "
            f"{from_file[:5]}: the base model file changed since the run started. Resume with the same base"
        )
    with torch.no_grad():
        for k, v in dst.items():
            if k in changed or not v.is_floating_point() or k in mismatched:
                v.copy_(src[k])
    return mismatched


def restore_frozen(target: nn.Module, reference: nn.Module, plan: TrainabilityPlan) -> None:
    """Copy every frozen floating-point tensor of ``reference`` into ``target`` (same architecture)."""
    changed = _from_checkpoint(plan)
    ref = reference.state_dict()
    with torch.no_grad():
        for k, v in target.state_dict().items():
            if k not in changed and v.is_floating_point():
                v.copy_(ref[k])
