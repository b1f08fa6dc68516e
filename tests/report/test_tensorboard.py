"""RunLogger: values read back with TensorBoard's own event reader."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from visionpeft.logging import RunLogger


class FakePlan:
    trainable_count = 1234
    total = 10000

    def summary(self) -> str:
        return "strategies: lora -> head"


def test_scalars_text_plan_hparams(tmp_path):
    log = RunLogger(tmp_path / "tb")
    log.scalars({"train/loss": 2.5, "lr/head": 0.01}, step=3)
    log.scalar("val/top1", 0.75, 1)
    log.plan(FakePlan())
    log.hparams({"strategy": "lora", "lr": 1e-3, "rank": 8}, {"top1": 0.75})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"train/loss", "lr/head", "val/top1", "params/trainable", "hparam/top1"} <= set(scalars)
    assert acc.Scalars("train/loss")[0].value == pytest.approx(2.5) and acc.Scalars("train/loss")[0].step == 3
    assert acc.Scalars("params/trainable")[0].value == 1234
    texts = acc.Tensors("plan/text_summary")
    assert b"lora -> head" in texts[0].tensor_proto.string_val[0]
    plugin = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugin and "_hparams_/session_start_info" in plugin
    assert b"lora" in plugin["_hparams_/session_start_info"]


def test_disabled_logger_writes_nothing(tmp_path):
    log = RunLogger(tmp_path / "tb", enabled=False)
    log.scalar("x", 1.0, 0)
    log.close()
    assert not (tmp_path / "tb").exists()
