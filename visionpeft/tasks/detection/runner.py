"""The detection :class:`~visionpeft.tasks.base.TaskRunner`: ``train`` / ``evaluate`` / ``merge`` a run dir.

Run directory (Ultralytics' own files plus visionpeft's)::

    recipe.yaml            resolved recipe of this run (its strategies, absolute model/data paths)
    adapter/               adapter of the best epoch (safetensors + json with the base fingerprint)
    adapter_last/          adapter of the last epoch
    metrics.json           RunResult: counts, map50 / map50_95 of the merged best model, timing, memory
    plan.json              trainability plan
    tb/                    visionpeft's TensorBoard events (losses, mAP, LR, plan, hparams)
    weights/best.pt        Ultralytics checkpoint of the adapted EMA model (needs visionpeft to load)
    weights/last.pt
    args.yaml, results.csv Ultralytics' own records
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ...errors import ConfigError
from ..base import RunResult

__all__ = ["DetectionTask"]


def _abs_if_file(path: str) -> str:
    p = Path(path)
    return str(p.resolve()) if p.exists() else path


def _read_run_recipe(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "recipe.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no recipe.yaml; expected a run directory written by 'visionpeft train'")
    doc = yaml.safe_load(path.read_text())
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
        trainer_cls = PeftDetectionTrainer.configure(strategies, run_dir=run_dir, tensorboard=recipe.tensorboard)
        trainer = trainer_cls(overrides=overrides)
        trainer.train()
        return self._result(trainer, run_dir, run_name)

    @staticmethod
    def _result(trainer: Any, run_dir: Path, run_name: str) -> RunResult:
        from .callbacks import metrics_from_ultralytics

        plan, perf = trainer.vp_plan, trainer.vp_perf
        adapter = run_dir / "adapter" / "adapter.safetensors"
        result = RunResult(
            strategy=run_name,
            trainable_params=plan.trainable_count,
            total_params=plan.total,
            trainable_pct=plan.trainable_pct,
            metrics=metrics_from_ultralytics(trainer.metrics),
            peak_mem_mb=perf.peak_mem_mb,
            train_img_per_s=perf.img_per_s,
            train_seconds=perf.train_seconds,
            adapter_bytes=adapter.stat().st_size if adapter.is_file() else 0,
            step_time_s=perf.step_time_s,
            run_dir=run_dir,
            extra={"epochs": int(trainer.epochs), "imgsz": trainer.args.imgsz, "batch": int(trainer.batch_size),
                   "device": str(trainer.device), "strategies": plan.strategies},
        )
        result.save(run_dir / "metrics.json")
        return result

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
