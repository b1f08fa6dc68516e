"""The frozen region and the claims: the one record of what must not train, what already trains, and why.

Every freeze form lands in one :class:`FrozenRegion`: ``freeze.n`` (an int or a list), ``freeze.patterns``,
``freeze.bn='frozen'`` (BatchNorm affines) and the backend's ``spec.always_frozen`` (Ultralytics ``.dfl``);
``freeze.unfreeze`` takes parameters out again. Every strategy reads the region the same way: ``head``,
``bitfit``, ``norm`` and ``full`` train nothing inside it, ``lora``, ``dora``, ``loha``, ``lokr`` and ``ssf``
wrap no layer whose weight lies in it (:mod:`visionpeft.strategies.targets`), ``vpt`` gives no prompts to a
block and ``adaptformer`` no adapter to an MLP that lies in it entirely.

Both records are keyed by parameter *identity*, not by name: LoRA renames ``qkv.weight`` to
``qkv.base_layer.weight`` when it wraps the layer, and the region must still hold it afterwards.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from torch import nn

__all__ = ["Claims", "FrozenRegion"]


class FrozenRegion:
    """Parameters no strategy may train, each with the cause the user wrote.

    A cause is a short string naming the recipe field, e.g. ``"freeze.n=2"``,
    ``"freeze.patterns ['blocks.0']"``, ``"spec.always_frozen '.dfl'"``. The first cause recorded for a
    parameter is kept.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[nn.Parameter, str]] = {}

    def add(self, params: Iterable[nn.Parameter], cause: str) -> int:
        """Put ``params`` into the region because of ``cause``; returns how many were new."""
        before = len(self._entries)
        for p in params:
            self._entries.setdefault(id(p), (p, cause))
        return len(self._entries) - before

    def release(self, params: Iterable[nn.Parameter]) -> None:
        """Take ``params`` out of the region (``freeze.unfreeze``)."""
        for p in params:
            self._entries.pop(id(p), None)

    def cause(self, param: nn.Parameter) -> str | None:
        """Why ``param`` is frozen, or ``None`` when it lies outside the region."""
        entry = self._entries.get(id(param))
        return entry[1] if entry is not None and entry[0] is param else None

    def __contains__(self, param: object) -> bool:
        return isinstance(param, nn.Parameter) and self.cause(param) is not None

    def __len__(self) -> int:
        return len(self._entries)

    def params(self) -> list[nn.Parameter]:
        """Every parameter in the region."""
        return [p for p, _ in self._entries.values()]

    def module_cause(self, module: nn.Module) -> str | None:
        """The cause when *every* parameter of ``module`` lies in the region (``None`` otherwise or when it
        has no parameters)."""
        causes = [self.cause(p) for p in module.parameters()]
        if not causes or any(c is None for c in causes):
            return None
        return causes[0]

    def describe(self, params: Iterable[nn.Parameter]) -> str:
        """``"12 by freeze.n=2, 1 by spec.always_frozen '.dfl'"`` for the frozen ones among ``params``."""
        counts = Counter(c for c in (self.cause(p) for p in params) if c is not None)
        return ", ".join(f"{n} by {cause}" for cause, n in counts.most_common())


class Claims:
    """Parameters a strategy made trainable, with the label of the strategy that claimed it first.

    A later strategy must not silently take a claim away (LoRA freezes the base weight it wraps), so
    :func:`visionpeft.apply` re-asserts every claim at the end and the plan names its owner.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[nn.Parameter, str]] = {}

    def add(self, params: Iterable[nn.Parameter], owner: str) -> None:
        for p in params:
            self._entries.setdefault(id(p), (p, owner))

    def owner(self, param: nn.Parameter) -> str | None:
        entry = self._entries.get(id(param))
        return entry[1] if entry is not None and entry[0] is param else None

    def __contains__(self, param: object) -> bool:
        return isinstance(param, nn.Parameter) and self.owner(param) is not None

    def params(self) -> list[nn.Parameter]:
        return [p for p, _ in self._entries.values()]
