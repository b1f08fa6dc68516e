"""Writing and loading HF PEFT adapter folders: the entry points behind ``save_adapter(format="peft")`` and
``load_adapter`` on a PEFT folder or Hugging Face Hub repository id.

Loading a PEFT adapter with visionpeft::

    visionpeft.load_adapter(vit, "path/to/peft_adapter")           # folder written by PeftModel.save_pretrained
    visionpeft.load_adapter(vit, "user/vit-lora")                  # a Hub repo id (downloaded via huggingface_hub)
    visionpeft.load_adapter(vit, "path/to/peft_adapter", name="a") # one of several named adapters

Writing one PEFT loads::

    visionpeft.save_adapter(model, "out/peft", format="peft")
    peft_model = peft.PeftModel.from_pretrained(fresh_base, "out/peft")

peft itself is never needed (the format is plain JSON + safetensors); ``huggingface_hub`` only for a repo id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ..api import apply, get_state, unwrap
from ..checkpoint import atomic_write
from ..errors import ConfigError
from ..foreign import refuse_foreign
from ..outputs import make_dir
from ..plan import TrainabilityPlan
from ..snapshot import atomic
from ..spec import ModelSpec
from .export import export_peft
from .names import CONFIG_NAME, WEIGHTS_NAME
from .reader import PeftAdapter, check_tensors, copy_tensors, is_peft_dir, read_peft_adapter

__all__ = ["save_peft_adapter", "load_peft_adapter", "read_peft_source", "resolve_source", "looks_like_peft"]


def save_peft_adapter(model: Any, directory: str | Path) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` for ``model``'s adapter; returns ``directory``.

    Everything is computed (and every refusal raised) before the folder is created or a file written.

    Raises:
        ConfigError: PEFT cannot represent the adapter exactly (:mod:`visionpeft.peft_format.export`).
    """
    result = export_peft(model)
    state = get_state(unwrap(model))
    assert state is not None  # export_peft refused otherwise
    # safetensors metadata: PEFT's own "format" key, plus where the adapter came from (PEFT ignores the rest).
    meta = {"format": "pt", "visionpeft_strategies": json.dumps([c.model_dump(mode="json") for c in state.configs]),
            "visionpeft_base": str(state.spec.name)}
    directory = make_dir(directory, "save_adapter(format='peft')")  # a file in the way: one line
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(result.tensors, p, metadata=meta))
    atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(result.config, indent=2)))
    return directory


def looks_like_peft(source: str | Path) -> bool:
    """A local PEFT folder, or (no such local path) something shaped like a Hub repo id ``owner/name``."""
    path = Path(source)
    if path.exists():
        return is_peft_dir(path)
    text = str(source)
    return text.count("/") == 1 and not text.startswith((".", "/")) and all(text.split("/"))


def resolve_source(source: str | Path) -> Path:
    """A local folder as it is; a Hub repo id downloaded (config + safetensors only) through
    ``huggingface_hub.snapshot_download``, as PEFT's ``from_pretrained`` does; ``HF_HUB_OFFLINE`` is honoured."""
    path = Path(source)
    if path.exists():
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConfigError(f"load_adapter: {source} is no local folder, and loading a Hub repo id needs "
                          "huggingface_hub (pip install huggingface_hub)") from None
    try:
        return Path(snapshot_download(str(source), allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
    except Exception as exc:  # offline, unknown repo, no access: huggingface_hub raises many types
        raise ConfigError(f"load_adapter: {source} is no local folder and could not be fetched from the Hugging "
                          f"Face Hub ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None


def read_peft_source(root: Any, source: str | Path) -> PeftAdapter:
    """:func:`~visionpeft.peft_format.reader.read_peft_adapter` of a local folder or Hub repo id."""
    return read_peft_adapter(root, resolve_source(source))


def load_peft_adapter(model: Any, source: str | Path, spec: ModelSpec | None = None) -> TrainabilityPlan:
    """Adapt the plain base ``model`` with the PEFT adapter at ``source`` (folder or Hub repo id). All or nothing.

    The model then computes what ``peft.PeftModel.from_pretrained(model, source)`` computes; it is an ordinary
    visionpeft model (``merge``, ``save_adapter``, training).

    Raises:
        ConfigError: a model already adapted (by visionpeft or PEFT), an adapter visionpeft cannot represent, or
            tensors that do not fit the model (one line each).
    """
    root = unwrap(model)
    refuse_foreign(root, "load_adapter")
    if get_state(root) is not None:
        raise ConfigError("load_adapter: this model is already adapted; load the PEFT adapter onto a fresh base model")
    adapter = read_peft_source(root, source)
    with atomic(root):
        plan = apply(root, adapter.strategies, spec)
        check_tensors(root, plan.trainable, adapter.tensors, adapter.source)
        copy_tensors(root, adapter.tensors)
    return plan
