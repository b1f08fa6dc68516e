"""The Ultralytics-engine :class:`~visionpeft.tasks.base.TaskRunner`: ``train`` / ``evaluate`` / ``merge`` a run dir.

One class, :class:`UltralyticsRunner`, serves every Ultralytics task; its row of the task table
(:data:`visionpeft.ultralytics_tasks.TASKS`) gives the label rule, the data format and the metrics, and
Ultralytics' ``task_map`` the trainer class (:func:`.trainer.trainer_for`; RT-DETR models get RT-DETR's trainer)
and the validator.

Run directory (Ultralytics' own files plus visionpeft's)::

    recipe.yaml            resolved recipe of this run (its strategies, absolute model/data paths)
    adapter/               adapter of the best epoch (safetensors + json with the base fingerprint)
    adapter_last/          adapter of the last epoch
    metrics.json           RunResult: counts, the task's metrics (its row's ``metrics``) of the merged best model,
                           timing, memory,
                           the final validation's settings (extra.val: what 'visionpeft eval' reuses)
                           (written by the trainer on rank 0 at the end of training)
    plan.json              trainability plan
    events.out.tfevents.*  visionpeft's TensorBoard events (losses, mAP, LR, plan, hparams; the run is named
                           after this folder in TensorBoard)
    weights/best.pt        Ultralytics checkpoint of the adapted EMA model (needs visionpeft to load; fuses exactly)
    weights/last.pt
    args.yaml, results.csv Ultralytics' own records
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...devices import check_device
from ...errors import ConfigError
from ...outputs import make_dir
from ...recipe.ultralytics import UltralyticsRecipe
from ...safe_yaml import load_yaml_file
from ...ultralytics_tasks import get as task_row
from ..base import RunResult, load_run_recipe
from .callbacks import write_json

if TYPE_CHECKING:
    from .images import DataInfo

__all__ = ["UltralyticsRunner"]


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


def _train(trainer: Any) -> None:
    """``trainer.train()``; a failure is marked in TensorBoard's HParams tab before it propagates."""
    try:
        trainer.train()
    except BaseException:
        if trainer.vp_logger is not None:
            trainer.vp_logger.session_end(ok=False)
            trainer.vp_logger.close()
        raise


#: Recipe keys that define the model a checkpoint's tensors belong to: a resume cannot change them (the schema's).
FIXED_ON_RESUME = UltralyticsRecipe.FIXED_ON_RESUME


def _stamp(path: Path) -> int | None:
    """Modification time of ``path`` (``None`` if absent): tells a freshly written file from an old one."""
    return path.stat().st_mtime_ns if path.is_file() else None


def _read_run_recipe(run_dir: Path, task: str = "detect") -> dict[str, Any]:
    """The run's ``recipe.yaml`` mapping (:func:`visionpeft.run_dir.read_run_dir`: a run of ``task``)."""
    from ...run_dir import read_run_dir

    return read_run_dir(run_dir, task=task).doc


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


def _with_local_files(recipe: Any, ultralytics_task: str = "detect") -> Any:
    """``recipe`` with Ultralytics' own names (``yolo11n.pt``, ``coco8.yaml``) resolved to the local files (downloaded
    as Ultralytics would); the run records those files, so ``resume`` / ``eval`` / ``merge`` use the same ones."""
    from ...backends.ultralytics_names import resolve_model
    from .data import resolve_task_data

    files = {"model": resolve_model(recipe.model), "data": resolve_task_data(recipe.data, task_row(ultralytics_task)),
             "pretrained": recipe.pretrained and resolve_model(recipe.pretrained, "pretrained")}
    changed = {k: v for k, v in files.items() if v != getattr(recipe, k)}
    return recipe.model_copy(update=changed) if changed else recipe


