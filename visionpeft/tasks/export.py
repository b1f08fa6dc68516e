"""``visionpeft export RUN_DIR --format {visionpeft,peft} -o DIR``: a run's adapter as files to share.

``visionpeft``: the run's own ``adapter/`` files (``adapter.json`` + ``adapter.safetensors``), checked and copied.
``peft``: HF PEFT's ``adapter_config.json`` + ``adapter_model.safetensors`` (:mod:`visionpeft.peft_format`) for
``peft.PeftModel.from_pretrained(base, DIR)``, written from the run's model rebuilt as ``eval`` / ``predict``
rebuild it (classification: base + adapter; Ultralytics tasks: the run's best checkpoint). What PEFT cannot
represent is refused with one line before anything is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ConfigError

__all__ = ["export_run", "FORMATS"]

FORMATS = ("visionpeft", "peft")


def _check_out(out: Path) -> Path:
    from ..outputs import make_dir

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "a file" if not out.is_dir() else "a folder that is not empty"
        raise ConfigError(f"export -o: {out} is {what}; give a new or empty folder")
    return make_dir(out, "export -o")


def export_run(run_dir: str | Path, fmt: str, out: str | Path) -> Path:
    """Write the adapter of the run in ``run_dir`` in format ``fmt`` into the new folder ``out``; returns it.

    Raises:
        ConfigError: not a run directory, an unknown format, an output folder that is not empty, or (``peft``) an
            adapter PEFT cannot represent exactly.
    """
    from ..adapter_io import CONFIG_NAME, WEIGHTS_NAME, read_adapter_config, save_adapter
    from ..run_dir import engine_of_run

    run_dir, out = Path(run_dir), Path(out)
    if fmt not in FORMATS:
        raise ConfigError(f"export --format {fmt}: use one of {list(FORMATS)}")
    task = engine_of_run(run_dir).task
    adapter = run_dir / "adapter"
    read_adapter_config(adapter)  # a run without a finished adapter is refused before anything is created
    if fmt == "visionpeft":
        _check_out(out)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            shutil.copy2(adapter / name, out / name)
        return out
    from ..peft_format import export_peft
    from . import get_task

    model = get_task(task).load_model(run_dir)
    export_peft(model)  # refuses (one line) before the output folder exists
    _check_out(out)
    return save_adapter(model, out, format="peft")
