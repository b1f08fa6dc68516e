"""``torchrun --nproc_per_node=2 -m visionpeft train RECIPE`` on CPU (gloo): one run dir, rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from visionpeft.data.toy import make_toy_imagefolder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes(tmp_path: Path):
    data = make_toy_imagefolder(tmp_path / "toy", classes=3, train_per_class=8, val_per_class=5, size=16)
    doc = {"name": "ddp", "model": "test_efficientnet", "data": str(data), "output": str(tmp_path / "runs"),
           "strategies": [{"method": "lora", "rank": 2}, {"method": "head"}],
           "train": {"epochs": 2, "batch_size": 4, "workers": 0, "progress": False, "device": "cpu",
                     "threads": 1},
           "augment": {"img_size": 32, "random_resized_crop": False, "hflip": 0.0}}
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "visionpeft", "train", str(recipe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs  # both ranks used rank 0's run directory
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["extra"]["world_size"] == 2
    # Validation covers the whole val split exactly once across the two ranks (15 images, no padding).
    top1 = metrics["metrics"]["top1"]
    assert round(top1 * 15) == top1 * 15 or abs(round(top1 * 15) - top1 * 15) < 1e-9
    assert proc.stdout.count("[ddp] epoch 2/2") == 1  # only rank 0 prints
    assert (runs[0] / "adapter" / "adapter.safetensors").is_file()
