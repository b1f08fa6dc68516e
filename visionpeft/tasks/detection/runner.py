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
from ...outputs import make_dir
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


def _data_for_run(info: Any, data: str, out_dir: Path) -> str:
    """The data yaml to train / validate on: ``data``, or a copy listing only readable images (recorded)."""
    from ultralytics.utils import LOGGER

    from .data import write_without_skipped

    counts = {split: len(files) for split, files in info.skipped.items()}
    make_dir(out_dir.parent, "output")
    (out_dir.parent / "data.json").write_text(json.dumps({
        "data": str(data), "images": {s: len(files) for s, files in info.splits.items()},
        "skipped_bad_images": counts,
        "skipped_files": {s: [str(p) for p in files] for s, files in info.skipped.items()}}, indent=2))
    if not any(counts.values()):
        return str(Path(data).resolve()) if Path(data).exists() else data
    LOGGER.warning(f"visionpeft: skipped unreadable images {counts} (dataset.skip_bad_images); listed in "
                   f"{out_dir.parent / 'data.json'}")
    return str(write_without_skipped(info, out_dir))


class DetectionTask:
    """Ultralytics YOLO detection with visionpeft strategies (see :mod:`.trainer`)."""

    primary_metric = "map50_95"
    metric_names = ("map50", "map50_95", "precision", "recall")

    def train(self, recipe: Any, strategies: list[dict[str, Any]], run_dir: Path, run_name: str) -> RunResult:
        """Validate data and weights, train with Ultralytics' engine, and write the run directory."""
        from ...backends.safe_load import load_checkpoint
        from ...backends.ultralytics import check_checkpoint_file
        from ...recipe import save_resolved
        from .data import check_data
        from .trainer import PeftDetectionTrainer

        _refuse_torchrun()
        info = check_data(recipe.data, check_labels=recipe.check_labels, check_images=recipe.check_labels,
                          skip_bad_images=recipe.dataset.skip_bad_images)
        if recipe.model.lower().endswith(".pt"):
            check_checkpoint_file(recipe.model)
            load_checkpoint(recipe.model)  # refused here, in one line, if it holds more than model classes
        run_dir = Path(run_dir).resolve()
        make_dir(run_dir, "output")
        data = _data_for_run(info, recipe.data, run_dir / "data")
        resolved = recipe.model_copy(update={
            "strategies": [dict(s) for s in strategies], "name": run_name, "compare": None,
            "model": _abs_if_file(recipe.model), "data": _abs_if_file(recipe.data),
        })
        save_resolved(resolved, run_dir / "recipe.yaml")
        overrides = {
            **recipe.train_args(),
            "model": resolved.model, "data": data, "project": str(run_dir.parent),
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
        from ...backends.safe_load import load_checkpoint
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
        info = check_data(recipe.data, check_labels=False, check_images=recipe.check_labels,
                          skip_bad_images=recipe.dataset.skip_bad_images)
        load_checkpoint(last)  # refused here, in one line, if it holds more than model classes
        data = _data_for_run(info, recipe.data, run_dir / "data")
        args = {**recipe.train_args(), "resume": str(last), "data": data, "project": str(run_dir.parent),
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
        skip = bool((doc.get("dataset") or {}).get("skip_bad_images", False))
        info = check_data(doc["data"], check_labels=False, splits=(split,), check_images=doc.get("check_labels", True),
                          skip_bad_images=skip)
        ultra = doc.get("ultralytics") or {}
        save_dir = run_dir / f"eval-{split}"
        data = _data_for_run(info, doc["data"], save_dir / "data")
        args = {
            "data": data, "split": split, "imgsz": ultra.get("imgsz", 640), "batch": ultra.get("batch", 16),
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
