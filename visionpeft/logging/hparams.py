"""TensorBoard HParams for every task: one hyper-parameter vocabulary, the metrics, the experiment summary.

TensorBoard's HParams tab builds its table from three summaries (``tensorboard.plugins.hparams``):

* a *session start* per run: the run's hyper-parameter values (written when training starts, so a compare
  in progress is already in the table);
* a *session end* per run: its status;
* one *experiment* per log directory: every hyper-parameter with a display name, a description and whether
  its value **differs** between the runs, and the metrics (a scalar tag each, with a display name).
  TensorBoard lists the differing hyper-parameters first and ticks the first five columns, so in a compare
  the run's ``strategy``, ``methods``, ``trainable params`` and ``trainable %`` come first. ``compare``
  writes it at the compare directory's root, ``train`` in its run directory; a log directory without one
  falls back to TensorBoard's own guess from the session starts.

Values follow one vocabulary for classification and detection (:data:`HPARAMS`). Metric columns read the
``result/<name>`` scalars, the kept model's final evaluation (fractions in 0-1), and two ``perf/`` scalars.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["HParam", "Metric", "HPARAMS", "task_metrics", "check_hparams", "session_start_summary",
           "session_end_summary", "experiment_summary"]


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter column: ``name`` (the key runs record), ``display`` (the column title)."""

    name: str
    display: str
    kind: type
    description: str
    #: Follows from other columns (adapters add parameters): declared as not differing, so TensorBoard's five
    #: default columns (differing ones first, then by name) stay strategy, methods, trainable count and %, lr.
    derived: bool = False


@dataclass(frozen=True)
class Metric:
    """One metric column: the scalar ``tag`` whose last value is shown, ``display`` (the column title)."""

    tag: str
    display: str
    description: str
    training: bool = False  # a training-set measurement (throughput, memory) rather than a validation score


#: The hyper-parameters every run records, in this order (same names for every task).
HPARAMS: tuple[HParam, ...] = (
    HParam("strategy", "strategy", str, "run name in the compare (full, linear_probe, lora, ...)"),
    HParam("methods", "methods", str, "the strategies with their settings, e.g. 'freeze 10 blocks + lora r8 + head'"),
    HParam("trainable_params", "trainable params", int, "trainable parameter elements (a count)"),
    HParam("trainable_pct", "trainable %", float, "trainable / total parameter elements, in percent (0-100)"),
    HParam("total_params", "total params", int, "parameter elements of the adapted model (a count)", derived=True),
    HParam("model", "model", str, "base model (timm name or Ultralytics weights file)"),
    HParam("epochs", "epochs", int, "training epochs"),
    HParam("batch_size", "batch size", int, "training images per batch (per process)"),
    HParam("lr", "lr", float, "base learning rate (adapters, biases, the backbone)"),
    HParam("head_lr", "head lr", float, "learning rate of the classifier head"),
    HParam("optimizer", "optimizer", str, "optimizer name"),
    HParam("img_size", "image size (px)", int, "training image side in pixels"),
    HParam("seed", "seed", int, "random seed"),
)

_BY_NAME = {h.name: h for h in HPARAMS}

_PERF = (
    Metric("perf/peak_mem_mb", "peak memory (MiB)", "peak training memory, MiB", training=True),
    Metric("perf/img_per_s", "train images/s", "training throughput at the end (classification: last epoch; "
           "detection: whole run), images per second", training=True),
)

#: The timm classification task's metric columns, the primary metric first (TensorBoard ticks the first five).
_CLASSIFICATION: tuple[Metric, ...] = (
    Metric("result/top1", "top-1", "validation top-1 accuracy of the kept (best-epoch) model, fraction 0-1"),
    Metric("result/top5", "top-5", "validation top-5 accuracy of the kept model, fraction 0-1"),
    Metric("result/loss", "val loss", "validation cross-entropy of the kept model"),
    *_PERF,
    Metric("result/mean_class_acc", "mean class acc", "mean per-class accuracy of the kept model, 0-1"),
)

#: Engines with their own loop (not Ultralytics tasks) -> their metric columns.
_LOOPS: dict[str, tuple[Metric, ...]] = {"classification": _CLASSIFICATION}


