"""Several saved adapters on one base model, switched without reloading the base.

::

    model = timm.create_model("vit_tiny_patch16_224", num_classes=5, ...)   # the base, built once
    visionpeft.load_adapter(model, "runs/lora/adapter", name="lora")      # checked and activated (the first)
    visionpeft.load_adapter(model, "runs/vpt/adapter", name="vpt")        # checked; "lora" stays active
    visionpeft.set_adapter(model, "vpt")    # now computes exactly what a fresh base + load_adapter(vpt) computes
    visionpeft.set_adapter(model, None)     # the plain base model

The adapters may be of any strategies, each its own (LoRA of rank 8 beside VPT prompts beside SSF + head): a switch
restores the plain base - module structure from a snapshot taken when the first named adapter was loaded
(:class:`~visionpeft.snapshot.ModelSnapshot`: modules, hooks, flags, attributes), and the original values of the
few base tensors adapters overwrite (a head, biases, norms, BatchNorm statistics) - then applies the next adapter's
recorded strategies and puts its own parameters in. No base weight is read again; a switch costs one ``apply``.

Each adapter keeps its own ``nn.Parameter`` objects across switches, as HF PEFT does: the first activation adopts
the parameters ``apply`` created (and gives the adapter its own copy of every base tensor it trains in place, a
head or biases, so the base's objects stay the base's), and every later activation puts those same objects back
into the freshly applied modules. An optimizer, scheduler or EMA built over ``model.parameters()`` while an
adapter is active therefore keeps updating that adapter after ``set_adapter(B)``, ``set_adapter(A)``; changes made
while it is active (training it further) are kept when switching away. An inactive adapter's parameters have
``requires_grad`` off (as in PEFT); BatchNorm statistics an adapter lets change are copied in and out. A
``DistributedDataParallel`` wrapper registers its parameters once, so switching it is refused: switch the module,
then wrap it.

Refused, with one line each (:class:`~visionpeft.errors.ConfigError`): an unknown or duplicate name, a named load
onto a model adapted another way (``apply`` / ``load_adapter`` without ``name``), and any switch after
:func:`visionpeft.merge` folded the active adapter into the base weights (the base is gone; build a fresh one).
Every adapter file is checked against the base exactly as :func:`visionpeft.load_adapter` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import ConfigError, closest
from .foreign import refuse_foreign
from .snapshot import ModelSnapshot
from .spec import ModelSpec
from .wrappers import is_ddp, refuse_ddp, unwrap

if TYPE_CHECKING:
    from .plan import TrainabilityPlan

__all__ = ["load_adapter", "load_named_adapter", "set_adapter", "active_adapter", "list_adapters", "BANK_ATTR"]

BANK_ATTR = "_visionpeft_adapters"


@dataclass
class _Entry:
    strategies: list[dict[str, Any]]
    tensors: dict[str, torch.Tensor]  # values not yet adopted as parameters, and BatchNorm statistics
    source: str
    params: dict[str, nn.Parameter] = field(default_factory=dict)  # the adapter's own objects, kept across switches


@dataclass
class _Bank:
    """The named adapters of one base model and what restores that base exactly."""

    spec: ModelSpec
    snapshot: ModelSnapshot | None = None
    plain: dict[int, str] = field(default_factory=dict)  # data_ptr -> state key of every plain base tensor
    originals: dict[str, torch.Tensor] = field(default_factory=dict)  # base tensors adapters overwrite
    entries: dict[str, _Entry] = field(default_factory=dict)
    active: str | None = None
    displaced: set[int] = field(default_factory=set)  # data_ptr of base parameters the active adapter stands in for
    state: Any = None  # the AdaptedState the active adapter's apply attached (detects merge / outside changes)


def _bank(root: nn.Module) -> _Bank | None:
    return getattr(root, BANK_ATTR, None)


def _new_bank(root: nn.Module, spec: ModelSpec | None) -> _Bank:
    from .api import get_state

    refuse_foreign(root, "load_adapter")
    if get_state(root) is not None:
        raise ConfigError("load_adapter(name=...): this model is already adapted (visionpeft.apply or load_adapter "
                          "without a name); named adapters go onto the plain base model: build a fresh one")
    if spec is None:
        from .backends import spec_for

        spec = spec_for(root)
    bank = _Bank(spec=spec)
    setattr(root, BANK_ATTR, bank)  # before the snapshot: restoring it keeps the bank
    bank.snapshot = ModelSnapshot(root)
    bank.plain = {t.data_ptr(): k for k, t in root.state_dict(keep_vars=True).items() if t.numel()}
    return bank


def _check_intact(root: nn.Module, bank: _Bank, what: str) -> None:
    """The model must still be as the bank left it: no merge, no apply / load_adapter outside it, same tensors."""
    from .api import get_state

    live = {t.data_ptr() for t in root.state_dict(keep_vars=True).values() if t.numel()} | bank.displaced
    if not live.issuperset(bank.plain):
        raise ConfigError(f"{what}: the base model's tensors were moved or replaced (model.to(device), .half(), ...) "
                          "after the first named adapter was loaded; move or convert the base model first, then load "
                          "the adapters")
    state = get_state(root)
    if state is bank.state:
        return
    if bank.active is not None and state is None:
        raise ConfigError(f"{what}: adapter {bank.active!r} was merged into the base weights (visionpeft.merge) or "
                          "removed, so the base the adapters were loaded onto is gone and no adapter can be switched; "
                          "load the adapters onto a freshly built base model")
    raise ConfigError(f"{what}: the model was adapted outside the named adapters (visionpeft.apply or load_adapter "
                      "without a name); load every adapter with load_adapter(model, path, name=...)")


def _deactivate(root: nn.Module, bank: _Bank) -> None:
    """Back to the plain base: keep the active adapter's parameter objects and statistics, restore the structure."""
    if bank.active is not None:
        entry = bank.entries[bank.active]
        sd = root.state_dict()
        entry.tensors = {k: sd[k].detach().clone() for k in entry.tensors}  # buffers: their values
        for p in entry.params.values():
            p.requires_grad_(False)  # inactive, as HF PEFT leaves it: an optimizer step skips it
    assert bank.snapshot is not None
    bank.snapshot.restore()  # also puts the base's own parameter objects back where the adapter stood in
    plain = root.state_dict()
    with torch.no_grad():
        for key, value in bank.originals.items():
            plain[key].copy_(value)
    bank.active, bank.state, bank.displaced = None, None, set()


