"""The detection :class:`~visionpeft.tasks.base.TaskRunner`: ``train`` / ``evaluate`` / ``merge`` a run dir.

Run directory (Ultralytics' own files plus visionpeft's)::

    recipe.yaml            resolved recipe of this run (its strategies, absolute model/data paths)
    adapter/               adapter of the best epoch (safetensors + json with the base fingerprint)
    adapter_last/          adapter of the last epoch
    metrics.json           RunResult: counts, map50 / map50_95 of the merged best model, timing, memory
                           (written by the trainer on rank 0 at the end of training)
    plan.json              trainability plan
    tb/                    visionpeft's TensorBoard events (losses, mAP, LR, plan, hparams)
    weights/best.pt        Ultralytics checkpoint of the adapted EMA model (needs visionpeft to load)
    weights/last.pt
    args.yaml, results.csv Ultralytics' own records
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...safe_yaml import load_yaml_file
from ..base import RunResult

__all__ = ["DetectionTask"]


def _abs_if_file(path: str) -> str:
    p = Path(path)
    return str(p.resolve()) if p.exists() else path


def _refuse_torchrun() -> None:
    from ..distributed import is_distributed

    if is_distributed():
        raise ConfigError(
            "detection under torchrun: launch 'visionpeft train' as one process and set ultralytics.device=0,1; "
            "Ultralytics starts one DDP worker per GPU itself"
        )


def _read_run_recipe(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "recipe.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no recipe.yaml; expected a run directory written by 'visionpeft train'")
    doc = load_yaml_file(path)
    if not isinstance(doc, dict) or doc.get("task") != "detection":
        raise ConfigError(f"{path}: not a detection run (task {doc.get('task') if isinstance(doc, dict) else None!r})")
    return doc


class DetectionTask:
    """Ultralytics YOLO detection with visionpeft strategies (see :mod:`.trainer`)."""

    primary_metric = "map50_95"
    metric_names = ("map50", "map50_95", "precision", "recall")

    def train(self, recipe: Any, strategies: list[dict[str, Any]], run_dir: Path, run_name: str) -> RunResult:
        """Validate data and weights, train with Ultralytics' engine, and write the run directory."""
        from ...backends.ultralytics import check_checkpoint_file
        from ...recipe import save_resolved
        from .data import check_data
        from .trainer import PeftDetectionTrainer

        _refuse_torchrun()
        check_data(recipe.data, check_labels=recipe.check_labels)
        if recipe.model.lower().endswith(".pt"):
            check_checkpoint_file(recipe.model)
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = recipe.model_copy(update={
            "strategies": [dict(s) for s in strategies], "name": run_name, "compare": None,
            "model": _abs_if_file(recipe.model), "data": _abs_if_file(recipe.data),
        })
        save_resolved(resolved, run_dir / "recipe.yaml")
        overrides = {
            **recipe.train_args(),
            "model": resolved.model, "data": resolved.data, "project": str(run_dir.parent),
            "name": run_dir.name, "exist_ok": True, "seed": recipe.seed, "task": "detect", "mode": "train",
        }
        trainer_cls = PeftDetectionTrainer.configure(strategies, run_dir=run_dir, tensorboard=recipe.tensorboard,
                                                     run_name=run_name)
        trainer = trainer_cls(overrides=overrides)
        (run_dir / "metrics.json").unlink(missing_ok=True)
        trainer.train()
        return self._result(run_dir)

    def resume(self, run_dir: Path, overrides: Sequence[str] = ()) -> RunResult:
        """Continue a killed run from its ``weights/last.pt`` (``visionpeft resume RUN_DIR``).

        The strategies come from the run's ``recipe.yaml`` and must equal those stored in the checkpoint.
        ``overrides`` (``key=value``) may change what Ultralytics lets a resume change (``ultralytics.device``,
        ``ultralytics.batch``, ``ultralytics.workers``, ``ultralytics.imgsz``...); others are ignored
        with Ultralytics' warning (the checkpoint's training arguments win).
        """
        from ...recipe import load_recipe
        from .data import check_data
        from .trainer import PeftDetectionTrainer

        _refuse_torchrun()
        run_dir = Path(run_dir).resolve()
        _read_run_recipe(run_dir)
        recipe = load_recipe(run_dir / "recipe.yaml", list(overrides))
        last = run_dir / "weights" / "last.pt"
        if not last.is_file():
            raise ConfigError(f"{run_dir}: no weights/last.pt to resume from (the run stopped before its first "
                              "epoch ended); start it again with 'visionpeft train'")
        check_data(recipe.data, check_labels=False)
        args = {**recipe.train_args(), "resume": str(last), "data": recipe.data, "project": str(run_dir.parent),
                "name": run_dir.name, "exist_ok": True, "task": "detect", "mode": "train"}
        trainer_cls = PeftDetectionTrainer.configure(recipe.strategies, run_dir=run_dir,
                                                     tensorboard=recipe.tensorboard, run_name=recipe.name)
        trainer = trainer_cls(overrides=args)
        (run_dir / "metrics.json").unlink(missing_ok=True)
        trainer.train()
        return self._result(run_dir)

    @staticmethod
    def _result(run_dir: Path) -> RunResult:
        """The ``metrics.json`` the trainer wrote (on rank 0, also when training ran in DDP workers)."""
        path = run_dir / "metrics.json"
        if not path.is_file():
            raise ConfigError(f"{run_dir}: training ended without writing metrics.json; see the log above")
        return RunResult.from_dict(json.loads(path.read_text()))

    def evaluate(self, run_dir: Path, split: str) -> dict[str, float]:
        """Validate the run's best model (adapters merged) on ``split`` with Ultralytics' validator."""
        from ultralytics.models.yolo.detect import DetectionValidator

        from .callbacks import metrics_from_ultralytics
        from .data import check_data
        from .merge import load_run_model
        from .trainer import merged_copy

        run_dir = Path(run_dir)
        doc = _read_run_recipe(run_dir)
        check_data(doc["data"], check_labels=False, splits=(split,))
        ultra = doc.get("ultralytics") or {}
        save_dir = run_dir / f"eval-{split}"
        args = {
            "data": doc["data"], "split": split, "imgsz": ultra.get("imgsz", 640), "batch": ultra.get("batch", 16),
            "device": ultra.get("device"), "plots": False, "verbose": False, "task": "detect", "mode": "val",
            "project": str(run_dir), "name": save_dir.name, "exist_ok": True,
        }
        validator = DetectionValidator(args=args, save_dir=save_dir)
        metrics = metrics_from_ultralytics(validator(model=merged_copy(load_run_model(run_dir))))
        (run_dir / f"eval_{split}.json").write_text(json.dumps(metrics, indent=2))
        return metrics

    def merge(self, run_dir: Path, out: Path) -> Path:
        """Write a plain Ultralytics checkpoint (LoRA folded in) that loads without visionpeft."""
        from .merge import merge_run

        return merge_run(run_dir, out)
