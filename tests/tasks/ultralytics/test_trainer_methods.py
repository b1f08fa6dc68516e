"""DoRA, LoHa, LoKr and SSF inside Ultralytics' real training loop (coco8 copied to tmp, 64 px, CPU, 1 epoch).

The adapted EMA model is deep-copied and pickled by Ultralytics (EMA, checkpoints); the trained adapter must
reload on a fresh base, and the merged copy Ultralytics' final validation fuses (Conv+BN) must compute what
the adapted model does.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("ultralytics")

import visionpeft  # noqa: E402
from visionpeft.tasks.ultralytics.merge import (
    build_training_model,  # noqa: E402
    merged_copy,
)
from visionpeft.tasks.ultralytics.trainer import PeftDetectionTrainer  # noqa: E402

from ..ultralytics_support import offline_args  # noqa: E402


@pytest.mark.parametrize("method", [{"method": "ssf"}, {"method": "dora", "rank": 4},
                                    {"method": "loha", "rank": 2}, {"method": "lokr", "rank": 4}],
                         ids=lambda m: m["method"])
def test_trains_reloads_and_merges_before_fusion(method, coco8, weights, tmp_path):
    strategies = [{"method": "freeze", "n": 2}, method, {"method": "head"}]
    cls = PeftDetectionTrainer.configure(strategies, run_dir=tmp_path / "run")
    trainer = cls(overrides=offline_args(tmp_path, model=weights, data=str(coco8), name=method["method"]))
    trainer.train()
    plan = visionpeft.get_plan(trainer.model)
    assert plan.by_strategy[method["method"]] > 0 and (trainer.wdir / "merged.pt").is_file()
    ema = trainer.ema.ema
    fresh = build_training_model(weights, 80, trainer.data["names"])
    visionpeft.load_adapter(fresh, tmp_path / "run" / "adapter_last")
    ema_sd = ema.state_dict()
    assert all(torch.equal(v, ema_sd[k]) for k, v in fresh.state_dict().items() if v.is_floating_point())
    adapted = copy.deepcopy(ema).float().eval()
    fused = merged_copy(adapted).fuse(verbose=False).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(adapted(x)[0], fused(x)[0], atol=1e-4, rtol=1e-3)
