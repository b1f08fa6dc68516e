"""Issue 23 #8 and #10: checkpoint, adapter and merged-weight files follow the umask; stale temporaries go;
``best_epoch`` counts from 1 and old run directories (counted from 0) still read right."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

import visionpeft
from visionpeft.checkpoint import (
    atomic_save,
    atomic_write,
    remove_stale_temporaries,
    save_tensors,
    save_training_state,
)
from visionpeft.tasks.base import RunResult

from .fixtures import tiny_cnn


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077, 0o027])
def test_files_users_share_follow_the_umask(tmp_path: Path, umask: int) -> None:
    """They were 0600 (tempfile.mkstemp's mode, kept by the rename) whatever the umask."""
    model = tiny_cnn()
    visionpeft.apply(model, [{"method": "bitfit"}])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    old = os.umask(umask)
    try:
        adapter = visionpeft.save_adapter(model, tmp_path / "adapter")
        files = [adapter / "adapter.safetensors", adapter / "adapter.json",
                 save_tensors({"a": torch.zeros(2)}, tmp_path / "best.safetensors"),
                 atomic_save({"a": torch.zeros(2)}, tmp_path / "merged.pt"),
                 save_training_state(tmp_path / "last.pt", model_tensors={}, optimizer=opt, scheduler=None,
                                     epoch=0, extra={})]
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what any other file of a run gets
    finally:
        os.umask(old)
    assert _mode(plain) == 0o666 & ~umask
    for path in files:
        assert _mode(path) == 0o666 & ~umask, path


def test_the_next_write_removes_its_own_stale_temporaries(tmp_path: Path) -> None:
    stale = tmp_path / ".last.pt.0a1b2c3d.tmp"
    other = tmp_path / ".best.safetensors.0a1b2c3d.tmp"  # another file's: not this write's to remove
    odd = tmp_path / "[run]"
    odd.mkdir()
    odd_stale = odd / ".last[1].pt.12345678.tmp"  # glob characters in the names
    for path in (stale, other, odd_stale):
        path.write_bytes(b"")
    atomic_save({"x": torch.ones(1)}, tmp_path / "last.pt")
    atomic_save({"x": torch.ones(1)}, odd / "last[1].pt")
    assert not stale.exists() and other.exists() and not odd_stale.exists()
    assert torch.load(tmp_path / "last.pt", weights_only=True)["x"].item() == 1.0


def test_a_failed_write_leaves_no_temporary_and_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    atomic_save({"v": 1}, target)

    def dies(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, dies)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.load(target, weights_only=True) == {"v": 1}


def test_remove_stale_temporaries_on_resume(tmp_path: Path) -> None:
    keep = [tmp_path / "last.pt", tmp_path / "best.pt", tmp_path / "epoch3.pt"]
    gone = [tmp_path / ".last.pt.strip", tmp_path / ".best.pt.strip", tmp_path / ".last.pt.0a1b2c3d.tmp",
            tmp_path / ".saving" / "last.pt"]
    for path in keep + gone:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
    removed = remove_stale_temporaries(tmp_path)
    assert len(removed) == 4 and all(p.exists() for p in keep) and not any(p.exists() for p in gone)
    assert not (tmp_path / ".saving").exists() and remove_stale_temporaries(tmp_path / "missing") == []


def _result(extra: dict) -> dict:
    return RunResult("r", 1, 2, 50.0, {"top1": 0.5}, 1.0, 1.0, 1.0, 0, 0.1, Path("/x"), extra).to_dict()


@pytest.mark.parametrize(("extra", "best"), [
    ({"best_epoch": 0}, 1),                        # a run directory written before: counted from 0
    ({"best_epoch": 4}, 5),
    ({"best_epoch": 2, "epoch_base": 1}, 2),        # written now: counted from 1
    ({"best_epoch": None, "epoch_base": 1}, None),
    ({}, None),                                     # detection runs record no best_epoch
])
def test_best_epoch_counts_from_one_old_run_dirs_too(extra: dict, best: int | None) -> None:
    result = RunResult.from_dict(_result(extra))
    assert result.extra.get("best_epoch") == best
    again = RunResult.from_dict(result.to_dict())  # read twice: not shifted twice
    assert again.extra.get("best_epoch") == best
