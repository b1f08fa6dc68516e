"""The CLI starts without importing torch, timm or Ultralytics for --help, `recipes` and a missing recipe.

Checked through ``sys.modules`` in a fresh interpreter (not timed: timings on shared CI machines are noise).
Each heavy import costs 1-10 s before the user sees anything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "timm", "ultralytics", "matplotlib", "tensorboard")

# Runs `python -m visionpeft ARGS` in-process and prints, at exit, the heavy packages that were imported.
PROBE = """
import atexit, json, runpy, sys
heavy = {heavy!r}
atexit.register(lambda: print("IMPORTED=" + json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy))),
                              file=sys.stderr))
sys.argv = ["visionpeft", *{args!r}]
runpy.run_module("visionpeft", run_name="__main__", alter_sys=True)
"""


def _heavy_imports(args: list[str], cwd) -> tuple[int, list[str], str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY, args=args)], capture_output=True,
                         text=True, cwd=cwd, timeout=120)
    line = next(x for x in out.stderr.splitlines() if x.startswith("IMPORTED="))
    return out.returncode, json.loads(line[len("IMPORTED="):]), out.stderr


@pytest.mark.parametrize("args, rc, says", [
    (["--help"], 0, ""),
    (["train", "--help"], 0, ""),
    (["recipes"], 0, ""),
    (["train", "no/such/recipe.yaml"], 2, "recipe file not found"),
    (["compare", "quickstartt"], 2, "did you mean quickstart"),
    (["train", "quickstart", "train.epochz=3"], 2, "train.epochz: unknown key; did you mean 'epochs'?"),
    (["compare", "classification/compare_cnn", "optim.lrr=0.1"], 2, "optim.lrr: unknown key"),
])
def test_cli_starts_without_heavy_imports(args, rc, says, tmp_path):
    code, imported, err = _heavy_imports(args, tmp_path)
    assert code == rc, err
    assert says in err
    assert imported == [], f"visionpeft {' '.join(args)} imported {imported}"


def test_import_visionpeft_is_light_and_names_load_on_use(tmp_path):
    code = ("import sys, visionpeft; assert 'torch' not in sys.modules, 'import visionpeft imported torch'; "
            "apply = visionpeft.apply; assert 'torch' in sys.modules; "
            "assert visionpeft.apply is apply and 'apply' in dir(visionpeft); "
            "from visionpeft import load_adapter, TrainabilityPlan, GradientProbe; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    missing = subprocess.run([sys.executable, "-c", "import visionpeft; visionpeft.nope"], capture_output=True,
                             text=True, cwd=tmp_path, timeout=120)
    assert "AttributeError: module 'visionpeft' has no attribute 'nope'" in missing.stderr


def test_ultralytics_trainers_are_top_level_names_loaded_on_use(tmp_path):
    code = ("import sys, visionpeft; assert 'PeftDetectionTrainer' in visionpeft.__all__; "
            "assert not {'torch', 'ultralytics'} & set(sys.modules), 'import visionpeft imported torch/ultralytics'; "
            "from visionpeft import PeftDetectionTrainer, trainer_for; "
            "assert trainer_for('detect') is PeftDetectionTrainer; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr
