"""Segment / pose / OBB / detect models on a pretrained YOLOv5n backbone and neck (COCO), for transfer learning.

No pretrained segmentation or pose weights are available offline here; ``../shared/weights/yolov5nu-cocobackbone.pt``
holds COCO-pretrained YOLOv5n layers 0-23 (backbone + neck) with a random anchor-free Detect head. This module
builds Ultralytics' ``yolov5n.yaml`` graph with the task's head in place of ``Detect`` (same input layers
17/20/23, the heads' arguments as in Ultralytics' ``yolov8-seg``/``-pose``/``-obb`` yamls) and copies every tensor
of layers 0-23 from the source checkpoint, checking names and shapes; the head stays randomly initialised.

Command line (writes an Ultralytics checkpoint that a recipe's ``model:`` can name)::

    python -m visionpeft.backends.ultralytics_transfer segment ../shared/weights/yolov5nu-cocobackbone.pt \\
        -o weights/yolov5nu-seg-cocobackbone.pt
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError

__all__ = ["HEADS", "task_cfg", "copy_layers", "build_transfer_model", "write_transfer_checkpoint", "main"]

#: Ultralytics task -> (head module, its yaml arguments), as in Ultralytics' yolov8 task yamls.
HEADS: dict[str, tuple[str, list[Any]]] = {
    "detect": ("Detect", ["nc"]),
    "segment": ("Segment", ["nc", 32, 256]),
    "pose": ("Pose", ["nc", "kpt_shape"]),
    "obb": ("OBB", ["nc", 1]),
}


def task_cfg(task: str, base: str = "yolov5n.yaml", nc: int = 80,
             kpt_shape: tuple[int, int] = (17, 3)) -> dict[str, Any]:
    """The model yaml (as a dict) of ``base`` with ``task``'s head in place of its last layer.

    Args:
        task: ``detect``, ``segment``, ``pose`` or ``obb``.
        base: an Ultralytics detection yaml whose last layer is ``Detect`` (scaled names like ``yolov5n.yaml``).
        nc: classes of the new head (the trainer replaces it for a dataset with other classes).
        kpt_shape: pose only: keypoints x (2 or 3) values.
    """
    from ultralytics.nn.tasks import yaml_model_load

    if task not in HEADS:
        raise ConfigError(f"task {task!r}: expected one of {sorted(HEADS)}")
    cfg = copy.deepcopy(yaml_model_load(base))
    inputs, _, module, _ = cfg["head"][-1]
    if module != "Detect":
        raise ConfigError(f"{base}: its last layer is {module}, not Detect; give a detection yaml")
    head, args = HEADS[task]
    cfg["head"][-1] = [inputs, 1, head, list(args)]
    cfg["nc"] = int(nc)
    if task == "pose":
        cfg["kpt_shape"] = [int(kpt_shape[0]), int(kpt_shape[1])]
    suffix = {"detect": "", "segment": "-seg", "pose": "-pose", "obb": "-obb"}[task]
    cfg["yaml_file"] = f"{Path(base).stem}u{suffix}.yaml"  # yolov5nu-seg.yaml: an anchor-free YOLOv5n graph
    return cfg


def copy_layers(target: nn.Module, source: nn.Module, layers: range) -> list[str]:
    """Copy every tensor of ``model.<i>`` (``i`` in ``layers``) from ``source`` into ``target``; return the names.

    Raises:
        ConfigError: a tensor of those layers missing in either model, or of another shape.
    """
    src, dst = source.state_dict(), target.state_dict()
    prefixes = tuple(f"model.{i}." for i in layers)
    names = sorted(k for k in src if k.startswith(prefixes))
    missing = sorted(set(k for k in dst if k.startswith(prefixes)) ^ set(names))
    if missing:
        raise ConfigError(f"layers {layers.start}-{layers.stop - 1}: tensors {missing[:4]} exist in only one of the "
                          "two models; the backbone and neck must have the same structure")
    wrong = [k for k in names if src[k].shape != dst[k].shape]
    if wrong:
        raise ConfigError(f"layers {layers.start}-{layers.stop - 1}: {wrong[0]} has shape {tuple(src[wrong[0]].shape)} "
                          f"in the source, {tuple(dst[wrong[0]].shape)} in the new model")
    target.load_state_dict({k: src[k].to(dst[k].dtype) for k in names}, strict=False)
    return names


def build_transfer_model(task: str, source: str | Path, nc: int = 80, kpt_shape: tuple[int, int] = (17, 3),
                         base: str = "yolov5n.yaml") -> nn.Module:
    """A ``task`` model on ``base``'s graph with layers ``0 .. len-2`` (backbone + neck) copied from ``source``."""
    from .ultralytics import build_model, model_from_cfg

    weights = build_model(source)
    cfg = task_cfg(task, base, nc, kpt_shape)
    model = model_from_cfg(cfg, nc=nc)
    n_body = len(model.model) - 1
    if len(weights.model) != len(model.model):
        raise ConfigError(f"{source}: {len(weights.model)} layers, {base} has {len(model.model)}; give a checkpoint "
                          f"of the {base} graph (such as yolov5nu-cocobackbone.pt)")
    copy_layers(model, weights, range(n_body))
    model.args = {**dict(getattr(weights, "args", None) or {}), "task": task}
    return model.float().eval()


def write_transfer_checkpoint(task: str, source: str | Path, out: str | Path, nc: int = 80,
                              kpt_shape: tuple[int, int] = (17, 3), base: str = "yolov5n.yaml") -> Path:
    """:func:`build_transfer_model`, saved as a plain Ultralytics checkpoint (``YOLO(out)`` loads it)."""
    from ..tasks.detection.merge import save_plain_checkpoint

    model = build_transfer_model(task, source, nc, kpt_shape, base)
    n_body = len(model.model) - 1
    return save_plain_checkpoint(model, out, {"transferred_from": str(source), "layers": f"0-{n_body - 1}",
                                              "task": task})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m visionpeft.backends.ultralytics_transfer TASK SOURCE -o OUT``."""
    p = argparse.ArgumentParser(prog="python -m visionpeft.backends.ultralytics_transfer",
                                description="a task model on a pretrained YOLOv5n backbone + neck")
    p.add_argument("task", choices=sorted(HEADS))
    p.add_argument("source", help="checkpoint of the yolov5n graph, e.g. ../shared/weights/yolov5nu-cocobackbone.pt")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--nc", type=int, default=80)
    p.add_argument("--kpt-shape", type=int, nargs=2, default=(17, 3), metavar=("KEYPOINTS", "DIMS"))
    args = p.parse_args(argv)
    try:
        out = write_transfer_checkpoint(args.task, args.source, args.output, args.nc, tuple(args.kpt_shape))
    except ConfigError as exc:
        print(f"visionpeft: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
