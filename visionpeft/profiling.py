"""Training-memory accounting that works on CPU as well as on CUDA: the one meaning of ``peak_mem_mb``.

``peak_mem_mb`` (``metrics.json``, the report, TensorBoard's ``perf/peak_mem_mb``), in both tasks: the memory
footprint of **one training step of this run's model**, measured on the first step after the optimizer's first
update (so its state exists), in MiB (:class:`StepMemory`, :func:`measure_step_memory`):

* CUDA: the allocator's peak during that step, less what was allocated before it, plus the model's own
  parameters, gradients and optimizer state held at its start. Other models resident on the GPU (a side-by-side
  benchmark) or cached batches are not counted, so runs are comparable with one that had the GPU to itself.
* CPU (no allocator peak to read): the footprint counted from its parts: parameters, gradients and optimizer state
  of the trainable parameters, and the activations autograd saves for the backward pass (the part PEFT methods
  change most), each storage counted once, since views share memory.

Validation, data loading and the evaluation of other models are not part of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class MemoryStats:
    """Bytes of one training step's footprint (``peak_bytes`` is exact on CUDA, a sum of parts on CPU)."""

    params: int = 0
    grads: int = 0
    optimizer: int = 0
    activations: int = 0
    cuda_peak: int | None = None

    @property
    def peak_bytes(self) -> int:
        if self.cuda_peak is not None:
            return self.cuda_peak
        return self.params + self.grads + self.optimizer + self.activations

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    return (t.untyped_storage().data_ptr(), t.device.index or 0)


class SavedTensorMeter:
    """Counts the bytes autograd saves for backward inside ``with meter:`` (unique storages)."""

    def __init__(self, exclude: list[torch.Tensor] | None = None) -> None:
        # Parameters are saved by reference for weight gradients; they are not extra memory.
        self._skip = {_storage_key(t) for t in exclude or []}
        self._seen: dict[tuple[int, int], int] = {}
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self._skip and key not in self._seen:
            self._seen[key] = t.untyped_storage().nbytes()
        return t

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())

    def __enter__(self) -> SavedTensorMeter:
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def static_bytes(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, allocated_grads: bool = False
) -> tuple[int, int, int]:
    """(parameter, gradient, optimizer-state) bytes right now.

    Gradients count every trainable parameter (the step's gradient memory); with ``allocated_grads`` only the
    ``.grad`` tensors that exist at this moment (what is already held before a step).
    """
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    if allocated_grads:
        grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    else:
        grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    opt = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            opt += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return params, grads, opt


@contextmanager
def measure_step_memory(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None, device: torch.device | None = None
) -> Iterator[MemoryStats]:
    """Measure one training step run inside the ``with`` block.

    Call it on a step after the first, so the optimizer state exists.

    On CUDA, ``cuda_peak`` is this model's footprint in the step: the allocator's peak during the block, less
    what was allocated before it, plus the model's own parameters, gradients and optimizer state held at entry.
    Tensors that belong to something else (other models resident on the same GPU, as in the side-by-side
    benchmark, or a cached batch) are not counted, so the number is comparable with a run that had the GPU to
    itself. Raises nothing of its own; ``device`` must be the device the step runs on.
    """
    stats = MemoryStats()
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        held = sum(static_bytes(model, optimizer, allocated_grads=True)[:3])
        before = torch.cuda.memory_allocated(device)
    meter = SavedTensorMeter(exclude=list(model.parameters()))
    with meter:
        yield stats
    stats.activations = meter.bytes
    stats.params, stats.grads, stats.optimizer = static_bytes(model, optimizer)
    if cuda:
        torch.cuda.synchronize(device)
        stats.cuda_peak = torch.cuda.max_memory_allocated(device) - before + held


class StepMemory:
    """``peak_mem_mb`` of a run (see the module docstring), for a loop that reports steps by callbacks.

    Call :meth:`begin` when a training step starts and :meth:`end` when it is over (after its optimizer update);
    the step measured is the first one begun after ``updates >= 1``. Classification's loop and the Ultralytics
    trainer's callbacks both use it, so the number means the same in both tasks.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0
        self._stack: ExitStack | None = None
        self._stats: MemoryStats | None = None

    @property
    def measured(self) -> bool:
        return self.peak_mb > 0.0

    def begin(self, model: nn.Module, optimizer: Any, updates: int) -> None:
        """Start measuring this step if it is the one (the first after ``updates`` reached 1)."""
        if self.measured or self._stack is not None or updates < 1:
            return
        self._stack = ExitStack()
        self._stats = self._stack.enter_context(measure_step_memory(model, optimizer, self.device))

    def end(self) -> None:
        """Finish a step begun with :meth:`begin` (no-op for the steps not measured)."""
        if self._stack is None:
            return
        self._stack.close()
        self._stack = None
        assert self._stats is not None
        self.peak_mb = self._stats.peak_mb

    def abort(self) -> None:
        """Leave the measurement of a step that did not finish (an exception inside it)."""
        if self._stack is not None:
            self._stack.close()
            self._stack = None
