"""``train.compile``: torch.compile of the training module, in place, and one-line errors when it fails."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ...errors import ConfigError

__all__ = ["compile_in_place", "compile_failure"]


def compile_in_place(module: nn.Module, backend: str | Callable = "inductor") -> None:
    """Compile ``module``'s forward with ``torch.compile`` (``nn.Module.compile``), in place.

    ``backend`` is torch.compile's (``"inductor"`` generates fused C++/Triton kernels; tests use ``"eager"``,
    which traces the same graph without code generation).

    Unlike ``torch.compile(module)`` no ``OptimizedModule`` wrapper is made, so parameter names and state-dict
    keys keep no ``_orig_mod.`` prefix: checkpoints, adapters, EMA copies and merges see the plain model.
    Call it after the strategies are applied (the adapters are part of the compiled graph) and after an EMA
    copy was taken (a deep copy of a compiled module would call the original's compiled forward).
    Compilation itself happens lazily, on the first call in train mode and again on the first in eval mode.
    """
    module.compile(backend=backend)


def compile_failure(exc: BaseException) -> ConfigError | None:
    """A one-line :class:`ConfigError` for a failure inside torch.compile (``None`` for any other error)."""
    from torch._dynamo.exc import TorchDynamoException

    if not isinstance(exc, TorchDynamoException):
        return None
    inner = getattr(exc, "inner_exception", None) or exc.__cause__ or exc  # the backend's own error
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    cause = f"{type(inner).__name__}: {lines[0][:300]}" if lines else type(inner).__name__
    return ConfigError(f"train.compile: torch.compile failed on this machine ({cause}); "
                       "set train.compile: false, or install a working C++ compiler (CPU) / Triton (GPU)")
