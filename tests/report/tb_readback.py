"""Read a log directory back the way TensorBoard's own server does (its multiplexer and HParams backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def hparams_view(logdir: Path) -> tuple[Any, dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """``(experiment, {session: {metric tag: value}}, {session: {hparam: value}})`` as the HParams tab gets them.

    The experiment is what TensorBoard's backend returns to the browser (hparams sorted, differing first).
    """
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    ctx = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), multiplexer=mux,
                                                        data_provider=provider))
    req = context.RequestContext()
    experiment = ctx.experiment_from_metadata(req, "", True, ctx.hparams_metadata(req, ""),
                                              ctx.hparams_from_data_provider(req, "", None))
    statuses = [api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING]
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, include_metrics=True,
                                               allowed_statuses=statuses)
    groups = list_session_groups.Handler(req, ctx, "", request).run().session_groups
    metrics, values = {}, {}
    for group in groups:
        metrics[group.name] = {m.name.tag: m.value for m in group.metric_values}
        values[group.name] = {k: (v.string_value if v.HasField("string_value") else v.number_value)
                              for k, v in group.hparams.items()}
    return experiment, metrics, values


def tensorboard_runs(logdir: Path) -> list[str]:
    """The run names TensorBoard lists for ``logdir`` (every folder holding an events file; ``.`` for the root)."""
    from tensorboard.backend.event_processing import plugin_event_multiplexer

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    return list(mux.Runs())
