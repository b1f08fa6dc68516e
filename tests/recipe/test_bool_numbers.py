"""A YAML boolean where a number belongs is refused, naming the field (issue 23: nothing mistyped gets through).

pydantic's lax mode turned ``True`` into 1: ``optim.lr=true`` trained at rate 1.0, ``train.epochs=yes`` for one
epoch, ``{method: lora, rank: true}`` at rank 1, ``{method: freeze, n: true}`` froze one block, silently. Fields
that are not numbers keep taking booleans (``tensorboard: off``, a run ``name: true``), and ``amp: off`` (YAML
1.1 reads it as false) means ``off``.
"""

from __future__ import annotations

import pytest

import visionpeft
from visionpeft.errors import ConfigError
from visionpeft.recipe import load_recipe

from ..fixtures import tiny_cnn

BASE = ["strategies=[{method: lora, rank: 2}, {method: head}]", "compare={lora: [{method: lora}]}"]
REFUSED = [("optim.lr=true", "optim", "lr"), ("train.epochs=yes", "train", "epochs"),
           ("train.batch_size=on", "train", "batch_size"), ("train.label_smoothing=false", "train", "label_smoothing"),
           ("seed=true", None, "seed"), ("train.device=true", "train", "device"),
           ("strategies.0.rank=true", "strategies.0", "rank"), ("strategies.1.lr=yes", "strategies.1", "lr")]


@pytest.mark.parametrize(("override", "section", "field"), REFUSED, ids=[r[0] for r in REFUSED])
def test_a_boolean_for_a_number_is_refused(override: str, section: str | None, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe("recipes/quickstart.yaml", [*BASE, override])
    msg = str(info.value)
    where = f"{section}: {field}:" if section else f"{field}:"
    assert where in msg and "a boolean" in msg and "\n" not in msg, msg


def test_python_api_refuses_a_boolean_rank_or_freeze_count() -> None:
    for entry, field in (({"method": "lora", "rank": True}, "rank"), ({"method": "freeze", "n": True}, "n"),
                         ({"method": "lora", "alpha": False}, "alpha")):
        with pytest.raises(ConfigError, match=rf"strategies\.0: {field}: expected a number, got "):
            visionpeft.apply(tiny_cnn(seed=0), [entry])


def test_booleans_stay_where_they_belong() -> None:
    r = load_recipe("recipes/quickstart.yaml", [*BASE, "tensorboard=off", "name=true", "train.amp=off"])
    assert r.tensorboard is False and r.name == "true" and r.train.amp == "off"
    assert load_recipe("recipes/quickstart.yaml", [*BASE, "train.amp=bf16"]).train.amp == "bf16"


def test_ultralytics_numbers_refuse_booleans() -> None:
    """Ultralytics' check_cfg takes True for an int / float key (epochs: yes -> 1 epoch, lr0: true -> 1.0);
    augmentation probabilities keep their on/off reading (mosaic: false is 0.0), boolean keys stay booleans."""
    pytest.importorskip("ultralytics")
    for override, key in (("ultralytics.epochs=yes", "epochs"), ("ultralytics.lr0=true", "lr0"),
                          ("ultralytics.batch=on", "batch"), ("ultralytics.patience=false", "patience")):
        with pytest.raises(ConfigError, match=rf"ultralytics\.{key}: expected a number, got (true|false) \(a boolean"):
            load_recipe("recipes/detection/lora.yaml", [override])
    r = load_recipe("recipes/detection/lora.yaml", ["ultralytics.mosaic=false", "ultralytics.amp=off",
                                                    "ultralytics.plots=false"])
    assert r.ultralytics["mosaic"] is False and r.ultralytics["amp"] is False
