"""notebooks/quickstart.ipynb executes top to bottom (nbclient) on a tiny setting and shows its results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from visionpeft.data.toy import make_toy_imagefolder

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    data = make_toy_imagefolder(tmp_path / "toy", classes=3, train_per_class=8, val_per_class=4, size=16)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "nb", "model": "test_efficientnet", "data": str(data), "output": str(tmp_path / "runs"),
        "compare": {"probe": [{"method": "head"}], "lora": [{"method": "lora", "rank": 2}, {"method": "head"}]},
        "train": {"epochs": 1, "batch_size": 8, "workers": 0, "progress": False, "threads": 1},
        "augment": {"img_size": 32},
    }))
    monkeypatch.setenv("VISIONPEFT_NB_RECIPE", str(recipe))
    monkeypatch.setenv("VISIONPEFT_NB_OVERRIDES", json.dumps(["train.epochs=1"]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    kinds = {k for o in outputs for k in o.get("data", {})}
    assert {"text/markdown", "image/png"} <= kinds  # the results table and the Pareto plot are shown
    text = "".join(o.get("text", "") for o in outputs)
    assert "full fine-tuning top-1" in text and "best PEFT" in text
    assert os.path.isdir(tmp_path / "runs")
