"""Resuming a killed detection run (``visionpeft resume RUN_DIR``) from Ultralytics' ``weights/last.pt``.

A 3-epoch LoRA run on coco8 (copied to tmp, 64 px, CPU) is interrupted right after epoch 2 was checkpointed
(a ``KeyboardInterrupt`` from a callback, as Ctrl-C would), then resumed. The resumed trainer must continue
from the checkpoint: same strategies, the saved LoRA tensors and optimizer state, epoch 3 only, frozen
tensors bit-identical to the base.

The copy of coco8 is relabelled to 2 classes, so Ultralytics re-initialises the head's class convs (float32,
random) and the strategies leave them frozen: ``last.pt`` holds only float16 copies of those, so the test
fails if the resumed run took its frozen tensors from the checkpoint instead of the rebuilt base.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("ultralytics")

from ultralytics.nn.tasks import load_checkpoint  # noqa: E402

import visionpeft  # noqa: E402
from visionpeft.cli import main  # noqa: E402
from visionpeft.tasks.ultralytics import trainer as trainer_mod  # noqa: E402

from ..ultralytics_support import copy_dataset  # noqa: E402

STRATEGIES = "[{method: freeze, n: 2}, {method: lora, rank: 4, alpha: 8}]"
ORIGINAL_CALLBACKS = trainer_mod.make_callbacks


class Probe:
    """Wraps ``make_callbacks``: interrupts after a chosen epoch, snapshots the trainer after setup."""

    def __init__(self, kill_after_epoch: int | None = None) -> None:
        self.kill_after_epoch = kill_after_epoch
        self.trainer = None
        self.setup: dict[str, torch.Tensor] = {}
        self.ema_setup: dict[str, torch.Tensor] = {}
        self.start_epoch = -1
        self.optimizer_setup: dict = {}
        self.epochs_run: list[int] = []

    def __call__(self):
        callbacks = dict(ORIGINAL_CALLBACKS())
        pretrain_end, fit_epoch_end = callbacks["on_pretrain_routine_end"], callbacks["on_fit_epoch_end"]

        def on_pretrain_routine_end(tr):
            pretrain_end(tr)
            self.trainer, self.start_epoch = tr, tr.start_epoch
            self.setup = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
            self.ema_setup = {k: v.detach().clone() for k, v in tr.ema.ema.state_dict().items()}
            self.optimizer_setup = copy.deepcopy(tr.optimizer.state_dict())

        def on_fit_epoch_end(tr):
            fit_epoch_end(tr)
            self.epochs_run.append(int(tr.epoch))
            if tr.epoch == self.kill_after_epoch:  # last.pt of this epoch is already written
                raise KeyboardInterrupt

        callbacks.update(on_pretrain_routine_end=on_pretrain_routine_end, on_fit_epoch_end=on_fit_epoch_end)
        return callbacks


def two_class_coco8(shared, dest):
    """coco8 copied under ``dest`` with class ids folded to 0/1 (a new head, as for a custom dataset)."""
    data = copy_dataset(shared, "coco8", dest)
    for label in (data.parent / "labels").rglob("*.txt"):
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()]
        label.write_text("".join(" ".join([str(int(r[0]) % 2), *r[1:]]) + "\n" for r in rows))
    for cache in data.parent.rglob("*.cache"):
        cache.unlink()
    data.write_text("train: images/train\nval: images/val\nnames: [even, odd]\n")
    return data


@pytest.fixture(scope="module")
def recipe(shared, weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = two_class_coco8(shared, root)
    path = root / "det.yaml"
    path.write_text(
        f"task: detection\nname: killed\nmodel: {weights}\ndata: {data}\noutput: {root / 'runs'}\n"
        f"strategies: {STRATEGIES}\n"
        "ultralytics: {epochs: 3, imgsz: 64, batch: 2, nbs: 2, warmup_epochs: 0, workers: 0, device: cpu, "
        "amp: false}\n"
    )
    return path


@pytest.fixture(scope="module")
def killed_and_resumed(recipe):
    """(run dir, last.pt state after the kill, probe of the killed run, probe of the resumed run)."""
    mp = pytest.MonkeyPatch()
    try:
        killed = Probe(kill_after_epoch=1)
        mp.setattr(trainer_mod, "make_callbacks", killed)
        assert main(["train", str(recipe)]) == 130  # interrupted, as by Ctrl-C
        (run,) = (recipe.parent / "runs").iterdir()
        shutil.copy(run / "weights" / "last.pt", recipe.parent / "killed_last.pt")  # for the Python API test
        shutil.copytree(run, recipe.parent / "killed_copy")  # the interrupted run dir, as a user would copy it
        saved_model, saved = load_checkpoint(run / "weights" / "last.pt")
        snapshot = {"epoch": saved["epoch"], "ema": {k: v.clone() for k, v in saved_model.state_dict().items()},
                    "optimizer": saved["optimizer"], "results": (run / "results.csv").read_text(),
                    "base_sha": json.loads((run / "adapter" / "adapter.json").read_text())["base"]["sha256"]}
        resumed = Probe()
        mp.setattr(trainer_mod, "make_callbacks", resumed)
        assert main(["resume", str(run)]) == 0
    finally:
        mp.undo()
    return run, snapshot, killed, resumed


def test_killed_run_left_a_resumable_checkpoint(killed_and_resumed):
    run, snapshot, killed, _ = killed_and_resumed
    assert killed.epochs_run == [0, 1] and snapshot["epoch"] == 1
    assert len(list(csv.DictReader(snapshot["results"].splitlines()))) == 2


def test_resumed_run_continues_at_epoch_3(killed_and_resumed):
    run, _, _, resumed = killed_and_resumed
    assert resumed.start_epoch == 2 and resumed.epochs_run[0] == 2
    rows = list(csv.DictReader((run / "results.csv").read_text().splitlines()))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2, 3]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["strategy"] == "killed" and metrics["extra"]["start_epoch"] == 2
    assert json.loads((run / "adapter_last" / "adapter.json").read_text())["extra"]["epoch"] == 3
    assert (run / "weights" / "merged.pt").is_file() and (run / "adapter" / "adapter.safetensors").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))  # both segments' event files, steps counted on
    events.Reload()
    nb = len(resumed.trainer.train_loader)  # x = training batches so far, continued across the resume
    assert [e.step for e in events.Scalars("loss/train")] == [nb, 2 * nb, 3 * nb]
    assert [e.value for e in events.Scalars("progress/epoch")] == [1, 2, 3]


def test_resumed_weights_and_optimizer_come_from_the_checkpoint(killed_and_resumed):
    _, snapshot, _, resumed = killed_and_resumed
    plan = resumed.trainer.vp_plan
    lora = [k for k in plan.trainable if k.endswith(("lora_A", "lora_B"))]
    assert lora and any(not torch.equal(snapshot["ema"][k], torch.zeros_like(snapshot["ema"][k])) for k in lora)
    for k in plan.trainable:  # the live model and the EMA start from the saved EMA (float16 in last.pt)
        assert torch.equal(resumed.setup[k], snapshot["ema"][k]), k
        assert torch.equal(resumed.ema_setup[k], snapshot["ema"][k]), k
    # The optimizer state restored (Ultralytics stores it in float16): every momentum buffer, same order.
    state, saved = resumed.optimizer_setup["state"], snapshot["optimizer"]["state"]
    assert len(state) == len(saved) == sum(len(g["params"]) for g in resumed.optimizer_setup["param_groups"])
    for i, buffers in saved.items():
        for key, value in buffers.items():
            assert torch.equal(torch.as_tensor(state[i][key]).float(), torch.as_tensor(value).float()), (i, key)


def test_frozen_tensors_bit_identical_to_the_base_and_plan_holds(killed_and_resumed):
    run, snapshot, killed, resumed = killed_and_resumed
    tr, plan = resumed.trainer, resumed.trainer.vp_plan
    reference = killed.setup  # the base as the interrupted run started (its random new head included)
    frozen = [k for k, v in reference.items()
              if v.is_floating_point() and k not in plan.trainable and k not in plan.bn_buffers()]
    random_head = [k for k in frozen if not torch.equal(reference[k].half().float(), reference[k])]
    assert len(frozen) > 100 and any(k.startswith("model.24.cv3.") for k in random_head)
    assert not all(torch.equal(snapshot["ema"][k], reference[k]) for k in random_head)  # last.pt: float16
    for source in (resumed.setup, resumed.ema_setup, tr.model.state_dict(), tr.ema.ema.state_dict()):
        assert all(torch.equal(source[k], reference[k]) for k in frozen)
    plan.check(tr.model)
    assert set(plan.trainable) == set(killed.trainer.vp_plan.trainable)
    assert plan.trainable == json.loads((run / "plan.json").read_text())["trainable"]
    # Same base fingerprint before the interruption (adapter/ of epoch 1 or 2) and after (adapter_last/).
    assert snapshot["base_sha"] == json.loads((run / "adapter_last" / "adapter.json").read_text())["base"]["sha256"]


def _files(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_rejected_resumes_leave_the_run_untouched(killed_and_resumed, recipe, tmp_path, capsys):
    """Checked before anything is written: another rank, another base, a torn last.pt."""
    src = recipe.parent / "killed_copy"
    run = tmp_path / "run"
    shutil.copytree(src, run)
    before = _files(run)
    assert main(["resume", str(run), "strategies.1.rank=8"]) == 2
    err = capsys.readouterr().err
    assert "strategies" in err and "cannot change when resuming" in err and "Traceback" not in err
    assert main(["resume", str(run), f"model={tmp_path / 'other.pt'}"]) == 2
    assert "cannot change when resuming" in capsys.readouterr().err
    assert _files(run) == before  # recipe.yaml, plan.json, args.yaml, tb/ ... byte for byte
    last = run / "weights" / "last.pt"
    good = last.read_bytes()
    for torn in (b"", good[: len(good) // 2]):
        last.write_bytes(torn)
        assert main(["resume", str(run)]) == 2
        err = capsys.readouterr().err
        assert f"last.pt: damaged checkpoint ({len(torn)} bytes" in err and "not found" not in err
    last.write_bytes(good)
    assert _files(run) == before


def test_resuming_a_copied_run_writes_into_the_copy(killed_and_resumed, recipe, tmp_path):
    """Ultralytics would take save_dir from inside last.pt, i.e. the original run directory."""
    original, _, _, _ = killed_and_resumed
    before = _files(original)
    run = tmp_path / "copy"
    shutil.copytree(recipe.parent / "killed_copy", run)
    assert main(["resume", str(run)]) == 0
    assert _files(original) == before
    rows = list(csv.DictReader((run / "results.csv").read_text().splitlines()))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2, 3]
    assert (run / "weights" / "merged.pt").is_file()
    assert json.loads((run / "metrics.json").read_text())["run_dir"] == str(run.resolve())


def test_resume_errors(killed_and_resumed, tmp_path, capsys):
    run, _, _, _ = killed_and_resumed
    before = _files(run)
    for override in ("strategies.0.n=3", "strategies.0.method=bitfit"):  # not the strategies the run trained
        assert main(["resume", str(run), override]) == 2
        err = capsys.readouterr().err
        assert "strategies cannot change when resuming" in err and err.count("\n") == 1
    assert main(["resume", str(run)]) == 2  # finished: last.pt has no optimizer state any more
    err = capsys.readouterr().err
    assert "nothing to resume: the run finished all 3 epochs" in err and "epoch 0 of" not in err
    assert _files(run) == before
    (tmp_path / "recipe.yaml").write_text((run / "recipe.yaml").read_text())
    assert main(["resume", str(tmp_path)]) == 2
    assert "no weights/last.pt to resume from" in capsys.readouterr().err


def test_python_api_resume_takes_strategies_from_the_checkpoint(killed_and_resumed, recipe, tmp_path):
    """``YOLO("last.pt").train(resume=True, trainer=PeftDetectionTrainer)``: no strategies given."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import torch_safe_load

    from visionpeft.tasks.ultralytics.trainer import PeftDetectionTrainer

    _, _, killed, _ = killed_and_resumed
    ckpt, _ = torch_safe_load(recipe.parent / "killed_last.pt")
    ckpt["train_args"]["save_dir"] = str(tmp_path / "api")  # Ultralytics resumes into the recorded save_dir
    weights_dir = tmp_path / "api" / "weights"
    weights_dir.mkdir(parents=True)
    torch.save(ckpt, weights_dir / "last.pt")
    yolo = YOLO(str(weights_dir / "last.pt"))
    yolo.train(resume=True, trainer=PeftDetectionTrainer)
    tr = yolo.trainer
    assert type(tr) is PeftDetectionTrainer and tr.start_epoch == 2 and tr.epoch == 2
    assert tr.vp_strategies == killed.trainer.vp_strategies
    assert tr.vp_plan.trainable == killed.trainer.vp_plan.trainable
    assert (tmp_path / "api" / "adapter_last" / "adapter.json").is_file()
    assert visionpeft.get_plan(yolo.model) is not None  # Ultralytics reloaded the adapted checkpoint


