"""No hidden global effects: import, plotting, training and registration leave process-wide state alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from visionpeft.errors import ConfigError
from visionpeft.strategies import registry
from visionpeft.strategies.base import Strategy
from visionpeft.strategies.simple import FullConfig

REPO = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "svg"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_importing_any_module_leaves_the_random_generators_alone() -> None:
    out = _run("""
        import importlib, pkgutil, random
        import numpy as np, torch
        torch.manual_seed(123); np.random.seed(1); random.seed(2)
        t, n, r = torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
        import visionpeft
        names = [m.name for m in pkgutil.walk_packages(visionpeft.__path__, "visionpeft.")]
        for name in names:
            if not name.endswith("__main__"):
                importlib.import_module(name)
        print(len(names), torch.equal(t, torch.random.get_rng_state()), bool((n == np.random.get_state()[1]).all()),
              r == random.getstate())
    """)
    # The last line: Ultralytics prints "Creating new Ultralytics Settings ..." first when it is the first process to
    # use this session's temporary YOLO_CONFIG_DIR (this test run alone).
    count, *same = out.splitlines()[-1].split()
    assert int(count) > 40 and same == ["True", "True", "True"]


def test_first_apply_in_a_process_initialises_like_later_ones() -> None:
    """The issue: the first apply() imported the LoRA module, which built layers and drew from the RNG."""
    out = _run("""
        import torch
        from torch import nn
        import visionpeft
        def adapters():
            torch.manual_seed(0)
            net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 3))
            visionpeft.apply(net, [{"method": "lora", "rank": 2}, {"method": "head"}])
            return net[0].lora_A.detach().clone()
        print(torch.equal(adapters(), adapters()))
    """)
    assert out == "True"


def test_pareto_plot_keeps_the_callers_matplotlib_backend(tmp_path: Path) -> None:
    import matplotlib
    import matplotlib.pyplot as plt

    from visionpeft.report.pareto import plot_pareto

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a caller's own choice (a notebook's inline backend, a GUI ...)
    try:
        figures = plt.get_fignums()
        rows = [{"strategy": "full", "trainable_params": 1000, "trainable_pct": 100.0, "top1": 0.9},
                {"strategy": "lora", "trainable_params": 10, "trainable_pct": 1.0, "top1": 0.8}]
        path = plot_pareto(rows, "top1", tmp_path / "p.png")
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == figures
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(before)


def test_training_restores_torch_threads(tmp_path: Path) -> None:
    from visionpeft.data.toy import make_toy_imagefolder
    from visionpeft.recipe import parse_recipe
    from visionpeft.tasks.classification import TASK

    toy = make_toy_imagefolder(tmp_path / "toy", classes=2, train_per_class=4, val_per_class=2, size=16)
    recipe = parse_recipe({
        "name": "t", "model": "test_efficientnet", "data": str(toy), "output": str(tmp_path), "seed": 0,
        "strategies": [{"method": "head"}], "augment": {"img_size": 32, "random_resized_crop": False},
        "train": {"epochs": 1, "batch_size": 4, "workers": 0, "progress": False, "threads": 1},
    })
    torch.set_num_threads(2)  # conftest restores the test-wide setting afterwards
    TASK.train(recipe, list(recipe.strategies), tmp_path / "run", "head")
    assert torch.get_num_threads() == 2


class _Clash(Strategy):
    method = "lora"
    config_cls = FullConfig

    def apply(self, model, ctx):  # noqa: ANN001, ANN201
        raise AssertionError("never called")


def test_registering_an_existing_method_name_is_refused() -> None:
    original = registry._REGISTRY.get("lora") or registry.config_class("lora") and registry._REGISTRY["lora"]
    with pytest.raises(ConfigError, match=r"'lora' is already registered by visionpeft\.strategies\.lora"):
        registry.register(_Clash)
    assert registry._REGISTRY["lora"] is original
    assert registry.register(original) is original  # the same class again is not a clash


def test_a_new_method_name_registers() -> None:
    class Fresh(_Clash):
        method = "test_fresh_method"

    try:
        registry.register(Fresh)
        assert "test_fresh_method" in registry.available()
    finally:
        registry._REGISTRY.pop("test_fresh_method", None)
