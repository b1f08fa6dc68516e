"""What code and files written before the task table refer to keeps resolving: the trainer's former import path
(shown in earlier docs for training from Python) and checkpoints that pickle the adapted state under its former
module (``visionpeft.api.AdaptedState``)."""

from __future__ import annotations

import io

import pytest
import torch

from visionpeft.spec import ModelSpec
from visionpeft.state import AdaptedState


def test_former_trainer_path_gives_the_table_made_classes():
    pytest.importorskip("ultralytics")
    from visionpeft.tasks.detection.trainer import PeftDetectionTrainer, PeftRTDETRTrainer
    from visionpeft.tasks.ultralytics.trainer import TRAINERS, trainer_for

    assert PeftDetectionTrainer is TRAINERS["detect", False] is trainer_for("detection")
    assert PeftRTDETRTrainer is trainer_for("detect", rtdetr=True)
    assert PeftDetectionTrainer.__module__ == "visionpeft.tasks.ultralytics.trainer"  # DDP imports it by name


def test_a_state_pickled_under_visionpeft_api_loads_through_the_restricted_unpickler():
    pytest.importorskip("ultralytics")
    from visionpeft.backends.safe_load import visionpeft_globals

    state = AdaptedState(configs=[], spec=ModelSpec(name="old", blocks=("b0",)), plan=None)  # type: ignore[arg-type]
    buf = io.BytesIO()
    torch.save({"state": state}, buf, _use_new_zipfile_serialization=False, pickle_protocol=2)
    old = buf.getvalue().replace(b"visionpeft.state\nAdaptedState\n", b"visionpeft.api\nAdaptedState\n")
    assert b"visionpeft.api\nAdaptedState" in old and b"visionpeft.state\nAdaptedState" not in old
    torch.serialization.add_safe_globals(visionpeft_globals())
    loaded = torch.load(io.BytesIO(old), weights_only=True)["state"]
    assert isinstance(loaded, AdaptedState) and loaded.spec == state.spec