def _adapted_pair(weights, seed):
    """A base built like the trainer's (2 classes: random new class convs) + strategies, and its base file."""
    from visionpeft.tasks.ultralytics.merge import build_training_model
    from visionpeft.tasks.ultralytics.resume import random_init

    base, _ = load_checkpoint(weights)
    torch.manual_seed(seed)
    model = build_training_model(weights, 2, {0: "even", 1: "odd"})
    random_ids = random_init(model, base)
    plan = visionpeft.apply(model, [{"method": "freeze", "n": 2}, {"method": "lora", "rank": 4}])
    return model, plan, random_ids


def _as_checkpoint(model, plan):
    """What last.pt holds after some training: trained tensors moved, everything stored in float16."""
    saved = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in saved.named_parameters():
            if name in plan.trainable:
                p.add_(torch.randn_like(p) * 0.01)
    return saved.half().float()


def test_load_resumed_state_keeps_the_base_and_checks_it(weights):
    from visionpeft.errors import ConfigError
    from visionpeft.tasks.ultralytics.resume import load_resumed_state

    original, plan, _ = _adapted_pair(weights, seed=1)
    saved = _as_checkpoint(original, plan)
    ref = original.state_dict()
    same, plan_same, ids_same = _adapted_pair(weights, seed=1)  # same seed: random head reproduced
    assert load_resumed_state(same, plan_same, saved, "t", ids_same) == []
    sd, src = same.state_dict(), saved.state_dict()
    assert all(torch.equal(sd[k], src[k]) for k in plan.trainable)
    assert all(torch.equal(sd[k], ref[k]) for k in sd if k not in plan.trainable and sd[k].is_floating_point())
    other, plan_other, ids_other = _adapted_pair(weights, seed=2)  # another seed: head differs
    taken = load_resumed_state(other, plan_other, saved, "t", ids_other)
    assert taken and all(k.startswith("model.24.cv3.") for k in taken)
    assert all(torch.equal(other.state_dict()[k], src[k]) for k in taken)
    with pytest.raises(ConfigError, match="differ from the checkpoint"):  # not random: the file changed
        load_resumed_state(_adapted_pair(weights, seed=2)[0], plan_other, saved, "t", set())
    with torch.no_grad():
        saved.state_dict()["model.0.conv.weight"].add_(1.0)
    fresh, plan_fresh, ids_fresh = _adapted_pair(weights, seed=1)
    with pytest.raises(ConfigError, match=r"model\.0\.conv\.weight"):  # a tensor the base file provides
        load_resumed_state(fresh, plan_fresh, saved, "t", ids_fresh)


