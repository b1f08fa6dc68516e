"""The compare says which training run of how many is starting, the time so far and an overall estimate."""

from __future__ import annotations

import io
from types import SimpleNamespace

from visionpeft.tasks.base import RunResult
from visionpeft.tasks.compare_progress import CompareProgress, count_trainings, duration
from visionpeft.tasks.protocol import run_protocol


def test_count_and_duration():
    runs = {"full": [], "lora": [], "bitfit": []}
    assert count_trainings(runs, [0], {}) == 3
    assert count_trainings(runs, [0, 1, 2], {"lora": [1e-4, 1e-3, 1e-2]}) == 9 + 2  # the chosen rate is seed 0's
    assert [duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_lines_with_elapsed_time_and_estimate():
    now = [0.0]
    out = io.StringIO()
    progress = CompareProgress(3, out, clock=lambda: now[0])
    for name, seconds in (("full", 120.0), ("lora", 60.0), ("bitfit", 30.0)):
        progress.start(name, "seed 0")
        now[0] += seconds
        progress.done()
    assert out.getvalue().splitlines() == [
        "compare: run 1 of 3: full (seed 0)",
        "compare: run 2 of 3: lora (seed 0) | 2m00s so far, about 4m00s left",
        "compare: run 3 of 3: bitfit (seed 0) | 3m00s so far, about 1m30s left",
    ]
    quiet = io.StringIO()
    CompareProgress(2, quiet, enabled=False).start("full")
    assert quiet.getvalue() == ""


class _Task:
    """A TaskRunner that trains nothing: run_protocol's bookkeeping only."""

    primary_metric, metric_names = "top1", ("top1",)

    def train(self, recipe, strategies, run_dir, name):
        return RunResult(strategy=name, trainable_params=1, total_params=2, trainable_pct=50.0,
                         metrics={"top1": 0.5}, peak_mem_mb=0.0, train_img_per_s=1.0, train_seconds=0.0,
                         adapter_bytes=0, step_time_s=0.0, run_dir=str(run_dir))

    def has_split(self, recipe, split):
        return False

    def val_curve(self, run_dir):
        return []


def test_run_protocol_announces_every_training_run(tmp_path, capsys):
    recipe = SimpleNamespace(seed=0, seeds=2, lr_grid={"lora": [1e-3, 3e-3]})
    recipe.model_copy = lambda update: SimpleNamespace(**{**vars(recipe), **update})
    run_protocol(_Task(), recipe, {"full": [{"method": "full"}], "lora": [{"method": "lora"}]}, tmp_path)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("compare: run")]
    assert [x.split(" | ")[0] for x in lines] == [
        "compare: run 1 of 5: full (seed 0)", "compare: run 2 of 5: full (seed 1)",
        "compare: run 3 of 5: lora (lr 0.001, seed 0)", "compare: run 4 of 5: lora (lr 0.003, seed 0)",
        "compare: run 5 of 5: lora (seed 1)"]