def task_metrics(task: str) -> tuple[Metric, ...]:
    """The metric columns of ``task`` (an engine name of :mod:`visionpeft.engines`), the primary metric first.

    An Ultralytics task's columns are its row's ``hparams_order`` (:data:`visionpeft.ultralytics_tasks.TASKS`),
    with the peak memory and throughput columns after the third; ``ValueError`` for an unknown task.
    """
    from .. import ultralytics_tasks

    if task in _LOOPS:
        return _LOOPS[task]
    name = ultralytics_tasks.canonical(task)
    if name not in ultralytics_tasks.TASKS:
        raise ValueError(f"no TensorBoard metrics for task {task!r}; known: "
                         f"{sorted([*_LOOPS, *ultralytics_tasks.TASKS])}")
    own = [Metric(f"result/{m.name}", m.label, m.description)
           for m in ultralytics_tasks.TASKS[name].hparams_metrics()]
    return (*own[:3], *_PERF, *own[3:])


def check_hparams(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` restricted to plain types, in :data:`HPARAMS` order; unknown names raise ``ValueError``.

    Numbers stay numbers, whole ones included (counts, sizes, epochs, seed): as text, parallel coordinates and
    the scatter plots would order ``trainable params`` as strings (``12,810`` between ``103,946`` and
    ``2,683,050``); TensorBoard's table prints them with five significant digits (``2.6830e+6``), and the
    exact counts are in ``report.md``. ``None`` values are dropped.
    """
    unknown = sorted(set(values) - set(_BY_NAME))
    if unknown:
        raise ValueError(f"hparams {unknown} are not in visionpeft's vocabulary {sorted(_BY_NAME)}")
    out: dict[str, Any] = {}
    for h in HPARAMS:
        value = values.get(h.name)
        if value is None:
            continue
        if h.kind is str:
            out[h.name] = str(value)
        elif h.kind is int:
            out[h.name] = int(value)
        else:
            out[h.name] = float(value)
    return out


def _summary(tag: str, plugin_data: Any) -> Any:
    """A ``Summary`` protobuf carrying HParams plugin data (as ``tensorboard.plugins.hparams`` builds it,
    without TensorFlow)."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata

    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(plugin_data), tensor=metadata.NULL_TENSOR)
    return summary


def session_start_summary(values: Mapping[str, Any], start_time_secs: float | None = None) -> Any:
    """The ``_hparams_/session_start_info`` summary of one run (a ``Summary`` protobuf)."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time() if start_time_secs is None
                                            else start_time_secs)
    for name, value in check_hparams(values).items():
        if isinstance(value, str):
            info.hparams[name].string_value = value
        else:
            info.hparams[name].number_value = value
    return _summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=info))


def session_end_summary(ok: bool = True, end_time_secs: float | None = None) -> Any:
    """The ``_hparams_/session_end_info`` summary: ``STATUS_SUCCESS`` or ``STATUS_FAILURE``."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionEndInfo(
        status=api_pb2.Status.STATUS_SUCCESS if ok else api_pb2.Status.STATUS_FAILURE,
        end_time_secs=time.time() if end_time_secs is None else end_time_secs)
    return _summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=info))


def experiment_summary(task: str, sessions: Sequence[Mapping[str, Any]], description: str = "") -> Any:
    """The ``_hparams_/experiment`` summary for the runs whose hyper-parameters are ``sessions``.

    Every hyper-parameter that some run recorded is declared with its display name, its type and
    ``differs`` (whether the runs' values are not all equal; always false for a derived column such as
    ``total_params``); the metrics are :func:`task_metrics`.
    """
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    checked = [check_hparams(s) for s in sessions]
    types = {str: api_pb2.DATA_TYPE_STRING, int: api_pb2.DATA_TYPE_FLOAT64, float: api_pb2.DATA_TYPE_FLOAT64}
    infos = []
    for h in HPARAMS:
        values = [s[h.name] for s in checked if h.name in s]
        if not values:
            continue
        info = api_pb2.HParamInfo(name=h.name, display_name=h.display, description=h.description,
                                  type=types[h.kind], differs=not h.derived and len(set(values)) > 1)
        if h.kind is str:
            info.domain_discrete.extend(sorted(set(values)))
        else:  # a numeric axis from the smallest to the largest value
            info.domain_interval.min_value, info.domain_interval.max_value = min(values), max(values)
        infos.append(info)
    metrics = [api_pb2.MetricInfo(
        name=api_pb2.MetricName(tag=m.tag), display_name=m.display, description=m.description,
        dataset_type=api_pb2.DATASET_TRAINING if m.training else api_pb2.DATASET_VALIDATION)
        for m in task_metrics(task)]
    experiment = api_pb2.Experiment(description=description, time_created_secs=time.time(), hparam_infos=infos,
                                    metric_infos=metrics)
    return _summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))
