"""The one table of Ultralytics tasks: one :class:`UltralyticsTask` row per task visionpeft trains.

Ultralytics keeps each task in one row of ``Model.task_map`` (model, trainer, validator, predictor classes);
this table adds, per task, what visionpeft needs around them, under Ultralytics' own task name (``detect``,
``segment``, ``pose``, ``obb``, ``classify``): its metrics (visionpeft's name, Ultralytics' ``results.csv`` /
validator key, TensorBoard label), its label rule, how its data is given (a data yaml or a folder), the data-yaml
keys its model is built with, its LoRA head exclusions and whether predictions draw images. Ultralytics' classes
are not repeated here: :func:`visionpeft.backends.ultralytics.task_classes` reads them from ``task_map``.

Everything reads this table: the engine registry (:mod:`visionpeft.engines`: one engine per row, so the recipe
loader, the CLI and ``compare`` know the task), the backend (model class -> task, head exclusions), the runner and
trainer (:mod:`visionpeft.tasks.ultralytics`: Ultralytics' trainer class of the task, metrics, label rule,
data) and TensorBoard's HParams columns (:mod:`visionpeft.logging.hparams`). Adding an Ultralytics task is one
row below (plus, if its labels are neither boxes, polygons, keypoints nor corners, a rule in
``visionpeft/tasks/ultralytics/labels.py``); see ``docs/architecture.md``.

A leaf module: it imports nothing from visionpeft but :mod:`visionpeft.errors`, and neither torch nor
Ultralytics, so every layer may read it (functions are named as ``"module:attribute"`` strings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError, closest

__all__ = ["Metric", "UltralyticsTask", "TASKS", "ALIASES", "get", "canonical", "task_of_classes"]


@dataclass(frozen=True)
class Metric:
    """One metric of a task.

    Attributes:
        name: visionpeft's name (``metrics.json``, ``val/<name>`` and ``result/<name>`` TensorBoard tags).
        key: Ultralytics' key for it (the validator's results dict and the ``results.csv`` column).
        label: its TensorBoard HParams column title.
        description: what it is, one line (TensorBoard's column description).
    """

    name: str
    key: str
    label: str
    description: str


def _box(kind: str, prefix: str, label: str, what: str) -> tuple[Metric, ...]:
    """The four metrics Ultralytics reports per kind ``B`` (boxes), ``M`` (masks), ``P`` (keypoints), named with
    ``prefix`` (``mask_map50``), labelled with ``label`` (``mask mAP50``)."""
    return tuple(Metric(prefix + name, f"metrics/{key}({kind})", label + key, f"{what} {desc} of the kept model, 0-1")
                 for name, key, desc in (("map50", "mAP50", "mAP at IoU 0.50"),
                                         ("map50_95", "mAP50-95", "mAP at IoU 0.50:0.95"),
                                         ("precision", "precision", "precision"), ("recall", "recall", "recall")))


@dataclass(frozen=True)
class UltralyticsTask:
    """One Ultralytics task: everything visionpeft knows about it beyond Ultralytics' ``task_map``.

    Attributes:
        name: Ultralytics' task name (``task_map`` key, the recipe's ``task``).
        model_class: the Ultralytics model class of the task (a model's task is read from its class).
        primary: visionpeft's name of the metric that ranks runs (``compare``, the learning-rate choice).
        metrics: every metric, in report order (box metrics first where a task has them).
        hparams_order: the metric names shown as TensorBoard HParams columns, in column order (the first is the
            primary; the run's peak memory and throughput columns come after the third).
        data_format: ``yaml`` (an Ultralytics data yaml with YOLO label files) or ``folder`` (train/val class
            folders, as Ultralytics' classification trainer reads them).
        label_rule: ``"module:callable"`` building the task's :class:`~visionpeft.tasks.ultralytics.labels.LabelRule`
            from ``(data yaml mapping, its path)``; ``None`` for folder data (the folder is the label).
        model_data_keys: data-yaml key -> keyword of the Ultralytics model class that the task trainer's
            ``get_model`` passes (pose: ``kpt_shape`` -> ``data_kpt_shape``).
        head_exclude: LoRA exclusions in the head (regexes; ``{last}`` is the head's layer index): layers the
            dataset re-initialises (Detect's bare prediction convs), which a low-rank update cannot help.
        draws: predictions are drawn on the images (``Results.save``); classify prints only.
        predictions: ``"module:callable"`` turning one Ultralytics ``Results`` into the image's prediction rows
            (``visionpeft predict``'s JSON); ``None``: Ultralytics' own ``Results.summary()``.
        summary: what the task prints in the run summary, one line.
    """

    name: str
    model_class: str
    primary: str
    metrics: tuple[Metric, ...]
    hparams_order: tuple[str, ...]
    data_format: Literal["yaml", "folder"] = "yaml"
    label_rule: str | None = "visionpeft.tasks.ultralytics.labels:BoxRule"
    model_data_keys: tuple[tuple[str, str], ...] = ()
    head_exclude: tuple[str, ...] = (r"re:model\.{last}\.(?:one2one_)?cv[234]\.\d+\.2(?:\..*)?",)
    draws: bool = True
    predictions: str | None = None
    summary: str = ""

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    @property
    def primary_key(self) -> str:
        """Ultralytics' key (``results.csv`` column) of the primary metric."""
        return next(m.key for m in self.metrics if m.name == self.primary)

    def hparams_metrics(self) -> tuple[Metric, ...]:
        """The HParams columns, in order (see ``hparams_order``)."""
        by_name = {m.name: m for m in self.metrics}
        return tuple(by_name[n] for n in self.hparams_order)

    def from_ultralytics(self, results: dict[str, object] | None) -> dict[str, float]:
        """visionpeft's metric names from Ultralytics' results dict (keys it lacks are left out)."""
        results = results or {}
        return {m.name: float(results[m.key]) for m in self.metrics if m.key in results}  # type: ignore[arg-type]


_BOXES = _box("B", "", "", "box")
_DENSE = "visionpeft.tasks.ultralytics.dense"

#: Ultralytics task -> its row. The order is the documentation's; a model's task is found by class, not order.
TASKS: dict[str, UltralyticsTask] = {
    "detect": UltralyticsTask(
        "detect", "DetectionModel", "map50_95", _BOXES, ("map50_95", "map50", "precision", "recall"),
        summary="boxes (YOLO, RT-DETR)"),
    "segment": UltralyticsTask(
        "segment", "SegmentationModel", "mask_map50_95",
        (*_box("B", "", "box ", "box"), *_box("M", "mask_", "mask ", "mask")),
        ("mask_map50_95", "mask_map50", "map50_95"), summary="instance masks (polygon labels)"),
    "pose": UltralyticsTask(
        "pose", "PoseModel", "pose_map50_95",
        (*_box("B", "", "box ", "box"), *_box("P", "pose_", "pose ", "keypoint (OKS)")),
        ("pose_map50_95", "pose_map50", "map50_95"), label_rule="visionpeft.tasks.ultralytics.labels:PoseRule",
        model_data_keys=(("kpt_shape", "data_kpt_shape"),), summary="keypoints (kpt_shape in the data yaml)"),
    "obb": UltralyticsTask(
        "obb", "OBBModel", "map50_95", _box("B", "", "OBB ", "oriented-box"), ("map50_95", "map50"),
        label_rule="visionpeft.tasks.ultralytics.labels:OBBRule", summary="oriented boxes (4-corner labels)"),
    "classify": UltralyticsTask(
        "classify", "ClassificationModel", "top1",
        (Metric("top1", "metrics/accuracy_top1", "top-1", "validation top-1 accuracy of the kept (best) model, "
                "fraction 0-1"),
         Metric("top5", "metrics/accuracy_top5", "top-5", "validation top-5 accuracy of the kept model, fraction 0-1")),
        ("top1", "top5"), data_format="folder", label_rule=None, draws=False,
        summary="image classes (a dataset folder)"),
    # Ultralytics 8.4.190's dense tasks (YOLO26-sem / YOLO26-depth); their rules: visionpeft.tasks.ultralytics.dense.
    "semantic": UltralyticsTask(
        "semantic", "SemanticSegmentationModel", "miou",
        (Metric("miou", "metrics/mIoU", "mIoU", "validation mean IoU of the kept model over the classes present in "
                "the masks (binary data: the foreground IoU), 0-1"),
         Metric("pixel_acc", "metrics/pixel_acc", "pixel accuracy", "fraction of labelled validation pixels the kept "
                "model classifies right, 0-1")),
        ("miou", "pixel_acc"), label_rule=f"{_DENSE}:SemanticRule",
        # The SemanticSegment head's bare 1x1 convs to nc (main and auxiliary classifier) are new per dataset.
        head_exclude=(r"re:model\.{last}\.(?:classifier|aux_head)\.1(?:\..*)?",),
        summary="per-pixel classes (mask PNGs with masks_dir, else polygon labels + background)"),
    "depth": UltralyticsTask(
        "depth", "DepthModel", "delta1",
        (Metric("delta1", "metrics/delta1", "delta1", "fraction of valid pixels whose depth is within 1.25x of the "
                "truth (each image median-scaled, mean over images) for the kept model, 0-1"),
         Metric("delta2", "metrics/delta2", "delta2", "as delta1 within 1.25^2, 0-1"),
         Metric("delta3", "metrics/delta3", "delta3", "as delta1 within 1.25^3, 0-1"),
         Metric("abs_rel", "metrics/abs_rel", "AbsRel", "mean |predicted - true| / true depth (lower is better)"),
         Metric("rmse", "metrics/rmse", "RMSE (m)", "root mean squared depth error in metres (lower is better)"),
         Metric("silog", "metrics/silog", "SILog", "scale-invariant log error x100 (lower is better)")),
        ("delta1", "abs_rel", "rmse", "silog"), label_rule=f"{_DENSE}:DepthRule",
        # The Depth head's last conv predicts one channel (log-depth): no low-rank update to make.
        head_exclude=(r"re:model\.{last}\.head\.3(?:\..*)?",), predictions=f"{_DENSE}:depth_predictions",
        summary="per-pixel depth in metres (16-bit depth PNGs with depth_scale)"),
}

#: Former recipe task names -> Ultralytics' name (recipes and run directories written before the table).
ALIASES: dict[str, str] = {"detection": "detect"}


def canonical(task: str) -> str:
    """Ultralytics' name for a recipe's ``task`` (``detection`` -> ``detect``); other names unchanged."""
    return ALIASES.get(task, task)


def get(task: str) -> UltralyticsTask:
    """The row of Ultralytics task ``task`` (former names accepted); ``ConfigError`` naming the known ones."""
    row = TASKS.get(canonical(str(task)))
    if row is None:
        hint = closest(str(task), TASKS, n=1)
        raise ConfigError(f"task {task!r}: not an Ultralytics task visionpeft trains; available: {sorted(TASKS)}"
                          + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return row


def task_of_classes(class_names: list[str]) -> str | None:
    """The task of a model whose class and base classes are ``class_names`` (its MRO, most specific first):
    the first class that is a row's ``model_class`` (``RTDETRDetectionModel`` -> its base ``DetectionModel``)."""
    by_class = {row.model_class: row.name for row in TASKS.values()}
    return next((by_class[c] for c in class_names if c in by_class), None)