def _owner(root: nn.Module, key: str) -> tuple[nn.Module, str]:
    path, _, leaf = key.rpartition(".")
    return (root.get_submodule(path) if path else root), leaf


def _activate(root: nn.Module, bank: _Bank, name: str, entry: _Entry) -> None:
    """Apply ``entry``'s strategies to the plain base and put in its own parameters and statistics."""
    from .api import apply, get_state

    apply(root, entry.strategies, bank.spec)
    with torch.no_grad():
        for key in list(entry.tensors):
            module, leaf = _owner(root, key)
            live = module._parameters.get(leaf)
            if live is None:  # a buffer (BatchNorm statistics): values in, the base's recorded first
                _copy_buffer(root, bank, key, entry.tensors[key])
            elif live.data_ptr() in bank.plain:  # a base tensor trained in place: the adapter gets its own object
                own = nn.Parameter(live.detach().clone(), requires_grad=live.requires_grad)
                entry.params[key] = own
                own.copy_(entry.tensors.pop(key))
            else:  # created by apply: adopted as the adapter's object from now on
                live.copy_(entry.tensors.pop(key))
                entry.params[key] = live
        for key, own in entry.params.items():
            module, leaf = _owner(root, key)
            live = module._parameters[leaf]
            if live.data_ptr() in bank.plain:
                bank.displaced.add(live.data_ptr())
            own.requires_grad_(live.requires_grad)
            module._parameters[leaf] = own
    bank.active, bank.state = name, get_state(root)


def _copy_buffer(root: nn.Module, bank: _Bank, key: str, value: torch.Tensor) -> None:
    live = root.state_dict(keep_vars=True)[key]
    base_key = bank.plain.get(live.data_ptr()) if live.numel() else None
    if base_key is not None and base_key not in bank.originals:
        bank.originals[base_key] = live.detach().clone()
    live.detach().copy_(value)


def _switch(root: nn.Module, bank: _Bank, name: str | None) -> None:
    _deactivate(root, bank)
    if name is not None:
        _activate(root, bank, name, bank.entries[name])


def _read_checked(root: nn.Module, bank: _Bank, directory: Path, ignore_fingerprint: bool,
                  ignore_identity: bool) -> _Entry:
    """Read an adapter directory and check it against the plain base as ``load_adapter`` does (model is plain)."""
    from . import adapter_io as io
    from .api import apply
    from .peft_format import check_tensors, looks_like_peft, read_peft_source

    if looks_like_peft(directory) and not (directory / io.CONFIG_NAME).is_file():
        peft = read_peft_source(root, directory)
        plan = apply(root, peft.strategies, bank.spec)
        check_tensors(root, plan.trainable, peft.tensors, peft.source)
        return _Entry(strategies=peft.strategies, tensors=peft.tensors, source=peft.source)
    meta = io.read_adapter_config(directory)
    tensors, header = io._read_tensors(directory)
    io._check_recorded_strategies(meta, header, directory)
    if not ignore_identity:
        io._check_identity(bank.spec, meta, directory)
    plan = apply(root, meta["strategies"], bank.spec)
    io._check_keys(root, plan, tensors, meta, directory)
    if not ignore_identity:
        io._check_structure(root, meta, directory)
    if not ignore_fingerprint:
        io._check_fingerprint(root, tensors, meta, directory)
    return _Entry(strategies=list(meta["strategies"]), tensors=tensors, source=str(directory))