class UltralyticsRunner:
    """The runner of one Ultralytics task (YOLO / RT-DETR models) with visionpeft strategies (see :mod:`.trainer`).

    Args:
        task: Ultralytics' task name, a row of :data:`visionpeft.ultralytics_tasks.TASKS` (``detection``, the former
            name of ``detect``, is accepted).
    """

    def __init__(self, task: str = "detect") -> None:
        self.row = task_row(task)
        self.task = self.ultralytics_task = self.row.name
        self.primary_metric, self.metric_names = self.row.primary, self.row.metric_names

    def _check_data(self, data: str, **kwargs: Any) -> DataInfo:
        from .data import check_data

        return check_data(data, task=self.row.name, **kwargs)

    def _trainer_class(self, model: str) -> type:
        """The task's trainer class; an RT-DETR model trains with RT-DETR's own trainer."""
        from ...backends.ultralytics import build_model, is_rtdetr
        from .trainer import trainer_for

        built = build_model(model, task=self.ultralytics_task)  # a model of another task: one clear line
        return trainer_for(self.ultralytics_task, rtdetr=is_rtdetr(built))

    @staticmethod
    def _check_pretrained(pretrained: str) -> None:
        """Load ``pretrained`` once with the restricted unpickler (any task: its tensors transfer by name/shape)."""
        from ...backends.ultralytics import build_model

        build_model(pretrained)

    def train(self, recipe: UltralyticsRecipe, strategies: list[dict[str, Any]], run_dir: Path,
              run_name: str) -> RunResult:
        """Validate data and weights, train with Ultralytics' engine, and write the run directory."""
        _refuse_torchrun()
        check_device(recipe.train_args().get("device"), "ultralytics.device")  # before any data is read
        recipe = _with_local_files(recipe, self.ultralytics_task)
        info = self._check_data(recipe.data, check_labels=recipe.check_labels, check_images=recipe.check_labels,
                          skip_bad_images=recipe.dataset.skip_bad_images)
        # The one load of the weights before training (restricted unpickling, the task checked): a bad file is one
        # line here, before the run directory exists. `pretrained` (another task's checkpoint) is read the same way.
        trainer_base = self._trainer_class(recipe.model)
        if recipe.pretrained:
            self._check_pretrained(recipe.pretrained)
        run_dir = Path(run_dir).resolve()
        fresh = not run_dir.exists()
        make_dir(run_dir, "output")
        try:
            return self._start(recipe, strategies, run_dir, run_name, info, trainer_base)
        except BaseException:
            if fresh and not (run_dir / "weights" / "last.pt").is_file():
                import shutil  # a start that failed before its first epoch ended leaves nothing to resume

                shutil.rmtree(run_dir, ignore_errors=True)
            raise

    def _start(self, recipe: UltralyticsRecipe, strategies: list[dict[str, Any]], run_dir: Path, run_name: str,
               info: DataInfo, trainer_base: type) -> RunResult:
        """Write the run's records into the (new) ``run_dir`` and train."""
        from ...recipe import save_resolved

        data = _data_for_run(info, recipe.data, run_dir / "data")
        resolved = recipe.model_copy(update={
            "strategies": [dict(s) for s in strategies], "name": run_name, "compare": None, "lr_grid": None, "seeds": 1,
            "model": _abs_if_file(recipe.model), "data": _abs_if_file(recipe.data),
            "pretrained": recipe.pretrained and _abs_if_file(recipe.pretrained),
        })
        save_resolved(resolved, run_dir / "recipe.yaml")
        overrides = {
            **recipe.train_args(),
            "model": resolved.model, "data": data, "project": str(run_dir.parent),
            "name": run_dir.name, "exist_ok": True, "seed": recipe.seed, "task": self.ultralytics_task,
            "mode": "train",
        }
        if resolved.pretrained:  # Ultralytics' setup_model loads it into the yaml's model by name and shape
            overrides["pretrained"] = resolved.pretrained
        trainer_cls = trainer_base.configure(strategies, run_dir=run_dir, tensorboard=recipe.tensorboard,
                                                     run_name=run_name)
        trainer = trainer_cls(overrides=overrides)
        stamp = _stamp(run_dir / "metrics.json")
        _train(trainer)
        return self._result(run_dir, stamp)

    def resume(self, run_dir: Path, overrides: Sequence[str] = ()) -> RunResult:
        """Continue a killed run from its ``weights/last.pt`` (``visionpeft resume RUN_DIR``), in ``run_dir``.

        ``overrides`` (``key=value``) may change what Ultralytics lets a resume change (``ultralytics.device``,
        ``ultralytics.batch``, ``ultralytics.workers``...); others are ignored with Ultralytics' warning (the
        checkpoint's training arguments win). What defines the model (``model``, ``seed``, ``strategies``) cannot
        change. Everything is checked before anything in ``run_dir`` is written: the checkpoint is readable and
        unfinished, its strategies and classes are the run's, the base model file is still there.
        See ``docs/detection.md`` for what a resumed run reproduces exactly.
        """
        from .resume import check_resumable, read_checkpoint

        _refuse_torchrun()
        run_dir = Path(run_dir).resolve()
        _read_run_recipe(run_dir, self.task)
        for item in overrides:  # before re-validation: strategies.0.method=bitfit must not blame recipe.yaml
            key = item.partition("=")[0].strip()
            if key.split(".")[0] in FIXED_ON_RESUME:
                raise ConfigError(f"resume {run_dir}: {key.split('.')[0]} cannot change when resuming (what defines "
                                  "the model is the run's: the checkpoint holds its tensors). Start a new run with "
                                  "'visionpeft train'")
        saved, recipe = load_run_recipe(run_dir), load_run_recipe(run_dir, overrides)
        changed = [k for k in FIXED_ON_RESUME if getattr(saved, k) != getattr(recipe, k)]
        if changed:
            detail = ", ".join(f"{k}: {getattr(saved, k)!r} -> {getattr(recipe, k)!r}" for k in changed)
            raise ConfigError(f"resume {run_dir}: the run was trained with other settings than asked ({detail}); "
                              "what defines the model cannot change on resume. Start a new run with 'visionpeft "
                              "train'")
        check_device(recipe.train_args().get("device"), "ultralytics.device")
        last = run_dir / "weights" / "last.pt"
        if not last.is_file():
            raise ConfigError(f"{run_dir}: no weights/last.pt to resume from (the run stopped before its first "
                              "epoch ended); nothing was changed. Start it again with 'visionpeft train'")
        info = self._check_data(recipe.data, check_labels=False, check_images=recipe.check_labels,
                                skip_bad_images=recipe.dataset.skip_bad_images)
        trainer_base = self._trainer_class(recipe.model)
        model, ckpt = read_checkpoint(last)  # restricted unpickling: refused in one line if it holds code
        check_resumable(ckpt, model, recipe.strategies, info.names, f"resume {last}")
        del model, ckpt
        data = _data_for_run(info, recipe.data, run_dir / "data")
        args = {**recipe.train_args(), "resume": str(last), "data": data, "save_dir": str(run_dir),
                "project": str(run_dir.parent), "name": run_dir.name, "exist_ok": True,
                "task": self.ultralytics_task, "mode": "train"}
        trainer_cls = trainer_base.configure(recipe.strategies, run_dir=run_dir,
                                                     tensorboard=recipe.tensorboard, run_name=recipe.name)
        trainer = trainer_cls(overrides=args)
        stamp = _stamp(run_dir / "metrics.json")
        _train(trainer)
        return self._result(run_dir, stamp)

    @staticmethod
    def _result(run_dir: Path, stamp: int | None = None) -> RunResult:
        """The ``metrics.json`` the trainer wrote (on rank 0, also when training ran in DDP workers)."""
        path = run_dir / "metrics.json"
        if not path.is_file() or _stamp(path) == stamp:
            raise ConfigError(f"{run_dir}: training ended without writing metrics.json; see the log above")
        return RunResult.from_dict(json.loads(path.read_text()))

    def evaluate(self, run_dir: Path, split: str, save_examples: bool = False) -> dict[str, float]:
        """Validate the run's best model (adapters merged) on ``split`` exactly as training validated it.

        ``save_examples``: also write what the validator scored per image to ``<split>_images.npz``
        (:mod:`visionpeft.image_records`: every prediction's TP flags, confidence and class and every image's label
        classes for the mAP tasks; per-image confusion matrices for semantic; per-image values for depth and
        classify), so the compare report's bootstrap can recompute the primary metric on resampled images.

        The validator gets the settings the trainer's final validation used (rect batches of the same size,
        ``imgsz``, thresholds, precision; see :mod:`.validation`), so ``split="val"`` reproduces the metrics in
        ``metrics.json`` for the same weights.
        """
        from .per_image import ImageRecorder
        from .validation import evaluate_run

        run_dir = Path(run_dir)
        doc = _read_run_recipe(run_dir, self.task)
        check_device((doc.get("ultralytics") or {}).get("device"), "ultralytics.device (recorded in the run)")
        skip = bool((doc.get("dataset") or {}).get("skip_bad_images", False))
        info = self._check_data(doc["data"], check_labels=False, splits=(split,),
                                check_images=doc.get("check_labels", True), skip_bad_images=skip)
        data = _data_for_run(info, doc["data"], run_dir / f"eval-{split}" / "data")
        device = (doc.get("ultralytics") or {}).get("device")
        recorder = ImageRecorder(self.row) if save_examples else None
        metrics = evaluate_run(run_dir, data, split, device, recorder)
        write_json(run_dir / f"eval_{split}.json", metrics)
        if recorder is not None:
            recorder.save(run_dir, split, metrics.get(self.primary_metric))
        return metrics

    def has_split(self, recipe: Any, split: str) -> bool:
        """Whether the data names ``split``: a data yaml's ``test:`` (empty counts as absent), or a classify
        dataset folder's ``test/`` sub-folder."""
        data = Path(_with_local_files(recipe, self.ultralytics_task).data)  # coco8 -> its yaml, as train reads it
        if self.row.data_format == "folder":
            return (data / split).is_dir()
        doc = load_yaml_file(data, "data")
        return isinstance(doc, dict) and bool(doc.get(split))

    def val_curve(self, run_dir: Path) -> list[list[float]]:
        """``[[elapsed_seconds, primary metric], ...]`` per epoch from Ultralytics' ``results.csv`` (its ``time``
        column: wall seconds since training started, validation included)."""
        import csv

        column = self.row.primary_key
        path = Path(run_dir) / "results.csv"
        if not path.is_file():
            return []
        with path.open(newline="") as fh:
            rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(fh)]
        return [[float(r["time"]), float(r[column])] for r in rows if r.get("time") and r.get(column)]

    @property
    def image_suffixes(self) -> frozenset[str]:
        """What Ultralytics reads (its ``IMG_FORMATS``; also what the data checks list)."""
        from .images import image_suffixes

        return image_suffixes()

    def load_model(self, run_dir: Path) -> Any:
        """The run's adapted model (EMA weights of the best epoch, ``weights/best.pt``), eval mode."""
        from .merge import load_run_model

        return load_run_model(run_dir)

    def merge(self, run_dir: Path, out: Path) -> Path:
        """Write a plain Ultralytics checkpoint (LoRA folded in) that loads without visionpeft."""
        from .merge import merge_run

        return merge_run(run_dir, out)

