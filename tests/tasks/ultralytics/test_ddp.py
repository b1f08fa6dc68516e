"""Multi-GPU support of PeftDetectionTrainer, tested without GPUs (no multi-GPU run is simulated here).

What a 2-GPU run does: the launching trainer (``device=0,1``) writes Ultralytics' DDP script + pickled state
and starts ``torch.distributed.run``; each worker re-creates the trainer from that state. Tested here:

* the launcher side, with ``select_device`` stubbed so ``device=0,1`` is accepted on a CPU machine and
  ``subprocess.run`` intercepted: settings exported to the environment only during the launch, nothing
  deleted from the run dir, no TensorBoard writer in the launcher, and the pickled state loads in a fresh
  interpreter as a trainer class carrying the strategies;
* the worker side: the script Ultralytics generates runs in a fresh process (single-process, on CPU) and
  trains with the same strategies, each visionpeft callback registered once;
* Ultralytics 8.3's script, which imports the trainer class by name: the environment restores the settings;
* ``rewrap_ddp`` on a one-process gloo group: DDP then tracks only the trainable parameters.

The real multi-GPU run (NCCL, two ranks, rank-0-only writes) needs GPUs; see docs/detection.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

pytest.importorskip("ultralytics")

import ultralytics.engine.trainer as ultra_trainer  # noqa: E402
from ultralytics.utils.dist import generate_ddp_file  # noqa: E402

import visionpeft  # noqa: E402
from visionpeft.tasks.ultralytics import callbacks as vp_callbacks  # noqa: E402
from visionpeft.tasks.ultralytics.ddp import ENV_VAR, launch_env, rewrap_ddp, settings_from_env  # noqa: E402
from visionpeft.tasks.ultralytics.trainer import PeftDetectionTrainer  # noqa: E402

from ..ultralytics_support import offline_args  # noqa: E402

STRATEGIES = [{"method": "freeze", "n": 2}, {"method": "lora", "rank": 4, "alpha": 8}, {"method": "head"}]


def _configured(run_dir: Path):
    return PeftDetectionTrainer.configure(STRATEGIES, run_dir=run_dir, run_name="ddp-run")


def _python(code: str, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=env if env is not None else dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_launcher_exports_settings_and_keeps_the_run_dir(coco8, weights, tmp_path, monkeypatch):
    # device=0,1 on a machine without CUDA: only the device lookup is stubbed; nothing touches a GPU.
    monkeypatch.setattr(ultra_trainer, "select_device", lambda *a, **k: torch.device("cuda", 0))
    monkeypatch.setattr(ultra_trainer, "get_torch_device_backend", lambda *a, **k: None)
    run_dir = tmp_path / "ddp"
    trainer = _configured(run_dir)(overrides=offline_args(tmp_path, model=weights, data=str(coco8), name="ddp",
                                                          device="0,1", batch=4))
    assert trainer.ddp and trainer.world_size == 2 and trainer.vp_logger is None
    (run_dir / "recipe.yaml").write_text("task: detection\n")  # what the runner writes before training
    launched: dict = {}

    def fake_run(cmd, check):  # what Ultralytics would start: torch.distributed.run <script>
        script = Path(cmd[-1])
        launched.update(cmd=cmd, env=os.environ.get(ENV_VAR), script=script.read_text())
        code = (
            "import json\nfrom ultralytics.utils.patches import torch_load\n"
            f"state = torch_load({str(script.with_suffix('.pt'))!r}, map_location='cpu')\n"
            "cls = state['trainer']\nfrom visionpeft.tasks.ultralytics.trainer import PeftDetectionTrainer\n"
            "print(json.dumps({'subclass': issubclass(cls, PeftDetectionTrainer), 'configured': cls.vp_configured,"
            " 'strategies': cls.vp_strategies, 'run_dir': cls.vp_run_dir_cfg, 'run_name': cls.vp_run_name,"
            " 'device': state['args']['device'], 'save_dir': state['args']['save_dir']}))"
        )
        launched["state"] = _python(code)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(ultra_trainer, "subprocess", SimpleNamespace(run=fake_run))  # this module's only
    trainer.train()
    assert launched["cmd"][1:3] == ["-m", "torch.distributed.run"] and "2" in launched["cmd"]
    assert json.loads(launched["env"])["strategies"] == trainer.vp_strategies  # exported during the launch...
    assert ENV_VAR not in os.environ  # ...and removed afterwards
    state = launched["state"]
    assert state["subclass"] and state["configured"] and state["strategies"] == trainer.vp_strategies
    assert state["run_dir"] == str(run_dir) and state["run_name"] == "ddp-run" and state["device"] == "0,1"
    assert Path(state["save_dir"]) == run_dir
    assert (run_dir / "recipe.yaml").is_file()  # Ultralytics would have deleted the save dir
    assert not list(run_dir.glob("events.out.tfevents.*"))  # the launcher trains nothing and logs nothing


def record_worker(tr) -> None:
    """on_train_end inside the worker process: what it re-created (pickled by reference into the state)."""
    own = vp_callbacks.make_callbacks()
    report = {
        "class": type(tr).__name__, "strategies": tr.vp_strategies, "run_dir": str(tr.vp_run_dir),
        "plan": visionpeft.get_plan(tr.model).strategies, "trainable": tr.vp_plan.trainable_count,
        "callback_counts": {e: sum(f is fn for f in tr.callbacks[e]) for e, fn in own.items()},
        "env": os.environ.get(ENV_VAR),
    }
    (Path(tr.vp_run_dir) / "worker.json").write_text(json.dumps(report))


@pytest.mark.parametrize("handed_model", [False, True], ids=["model-path", "adapted-model"])
def test_generated_ddp_script_recreates_and_trains(coco8, weights, tmp_path, handed_model):
    """model-path: as ``visionpeft train`` launches; adapted-model: as ``YOLO(...).train(trainer=...)`` does,
    which builds (and so adapts) ``trainer.model`` in the launcher, pickled for the workers as is."""
    run_dir = tmp_path / "worker"
    trainer = _configured(run_dir)(overrides=offline_args(tmp_path, model=weights, data=str(coco8), name="worker"))
    trainer.add_callback("on_train_end", record_worker)
    if handed_model:
        from ultralytics.nn.tasks import load_checkpoint

        base, _ = load_checkpoint(weights)
        trainer.model = trainer.get_model(cfg=base.yaml, weights=base)  # what ultralytics Model.train does
        assert visionpeft.get_plan(trainer.model) is not None
    with launch_env(trainer.vp_settings()):  # as PeftDetectionTrainer.train does around the launch
        script = generate_ddp_file(trainer)  # Ultralytics' own generator: script + cloudpickled state
        proc = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300,
                              env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads((run_dir / "worker.json").read_text())
    assert report["strategies"] == trainer.vp_strategies and report["run_dir"] == str(run_dir)
    assert report["plan"] == ["freeze", "lora", "head"] and report["trainable"] > 0
    assert set(report["callback_counts"].values()) == {1}  # the pickled callbacks were not added twice
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["strategy"] == "ddp-run" and metrics["trainable_params"] == report["trainable"]
    for name in ("adapter/adapter.json", "adapter_last/adapter.json", "plan.json", "weights/merged.pt"):
        assert (run_dir / name).exists(), name
    assert list(run_dir.glob("events.out.tfevents.*"))  # rank 0's TensorBoard events


ULTRALYTICS_83_SCRIPT = """
overrides = {overrides!r}
if __name__ == "__main__":
    from {module} import {name}
    from ultralytics.utils import DEFAULT_CFG_DICT

    cfg = DEFAULT_CFG_DICT.copy()
    cfg.update(save_dir='')   # handle the extra key 'save_dir'
    trainer = {name}(cfg=cfg, overrides=overrides)
    import json
    print(json.dumps({{"class": type(trainer).__name__, "strategies": trainer.vp_strategies,
                      "run_dir": str(trainer.vp_run_dir), "run_name": trainer.vp_run_name}}))