def load_adapter(model: Any, directory: str | Path, spec: ModelSpec | None = None, ignore_fingerprint: bool = False,
                 ignore_identity: bool = False, name: str | None = None) -> TrainabilityPlan | None:
    """``visionpeft.load_adapter``: :func:`visionpeft.adapter_io.load_adapter` (all its checks, all or nothing), or,
    with ``name``, the adapter joins the model's named adapters (:func:`load_named_adapter`): several adapters on one
    base, switched with :func:`set_adapter` without reloading the base; the first one loaded becomes active.

    Returns:
        The model's plan (with ``name``: the active adapter's, ``None`` when none is active).
    """
    from .adapter_io import load_adapter as load_one
    from .api import get_plan

    if name is None:
        return load_one(model, directory, spec, ignore_fingerprint, ignore_identity)
    refuse_ddp(model, "load_adapter")
    load_named_adapter(model, directory, name, spec, ignore_fingerprint, ignore_identity)
    return get_plan(model)


def load_named_adapter(model: Any, directory: str | Path, name: str, spec: ModelSpec | None = None,
                       ignore_fingerprint: bool = False, ignore_identity: bool = False) -> None:
    """Add the adapter in ``directory`` to ``model`` under ``name``; the first one loaded becomes active.

    Checked exactly as :func:`visionpeft.load_adapter` checks an adapter (strategies, base identity and structure,
    tensor keys and shapes, base fingerprint). All or nothing: on any failure the model keeps its active adapter.

    Raises:
        ConfigError / AdapterMismatchError: a used name, a model adapted without names, a merged model, or an
            adapter that does not fit the base.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"load_adapter: name must be a non-empty string, got {name!r}")
    root = unwrap(model)
    bank = _bank(root)
    fresh = bank is None
    bank = _new_bank(root, spec) if bank is None else bank
    _check_intact(root, bank, "load_adapter")
    if name in bank.entries:
        raise ConfigError(f"load_adapter: an adapter named {name!r} is already loaded (from "
                          f"{bank.entries[name].source}); choose another name")
    previous = bank.active
    try:
        _deactivate(root, bank)
        entry = _read_checked(root, bank, Path(directory), ignore_fingerprint, ignore_identity)
        _deactivate(root, bank)
        bank.entries[name] = entry
        _switch(root, bank, name if fresh else previous)
    except BaseException:
        bank.entries.pop(name, None)
        _deactivate(root, bank)
        if fresh:
            delattr(root, BANK_ATTR)
        else:
            _switch(root, bank, previous)
        raise


def set_adapter(model: Any, name: str | None) -> None:
    """Make the loaded adapter ``name`` active, or the plain base model for ``None``.

    Afterwards the model computes exactly what the base with only that adapter loaded computes.

    Raises:
        ConfigError: an unknown name (listing the loaded ones), no named adapters, or a merged / otherwise changed
            model.
    """
    root = unwrap(model)
    bank = _bank(root)
    if bank is None:
        raise ConfigError("set_adapter: this model has no named adapters; load them first with "
                          "visionpeft.load_adapter(model, path, name='...')")
    _check_intact(root, bank, "set_adapter")
    if name is not None and name not in bank.entries:
        hint = closest(str(name), bank.entries, n=1)
        raise ConfigError(f"set_adapter: no adapter named {name!r}; loaded: {sorted(bank.entries)}"
                          + (f" (did you mean {hint[0]!r}?)" if hint else "") + "; None selects the base model")
    if name == bank.active:
        return
    if is_ddp(model):
        raise ConfigError(f"set_adapter: the model is wrapped in DistributedDataParallel, which registered adapter "
                          f"{bank.active!r}'s parameters when it was built and cannot follow a switch to {name!r}; "
                          "switch the unwrapped module (ddp.module), then wrap it again")
    previous = bank.active
    try:
        _switch(root, bank, name)
    except BaseException:
        _switch(root, bank, previous)
        raise


def active_adapter(model: Any) -> str | None:
    """The name of the active adapter (``None``: the base model, or no named adapters)."""
    bank = _bank(unwrap(model))
    return bank.active if bank else None


def list_adapters(model: Any) -> list[str]:
    """Names of the adapters loaded with :func:`load_named_adapter`, in loading order."""
    bank = _bank(unwrap(model))
    return list(bank.entries) if bank else []
