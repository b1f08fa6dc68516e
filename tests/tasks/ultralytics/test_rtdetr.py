"""RT-DETR through the detection engine: ``task: detection`` with an RT-DETR model trains with Ultralytics'
``RTDETRTrainer`` (extended by the same mixin), LoRA on the decoder's Linear layers, a killed run resumes with the
same trainer, merged output plain."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("ultralytics")

from ultralytics import RTDETR  # noqa: E402

import visionpeft  # noqa: E402
from visionpeft.backends.ultralytics import build_model  # noqa: E402
from visionpeft.cli import main  # noqa: E402

from ..ultralytics_support import copy_dataset, killed_after_first_epoch  # noqa: E402


def test_rtdetr_trains_resumes_with_its_own_trainer_and_merges(shared, tmp_path, monkeypatch):
    import visionpeft.tasks.ultralytics.trainer as trainer_mod

    used = []
    original = trainer_mod.trainer_for
    monkeypatch.setattr(trainer_mod, "trainer_for", lambda task, rtdetr=False: used.append(rtdetr) or
                        original(task, rtdetr))
    data = copy_dataset(shared, "coco8", tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"task: detection\nname: rtdetr\nmodel: rtdetr-l.yaml\ndata: {data}\n"
                      f"output: {tmp_path / 'runs'}\nstrategies: [{{method: lora, rank: 4}}, {{method: head}}]\n"
                      "ultralytics: {epochs: 2, imgsz: 64, batch: 2, nbs: 2, warmup_epochs: 0, workers: 0, "
                      "device: cpu, amp: false, optimizer: SGD, lr0: 0.01}\n")
    original_callbacks = killed_after_first_epoch(monkeypatch)  # Ctrl-C after epoch 1 of 2
    assert main(["train", str(recipe)]) == 130
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "weights" / "last.pt").is_file() and not (run_dir / "metrics.json").exists()
    monkeypatch.setattr(trainer_mod, "make_callbacks", original_callbacks)
    assert main(["resume", str(run_dir)]) == 0
    assert used == [True, True]  # the resumed run is an RTDETRTrainer again
    result = json.loads((run_dir / "metrics.json").read_text())
    assert result["extra"]["start_epoch"] == 1 and result["extra"]["epochs"] == 2
    assert set(result["metrics"]) >= {"map50", "map50_95"}
    adapted = build_model(run_dir / "weights" / "best.pt")
    decoder = [n for n, m in adapted.named_modules() if type(m).__name__ == "LoRALinear"]
    assert decoder and all(".decoder.layers." in n for n in decoder)
    plain = RTDETR(str(run_dir / "weights" / "merged.pt"))
    assert visionpeft.get_plan(plain.model) is None
    assert not any(type(m).__module__.startswith("visionpeft") for m in plain.model.modules())
    # merged.pt is best.pt with its adapters folded in (float32) and rounded to float16 as Ultralytics saves.
    # (Outputs are compared in float32 in tests/backends/test_ultralytics_task_specs.py: RT-DETR's top-k query
    # selection turns float16 rounding differences into different queries, so an output tolerance means little.)
    from visionpeft.tasks.ultralytics.merge import merged_copy

    expected = merged_copy(adapted).half().state_dict()
    got = plain.model.state_dict()
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(got[k].to(expected[k].dtype), expected[k]), k
    lora = [m for m in adapted.modules() if hasattr(m, "lora_B")]
    assert any(float(m.lora_B.abs().sum()) > 0 for m in lora)  # trained: the merge is not a no-op