"""


def test_ultralytics_83_script_imports_by_name(coco8, weights, tmp_path):
    """Ultralytics 8.3 writes ``from <module> import <name>``: the settings come back from the environment."""
    run_dir = tmp_path / "old"
    trainer = _configured(run_dir)(overrides=offline_args(tmp_path, model=weights, data=str(coco8), name="old"))
    module, name = type(trainer).__module__, type(trainer).__name__
    assert (module, name) == ("visionpeft.tasks.ultralytics.trainer", "PeftDetectionTrainer")
    script = tmp_path / "ddp_83.py"
    script.write_text(ULTRALYTICS_83_SCRIPT.format(overrides=vars(trainer.args), module=module, name=name))
    code = f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')"
    with launch_env(trainer.vp_settings()):
        worker = _python(code)
    assert worker["strategies"] == trainer.vp_strategies and worker["run_dir"] == str(run_dir)
    assert worker["run_name"] == "ddp-run"
    without = _python(code, env={k: v for k, v in os.environ.items() if k != ENV_VAR})
    assert without["strategies"] == [{"method": "full"}]  # what the environment variable prevents


def test_settings_from_env_validates(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert settings_from_env() is None
    with launch_env({"strategies": None, "run_dir": "/x", "tensorboard": False, "run_name": "r"}):
        assert settings_from_env() == {"strategies": None, "run_dir": "/x", "tensorboard": False, "run_name": "r"}
    assert ENV_VAR not in os.environ
    monkeypatch.setenv(ENV_VAR, "{not json")
    with pytest.raises(visionpeft.errors.ConfigError, match="not valid JSON"):
        settings_from_env()
    monkeypatch.setenv(ENV_VAR, json.dumps({"strategies": "lora"}))
    with pytest.raises(visionpeft.errors.ConfigError, match="'strategies' list"):
        settings_from_env()


def test_rewrap_ddp_tracks_only_trainable_parameters(tmp_path):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already running in this test process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        stale = nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)  # all trainable
        for p in model[0].parameters():  # what the plan does after Ultralytics wrapped the model
            p.requires_grad_(False)

        def steps(wrapper):
            for _ in range(3):
                wrapper(torch.randn(5, 4)).sum().backward()

        with pytest.raises(RuntimeError, match="finished reduction"):
            steps(stale)  # DDP still waits for the frozen parameters' gradients
        fresh = rewrap_ddp(stale)  # the stale wrapper stays referenced: its hooks must be gone anyway
        assert isinstance(fresh, nn.parallel.DistributedDataParallel) and fresh.module is model
        assert fresh.find_unused_parameters is False
        model.zero_grad(set_to_none=True)
        steps(fresh)
        assert model[0].weight.grad is None and model[2].weight.grad is not None
        assert rewrap_ddp(model) is model  # not a DDP wrapper: unchanged
    finally:
        dist.destroy_process_group()
