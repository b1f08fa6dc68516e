"""Helpers for the detection tests: datasets copied to tmp (Ultralytics writes label caches beside them)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

#: One entry per method (small ranks), as the strategy tests of Ultralytics task models apply them.
EVERY_METHOD: list[dict[str, Any]] = [
    {"method": "lora", "rank": 4},
    {"method": "dora", "rank": 4},
    {"method": "loha", "rank": 2},
    {"method": "lokr", "rank": 4},
    {"method": "ssf"},
    {"method": "bitfit"},
    {"method": "norm"},
    {"method": "head"},
    {"method": "freeze", "n": 10},
]

#: Start of a script run with ``python -c`` in which visionpeft cannot be imported: what it checks is plain
#: Ultralytics (a merged checkpoint must load without visionpeft).
NO_VISIONPEFT = """
import sys
class Block:  # visionpeft must not be importable: the file is plain Ultralytics
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "visionpeft":
            raise ImportError("visionpeft is blocked")
sys.meta_path.insert(0, Block())
"""


def copy_dataset(shared: Path, name: str, dest: Path) -> Path:
    """Copy ``shared/data/<name>`` under ``dest`` and return the copy's ``data.yaml``."""
    target = dest / name
    if not target.exists():
        shutil.copytree(shared / "data" / name, target)
    return target / "data.yaml"


def offline_args(project: Path, **overrides: Any) -> dict[str, Any]:
    """Ultralytics arguments for quick, quiet, offline CPU runs.

    ``nbs`` = ``batch`` and no warmup make every batch an optimizer step at full learning rate (Ultralytics
    otherwise accumulates 64 images and warms up from lr 0, so a 4-image run would never update).
    """
    args = dict(epochs=1, imgsz=64, batch=2, nbs=2, warmup_epochs=0, workers=0, device="cpu", amp=False,
                plots=False, project=str(project), exist_ok=True, verbose=False, seed=0, deterministic=True)
    args.update(overrides)
    return args


def make_dataset(root: Path, labels: dict[str, list[str]], names: list[str], yaml_extra: str = "") -> Path:
    """A tiny YOLO dataset: one 32x32 image per entry of ``labels`` ('split/stem' -> label lines)."""
    for key, lines in labels.items():
        split, stem = key.split("/")
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (128, 64, 32)).save(root / "images" / split / f"{stem}.jpg")
        (root / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text(f"train: images/train\nval: images/val\nnames: {names}\n{yaml_extra}")
    return data


def killed_after_first_epoch(monkeypatch) -> Any:
    """Make every Ultralytics run started from here raise ``KeyboardInterrupt`` (as Ctrl-C) right after its first
    epoch's checkpoint; returns the original ``make_callbacks`` so the test can restore it before resuming."""
    import visionpeft.tasks.ultralytics.trainer as trainer_mod

    original = trainer_mod.make_callbacks

    def killing():
        callbacks = dict(original())
        fit_end = callbacks["on_fit_epoch_end"]

        def on_fit_epoch_end(tr):
            fit_end(tr)
            if int(tr.epoch) == 0 and not getattr(tr, "vp_final_eval", False):
                raise KeyboardInterrupt
        callbacks["on_fit_epoch_end"] = on_fit_epoch_end
        return callbacks

    monkeypatch.setattr(trainer_mod, "make_callbacks", killing)
    return original


class _SetupDone(Exception):
    """Raised from a callback to end a plain Ultralytics run once its setup is done."""


def _snapshot(model: Any) -> dict[str, Any]:
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "trainable": {n for n, p in model.named_parameters() if p.requires_grad}}


def ultralytics_setup(model: str, project: Path, **args: Any) -> dict[str, Any]:
    """Plain Ultralytics' model right before its first step: ``{"state": state dict copy, "trainable": names}``.

    ``YOLO(model).train(...)`` is stopped by an ``on_pretrain_routine_end`` callback, i.e. after ``_setup_train``
    built the model (``pretrained`` transferred), applied ``freeze`` and built the optimizer.
    """
    from ultralytics import YOLO

    seen: dict[str, Any] = {}

    def capture(trainer: Any) -> None:
        seen.update(_snapshot(trainer.model))
        raise _SetupDone

    yolo = YOLO(model)
    yolo.add_callback("on_pretrain_routine_end", capture)
    with contextlib.suppress(_SetupDone):
        yolo.train(**offline_args(project, **args))
    return seen


def capture_setup(monkeypatch: Any) -> dict[str, Any]:
    """Every visionpeft Ultralytics run started from here records its adapted model right before its first step
    (same point as :func:`ultralytics_setup`) into the returned dict."""
    import visionpeft.tasks.ultralytics.trainer as trainer_mod

    original, seen = trainer_mod.make_callbacks, {}

    def recording() -> dict[str, Any]:
        callbacks = dict(original())
        after = callbacks.get("on_pretrain_routine_end")

        def on_pretrain_routine_end(tr: Any) -> None:
            if after is not None:
                after(tr)
            seen.update(_snapshot(tr.vp_model()))
        callbacks["on_pretrain_routine_end"] = on_pretrain_routine_end
        return callbacks

    monkeypatch.setattr(trainer_mod, "make_callbacks", recording)
    return seen


def records_reproduce_the_primary_metric(task: str, run_dir) -> tuple[float, float, int]:
    """Evaluate ``run_dir`` on ``val`` saving per-image records; return (the primary metric recomputed from the
    records over every image once, the validator's value, the number of images recorded)."""
    import numpy as np

    from visionpeft.image_records import read_records
    from visionpeft.report.image_statistics import statistic
    from visionpeft.tasks import get_task

    runner = get_task(task)
    metrics = runner.evaluate(run_dir, "val", save_examples=True)
    rec = read_records(run_dir, "val")
    assert rec is not None and rec.metric == runner.primary_metric, rec
    return float(statistic(rec)(np.ones((1, len(rec.files))))[0]), metrics[runner.primary_metric], len(rec.files)
