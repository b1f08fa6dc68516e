"""notebooks/quickstart.ipynb: executes top to bottom with ``jupyter nbconvert --execute`` (as a user would) on a
tiny setting and shows its results; its stored outputs and a fresh run's are clean (no progress-bar floods)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from visionpeft.data.toy import make_toy_imagefolder

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
#: Text a progress bar leaves in a notebook: tqdm's carriage returns and its widget fallback's warning.
FLOOD_MARKS = ("\r", "IProgress not found", "it/s]")


def flood_problems(nb: dict) -> list[str]:
    """What makes a notebook's outputs unreadable: progress-bar text, long streams, this machine's paths."""
    problems = []
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        for out in cell.get("outputs", []):
            text = out.get("text", "")
            text = "".join(text) if isinstance(text, list) else text
            problems += [f"code cell {i}: {mark!r}" for mark in FLOOD_MARKS if mark in text]
            if text.count("\n") > 40:
                problems.append(f"code cell {i}: {text.count(chr(10))} lines of {out.get('name', 'output')}")
            problems += [f"code cell {i}: a local path {p}" for p in ("/tmp/", "/home/", "/work/") if p in text]
    return problems


def test_stored_notebook_is_clean():
    nb = json.loads(NOTEBOOK.read_text())
    assert flood_problems(nb) == []
    assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]


def test_flood_check_catches_a_progress_bar():
    bar = {"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "stream", "name": "stderr", "text": "IProgress not found. Please update jupyter\n"},
        {"output_type": "stream", "name": "stderr", "text": "lora 1/3:  40%|####   | 9/23 [00:01<00:02, 5.1it/s]\r"},
        {"output_type": "stream", "name": "stdout", "text": ["epoch\n"] * 41},
        {"output_type": "stream", "name": "stdout", "text": "data: /home/me/digits.yaml\n"},
    ]}]}
    assert flood_problems(bar) == ["code cell 0: 'IProgress not found'", "code cell 0: '\\r'",
                                   "code cell 0: 'it/s]'", "code cell 0: 41 lines of stdout",
                                   "code cell 0: a local path /home/"]


def _execute(tmp_path: Path, env: dict[str, str]) -> dict:
    """``jupyter nbconvert --to notebook --execute`` (nbclient directly when nbconvert is not installed)."""
    try:
        import nbconvert  # noqa: F401
    except ImportError:
        nbformat = pytest.importorskip("nbformat")
        nbclient = pytest.importorskip("nbclient")
        nb = nbformat.read(NOTEBOOK, as_version=4)
        os.environ.update(env)
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
        return json.loads(nbformat.writes(nb))
    done = subprocess.run([sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute", str(NOTEBOOK),
                           "--output-dir", str(tmp_path / "out"), "--output", "executed",
                           "--ExecutePreprocessor.timeout=300"], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "out" / "executed.ipynb").read_text())


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    data = make_toy_imagefolder(tmp_path / "toy", classes=3, train_per_class=8, val_per_class=4, size=16)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "nb", "model": "test_efficientnet", "data": str(data), "output": str(tmp_path / "runs"),
        "compare": {"probe": [{"method": "head"}], "lora": [{"method": "lora", "rank": 2}, {"method": "head"}]},
        "train": {"epochs": 1, "batch_size": 8, "workers": 0, "progress": True, "threads": 1},
        "augment": {"img_size": 32},
    }))
    for key in ("VISIONPEFT_NB_RECIPE", "VISIONPEFT_NB_OVERRIDES", "OMP_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)  # _execute's nbclient fallback sets them in this process
    env = {"VISIONPEFT_NB_RECIPE": str(recipe), "VISIONPEFT_NB_OVERRIDES": json.dumps(["train.epochs=1"]),
           "OMP_NUM_THREADS": "1"}
    nb = _execute(tmp_path, env)
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    kinds = {k for o in outputs for k in o.get("data", {})}
    assert {"text/markdown", "image/png"} <= kinds  # the results table and the Pareto plot are shown
    text = "".join("".join(o["text"]) if isinstance(o.get("text"), list) else o.get("text", "") for o in outputs)
    assert "full fine-tuning top-1" in text and "best PEFT" in text and "compare: run 3 of 3: " in text, text
    # the recipe asked for progress bars; the notebook turns them off (a notebook stores them as floods)
    assert [p for p in flood_problems(nb) if "local path" not in p] == []
    assert os.path.isdir(tmp_path / "runs")