def test_checkpoints_are_replaced_atomically(tmp_path, monkeypatch):
    """A run killed while Ultralytics writes last.pt keeps the previous, intact last.pt."""
    from ultralytics.engine.trainer import BaseTrainer

    from visionpeft.tasks.ultralytics.trainer import PeftDetectionTrainer

    trainer = object.__new__(PeftDetectionTrainer)  # only the attributes save_model uses
    trainer.wdir = tmp_path / "weights"
    trainer.wdir.mkdir()
    trainer.last, trainer.best = trainer.wdir / "last.pt", trainer.wdir / "best.pt"
    trainer.last.write_bytes(b"epoch 1")

    def killed_while_writing(self):
        self.wdir.mkdir(parents=True, exist_ok=True)
        self.last.write_bytes(b"epo")  # Ultralytics' in-place write, cut short
        raise KeyboardInterrupt

    def complete(self):
        self.wdir.mkdir(parents=True, exist_ok=True)
        for path in (self.last, self.best, self.wdir / "epoch2.pt"):
            path.write_bytes(b"epoch 2")
        return True

    monkeypatch.setattr(BaseTrainer, "save_model", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_model()
    assert trainer.last.read_bytes() == b"epoch 1" and trainer.last == tmp_path / "weights" / "last.pt"
    monkeypatch.setattr(BaseTrainer, "save_model", complete)
    assert trainer.save_model() is True
    assert sorted(p.name for p in trainer.wdir.iterdir()) == ["best.pt", "epoch2.pt", "last.pt"]  # no staging left
    assert all(p.read_bytes() == b"epoch 2" for p in trainer.wdir.iterdir())


def test_killed_while_writing_the_checkpoint_resumes_without_duplicate_rows(recipe, tmp_path, monkeypatch):
    """Issue 23 #10: Ultralytics appends epoch 2's results.csv row, then dies writing last.pt; the resumed run
    redoes epoch 2 from epoch 1's checkpoint and must not leave two rows for it; the temporaries a hard kill
    leaves in weights/ (0-byte staging files) are removed when it resumes."""
    from ultralytics.engine.trainer import BaseTrainer

    original = BaseTrainer.save_model

    def dies_writing_epoch_2(self):
        if int(self.epoch) == 1:
            Path(self.last).parent.mkdir(parents=True, exist_ok=True)
            Path(self.last).write_bytes(b"")  # the torn file in the staging folder
            raise KeyboardInterrupt
        return original(self)

    out = tmp_path / "runs"
    monkeypatch.setattr(BaseTrainer, "save_model", dies_writing_epoch_2)
    assert main(["train", str(recipe), f"output={out}"]) == 130
    monkeypatch.setattr(BaseTrainer, "save_model", original)
    (run,) = out.iterdir()
    rows = list(csv.DictReader((run / "results.csv").read_text().splitlines()))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]  # epoch 2's row was written, its checkpoint was not
    weights = run / "weights"
    assert load_checkpoint(weights / "last.pt")[1]["epoch"] == 0
    stale = [weights / ".saving" / "last.pt", weights / ".last.pt.strip", weights / ".last.pt.0a1b2c3d.tmp"]
    for path in stale:  # what a SIGKILL (no finally blocks) leaves behind
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
    assert main(["resume", str(run)]) == 0
    rows = list(csv.DictReader((run / "results.csv").read_text().splitlines()))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2, 3]
    assert not any(p.exists() for p in stale) and not (weights / ".saving").exists()
    assert sorted(p.name for p in weights.iterdir() if p.name.startswith(".")) == []
