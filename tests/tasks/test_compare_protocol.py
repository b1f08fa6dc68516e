"""The compare protocol on classification: seeds, a learning-rate grid, the test split, every report column."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from visionpeft.cli import main
from visionpeft.data.toy import make_toy_imagefolder
from visionpeft.recipe import parse_recipe

COMPARE = {"lora": [{"method": "lora", "rank": 2}, {"method": "head"}]}


def _doc(data: Path, out: Path, **extra) -> dict:
    return {"name": "proto", "model": "test_efficientnet", "data": str(data), "output": str(out), "seed": 0,
            "compare": COMPARE, "tensorboard": False,
            "train": {"epochs": 2, "batch_size": 8, "workers": 0, "progress": False, "threads": 1},
            "optim": {"warmup_epochs": 0},
            "augment": {"img_size": 32, "random_resized_crop": False, "hflip": 0.0}, **extra}


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("proto")
    data = make_toy_imagefolder(root / "toy", classes=3, train_per_class=8, val_per_class=4, size=16,
                                test_per_class=4)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(_doc(data, root / "runs")))
    # The protocol keys from the command line, as a user would add them to a plain compare recipe.
    assert main(["compare", str(path), "seeds=2", "lr_grid={lora: [1e-3, 3e-2]}"]) == 0
    (cdir,) = (root / "runs").iterdir()
    return cdir


def test_run_layout_seeds_and_sweep(compared):
    assert sorted(p.name for p in (compared / "00-full").iterdir()) == ["seed-0", "seed-1"]
    assert sorted(p.name for p in (compared / "01-lora").iterdir()) == ["lr-0.001", "lr-0.03", "seed-1"]
    report = json.loads((compared / "report.json").read_text())
    sweep = report["lr_sweeps"]
    assert [p["lr"] for p in sweep] == [1e-3, 3e-2] and sum(p["chosen"] for p in sweep) == 1
    chosen = next(p for p in sweep if p["chosen"])
    assert chosen["val_metric"] == max(p["val_metric"] for p in sweep)  # chosen on validation
    seed1 = yaml.safe_load((compared / "01-lora" / "seed-1" / "recipe.yaml").read_text())
    assert seed1["seed"] == 1 and seed1["strategies"][0]["lr"] == chosen["lr"] and "lr" not in seed1["strategies"][1]
    seeds = {(r["strategy"], r["seed"]): r for r in report["seed_runs"]}
    assert sorted(seeds) == [("full", 0), ("full", 1), ("lora", 0), ("lora", 1)]
    assert seeds[("lora", 0)]["run_dir"] == chosen["run_dir"]  # the chosen grid run is seed 0, not trained twice
    row = next(r for r in report["runs"] if r["strategy"] == "lora")
    assert row["lr"] == chosen["lr"] and row["lr_grid"] == "0.001 0.03"
    assert row["sweep_seconds"] == pytest.approx(sum(p["train_seconds"] for p in sweep), abs=0.02)
    assert row["compute_seconds"] == pytest.approx(row["sweep_seconds"] + seeds[("lora", 1)]["train_seconds"],
                                                   abs=0.02)


def test_every_new_column_in_json_csv_and_md(compared):
    report = json.loads((compared / "report.json").read_text())
    assert report["protocol"]["headline"] == "top1_test" and report["protocol"]["seeds"] == [0, 1]
    rows = {r["strategy"]: r for r in report["runs"]}
    new = ["seeds", "lr", "lr_grid", "top1_val", "top1_test", "top1_test_std", "top1_test_ci_low",
           "top1_test_ci_high", "delta_top1_test_vs_full", "delta_top1_test_ci_low", "delta_top1_test_ci_high",
           "verdict", "time_to_full_val_s", "time_to_full_reached", "sweep_seconds", "compute_seconds"]
    for key in new:
        assert key in rows["lora"], key
    full, lora = rows["full"], rows["lora"]
    assert full["verdict"] == "baseline" and lora["verdict"] in ("better", "worse", "tied")
    # The numbers are the seeds' own: mean of the per-seed test values and the paired t-interval of the deltas.
    runs = {(r["strategy"], r["seed"]): r for r in report["seed_runs"]}
    test = [runs[("lora", s)]["top1_test"] for s in (0, 1)]
    ref = [runs[("full", s)]["top1_test"] for s in (0, 1)]
    assert lora["top1_test"] == pytest.approx(sum(test) / 2, abs=1e-6)
    diffs = [a - b for a, b in zip(test, ref)]
    half = 12.706 * abs(diffs[0] - diffs[1]) / 2  # n = 2: s = |d0 - d1| / sqrt(2), half = t * s / sqrt(2)
    assert lora["delta_top1_test_ci_high"] == pytest.approx(sum(diffs) / 2 + half, abs=1e-5)
    assert lora["top1_test_ci_low"] <= lora["top1_test"] <= lora["top1_test_ci_high"]
    assert full["time_to_full_val_s"] != "never" and full["time_to_full_reached"] == "2/2"
    with (compared / "report.csv").open() as fh:
        header = next(csv.reader(fh))
    assert set(new) <= set(header)
    with (compared / "report_seeds.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 4
    md = (compared / "report.md").read_text()
    for text in ("## Protocol", "Student t-interval", "held-out **test** split", "| verdict |", "top1_test",
                 "top1_val", "## Learning-rate sweeps", "time_to_full", "sweep_seconds"):
        assert text in md, text
    assert "selection-biased" not in md
    assert (compared / "pareto.png").stat().st_size > 5000


def test_test_metrics_are_the_kept_checkpoint_on_test(compared):
    from visionpeft.tasks.classification import TASK

    report = json.loads((compared / "report.json").read_text())
    run = next(r for r in report["seed_runs"] if r["strategy"] == "lora" and r["seed"] == 1)
    again = TASK.evaluate(Path(run["run_dir"]), "test")
    assert again["top1"] == pytest.approx(run["top1_test"], abs=1e-9)
    history = json.loads((Path(run["run_dir"]) / "metrics.json").read_text())["history"]
    elapsed = [h["elapsed_seconds"] for h in history]
    assert len(elapsed) == 2 and 0 < elapsed[0] < elapsed[1]
    # The report counts epochs from 1, as the training log ("epoch 2/2") does; the run records them from 0.
    recorded = json.loads((Path(run["run_dir"]) / "metrics.json").read_text())["extra"]["best_epoch"]
    assert run["best_epoch"] == recorded and run["best_epoch"] in (1, 2)  # counted from 1 in both


def test_seed_changes_head_and_adapter_init_data_order_and_augmentation(tmp_path):
    from visionpeft.data import build_data, resolve_data_config
    from visionpeft.tasks.classification.model import build_adapted

    data = make_toy_imagefolder(tmp_path / "toy", classes=3, train_per_class=8, val_per_class=2, size=16)
    doc = _doc(data, tmp_path / "runs", strategies=COMPARE["lora"])
    doc["augment"] = {"img_size": 32, "random_resized_crop": True, "hflip": 0.5}
    built = {}
    for seed in (0, 1):
        recipe = parse_recipe({**doc, "seed": seed})
        model, _, _, cfg = build_adapted(recipe, list(recipe.strategies), 3)
        bundle = build_data(recipe, resolve_data_config(cfg, recipe.augment))
        order = torch.cat([y for _, y in bundle.train_loader])
        built[seed] = (model.state_dict(), order, bundle.train[0][0])
    (sd0, order0, img0), (sd1, order1, img1) = built[0], built[1]
    assert not torch.equal(sd0["classifier.weight"], sd1["classifier.weight"])  # head init
    lora_a = next(k for k in sd0 if k.endswith("lora_A"))
    assert not torch.equal(sd0[lora_a], sd1[lora_a])  # adapter init
    assert not torch.equal(order0, order1)  # data order
    assert not torch.equal(img0, img1)  # augmentation of the same image


@pytest.mark.parametrize(("override", "message"), [
    ("seeds=0", "seeds: expected how many seeds every compare run trains (seed, seed+1, ...), an integer >= 1"),
    ("lr_grid={lora: [1e-3, -1]}", "lr_grid.lora: expected auto or a non-empty list of positive learning rates"),
    ("lr_grid={lora: 1e-3}", "lr_grid.lora: expected auto or a non-empty list of positive learning rates"),
    ("lr_grid={lorra: [1e-3]}", "lr_grid.lorra: not a compare run; the runs are ['full', 'lora'] (did you mean"),
    ("lr_grid={lora: [1e-3, 0.001]}", "lr_grid.lora: a rate is listed twice"),
    ("lr_grid={lora: [true]}", "lr_grid.lora: expected auto or a non-empty list of positive learning rates"),
    ("compare.lora=[{method: head}]", "lr_grid.lora: the run trains only the head"),
])
def test_bad_protocol_input_is_one_line_exit_2(tmp_path, capsys, override, message):
    data = make_toy_imagefolder(tmp_path / "toy", classes=2, train_per_class=2, val_per_class=1, size=8)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_doc(data, tmp_path / "runs")))
    extra = ["lr_grid={lora: [1e-3]}"] if override.startswith("compare.") else []
    assert main(["compare", str(path), override, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_with_lr_sets_every_entry_but_the_head_and_seeds_follow_the_seed():
    from visionpeft.tasks.protocol import seeds_of, with_lr

    entries = [{"method": "freeze", "n": 3}, {"method": "lora", "rank": 8, "lr": 5e-4}, {"method": "head"}]
    assert with_lr(entries, 3e-3) == [{"method": "freeze", "n": 3, "lr": 3e-3},
                                      {"method": "lora", "rank": 8, "lr": 3e-3}, {"method": "head"}]
    assert with_lr(entries, None) == entries and with_lr(entries, None)[0] is not entries[0]
    recipe = parse_recipe({"model": "m", "data": "d", "seed": 5, "seeds": 3})
    assert seeds_of(recipe) == [5, 6, 7]


def test_per_example_results_and_the_bootstrap_verdict(compared):
    report = json.loads((compared / "report.json").read_text())
    files = None
    for run in report["seed_runs"]:
        ex = json.loads((Path(run["run_dir"]) / "test_examples.json").read_text())
        assert ex["split"] == "test" and len(ex["files"]) == 12  # 3 classes x 4 test images
        correct = [p == y for p, y in zip(ex["predictions"], ex["labels"])]
        assert sum(correct) / 12 == pytest.approx(run["top1_test"], abs=1e-9)  # the same evaluation
        files = files or ex["files"]
        assert ex["files"] == files  # every run saw the same images in the same order: pairable
        # The labels came through the loader, the files from the split's list: equal order, so they agree.
        classes = sorted({Path(f).parent.name for f in files})
        assert ex["labels"] == [classes.index(Path(f).parent.name) for f in files]
    lora = next(r for r in report["runs"] if r["strategy"] == "lora")
    assert lora["verdict_basis"] == "bootstrap over 2 seeds x 12 test images"
    lo, hi = lora["delta_top1_test_boot_low"], lora["delta_top1_test_boot_high"]
    assert lo <= lora["delta_top1_test_vs_full"] <= hi
    assert lora["verdict"] == ("better" if lo > 0 else "worse" if hi < 0 else "tied")
    assert lora["verdict_t"] in ("better", "worse", "tied") and lora["bootstrap_ms"] >= 0
    rows = {r["strategy"]: r for r in report["runs"]}
    assert (rows["lora"]["lr_source"], rows["full"]["lr_source"]) == ("lr_grid", "default")
    assert rows["full"]["lr"] == pytest.approx(1e-4)  # full fine-tuning's default rate, recorded by the run
    md = (compared / "report.md").read_text()
    assert "t-interval" in md and "0.0001 (default)" in md and "(lr_grid)" in md


def test_report_command_rebuilds_the_same_report_without_training(compared, tmp_path, capsys):
    import shutil

    before = json.loads((compared / "report.json").read_text())
    moved = tmp_path / "moved"
    shutil.copytree(compared, moved)  # a copied compare directory reports from its own runs
    for name in ("report.json", "report.md", "report.csv", "pareto.png"):
        (moved / name).unlink() if name != "report.json" else None
    assert main(["report", str(moved)]) == 0
    assert "report:" in capsys.readouterr().out
    after = json.loads((moved / "report.json").read_text())
    keys = ["strategy", "top1_test", "delta_top1_test_vs_full", "delta_top1_test_boot_low",
            "delta_top1_test_boot_high", "delta_top1_test_ci_low", "verdict", "verdict_t", "lr", "lr_source"]
    assert [[r[k] for k in keys] for r in after["runs"]] == [[r[k] for k in keys] for r in before["runs"]]
    assert after["environment"] == before["environment"]
    seed_keys = ["strategy", "seed", "lr", "top1_val", "top1_test", "best_epoch"]
    assert [[r[k] for k in seed_keys] for r in after["seed_runs"]] == [[r[k] for k in seed_keys]
                                                                       for r in before["seed_runs"]]
    assert all(str(moved) in r["run_dir"] for r in after["seed_runs"])
    assert (moved / "report.md").is_file() and (moved / "pareto.png").is_file() and (moved / "report.csv").is_file()


def test_report_of_an_old_compare_dir_falls_back_to_the_t_interval(compared, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(compared, old)
    (old / "runs.json").unlink()  # written before runs.json and per-example results existed
    for f in old.rglob("test_examples.json"):
        f.unlink()
    assert main(["report", str(old)]) == 0
    report = json.loads((old / "report.json").read_text())
    lora = next(r for r in report["runs"] if r["strategy"] == "lora")
    assert lora["verdict"] == lora["verdict_t"] and lora["delta_top1_test_boot_low"] is None
    assert lora["verdict_basis"].startswith("seed t-interval (no per-example test results saved")
    assert lora["lr_source"] == "lr_grid" and len(report["lr_sweeps"]) == 2
    before = json.loads((compared / "report.json").read_text())
    # Read back from report.json + metrics.json: the same seed rows (epochs counted from 1 once, not twice).
    assert [(r["strategy"], r["seed"], r["best_epoch"], r["top1_test"]) for r in report["seed_runs"]] == [
        (r["strategy"], r["seed"], r["best_epoch"], r["top1_test"]) for r in before["seed_runs"]]
    assert "Verdicts rest on the seed-only t-interval" in (old / "report.md").read_text()


@pytest.mark.parametrize("target", ["missing", "file", "empty"])
def test_report_bad_input_is_one_line_exit_2(tmp_path, capsys, target):
    path = tmp_path / "x"
    if target == "file":
        path.write_text("not a compare")
    elif target == "empty":
        path.mkdir()
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "visionpeft report" in err and "Traceback" not in err


def test_report_md_gives_each_rows_adapter_size(compared):
    """report.md's `adapter_mb`: the size of the adapter file of the row's first seed run, in MiB (issue 24)."""
    report = json.loads((compared / "report.json").read_text())
    md = (compared / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| strategy | trainable_pct | adapter_mb"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    for row in report["runs"]:
        first = next(r for r in report["seed_runs"] if r["strategy"] == row["strategy"])
        size = (Path(first["run_dir"]) / "adapter" / "adapter.safetensors").stat().st_size
        line = next(x for x in md.splitlines() if x.startswith(f"| {row['strategy']} |"))
        shown = [c.strip() for c in line.strip("|").split("|")][cells.index("adapter_mb")]
        assert shown == f"{size / 2**20:.3f}" and size > 0
    full, lora = (next(r for r in report["runs"] if r["strategy"] == s) for s in ("full", "lora"))
    assert lora["adapter_bytes"] < full["adapter_bytes"]  # full fine-tuning ships every weight
