"""Device settings, every form a user writes, checked against this machine before any work starts.

One rule for both tasks (classification's ``train.device``, Ultralytics' ``ultralytics.device``, ``predict
device=``, ``eval``/``resume`` of a recorded run): the setting is parsed (:func:`parse_device`: ``auto``, ``cpu``,
``mps``, ``cuda``, ``cuda:N``, ``cuda:N,M``, ``N``, ``N,M``, ``-1``, an int, a list of ints) and every device it
names must exist here (:func:`check_device`), else one line naming the setting and what this machine has
(``train.device=cuda:1: there is no GPU 1; this machine has cpu, cuda:0``). Without it a missing GPU surfaced
after the data was read and the model built, as a traceback from inside torch or Ultralytics.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["parse_device", "check_device", "available_devices", "torch_device", "DEVICE_FORMS"]

DEVICE_FORMS = "cpu, mps, cuda, cuda:N, a GPU index N, a list of GPU indices such as 0,1, or -1 (an idle GPU)"
_INDICES = re.compile(r"^\d+(,\d+)*$")

# A parsed device: ("auto"|"cpu"|"mps"|"cuda", GPU index or None for "any")
Device = tuple[str, int | None]


def parse_device(value: Any) -> list[Device]:
    """The devices a setting names; ``ValueError`` (a phrase) for a form that names none."""
    if value is None:
        return [("auto", None)]
    if isinstance(value, bool | float):
        raise ValueError(f"expected {DEVICE_FORMS}")
    if isinstance(value, int):
        return [("cuda", None if value == -1 else value)] if value >= -1 else _bad()
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            return [("cuda", v) for v in value]
        return _bad()
    if not isinstance(value, str):
        return _bad()
    text = value.replace(" ", "").lower()
    if text in ("", "auto"):
        return [("auto", None)]
    if text in ("cpu", "mps"):
        return [(text, None)]
    if text in ("cuda", "-1"):
        return [("cuda", None)]
    text = text.removeprefix("cuda:")
    if _INDICES.match(text):
        return [("cuda", int(i)) for i in text.split(",")]
    return _bad()


def _bad() -> list[Device]:
    raise ValueError(f"expected {DEVICE_FORMS}")


def available_devices() -> list[str]:
    """What this machine has: ``cpu``, every ``cuda:N``, ``mps`` where it works."""
    import torch  # here, not at import: recipe validation (parse_device) must not load torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def check_device(value: Any, where: str, *, several: bool = True) -> list[Device]:
    """Raise :class:`ConfigError` unless every device ``value`` names exists on this machine.

    Args:
        where: the setting's name for the message (``train.device``, ``ultralytics.device``, ``predict: device``).
        several: whether the setting may name several GPUs (Ultralytics: one DDP worker each); classification
            trains on one device per process (several GPUs: launch with torchrun).
    """
    import torch  # here, not at import: recipe validation (parse_device) must not load torch

    try:
        devices = parse_device(value)
    except ValueError as exc:
        raise ConfigError(f"{where}={value}: {exc}") from None
    have = available_devices()
    if len(devices) > 1 and not several:
        raise ConfigError(f"{where}={value}: one device per process here; for several GPUs launch with "
                          "torchrun --nproc_per_node=N (each process takes its own GPU). This machine has "
                          f"{', '.join(have)}")
    for kind, index in devices:
        if kind in ("auto", "cpu"):
            continue
        name = kind if index is None else f"{kind}:{index}"
        if kind == "mps" and "mps" not in have or kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"{where}={value}: no {kind.upper()} device here; this machine has {', '.join(have)}")
        if kind == "cuda" and index is not None and name not in have:
            raise ConfigError(f"{where}={value}: there is no GPU {index}; this machine has {', '.join(have)}")
    return devices


def torch_device(value: Any, where: str) -> torch.device:
    """The one ``torch.device`` a single-device setting names, checked (``auto``: this rank's GPU, else CPU)."""
    import os

    import torch  # here, not at import: recipe validation (parse_device) must not load torch

    ((kind, index),) = check_device(value, where, several=False)
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(kind) if index is None else torch.device(kind, index)
