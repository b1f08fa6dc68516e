"""Ultralytics' ``DetectionTrainer``, extended so visionpeft strategies hold for the whole run.

What Ultralytics does, and what this subclass changes (``ultralytics/engine/trainer.py``):

* ``Model.train()`` / ``setup_model`` rebuild the network via ``get_model``: :meth:`get_model` builds it as
  Ultralytics does, then applies the strategies, so the adapted model is the one that trains.
* ``_setup_train`` sets ``requires_grad=True`` on every parameter outside its own ``freeze`` list, then
  builds the optimizer over *all* parameters: :meth:`build_optimizer` re-applies the trainability plan and
  drops frozen tensors from Ultralytics' own groups (decay / no-decay BN / bias), and the callbacks check
  the plan and the optimizer again after setup and at every epoch start (violation -> error).
* Ultralytics only puts BatchNorm of its own frozen layers in eval mode: the plan's forward pre-hooks keep
  every frozen BatchNorm in eval (running statistics included) through ``model.train()``.
* ``.dfl`` stays frozen (``spec.always_frozen``); Ultralytics' own ``freeze`` argument is not used - the
  ``freeze`` strategy with ``n: N`` freezes exactly what ``freeze=N`` freezes.
* Ultralytics' final validation loads ``best.pt`` through ``AutoBackend``, which fuses Conv+BN from
  ``conv.weight`` and would drop LoRA updates: :meth:`final_eval` merges the adapters into plain convs first.
* Checkpoints still pickle the adapted EMA model (Ultralytics' ``last.pt``/``best.pt``, needs visionpeft to
  load); the shippable outputs are the adapter directories (``adapter/`` = best epoch, ``adapter_last/``)
  and ``weights/merged.pt``, the best epoch merged into a plain Ultralytics checkpoint (also written by
  ``visionpeft merge``). After ``YOLO(...).train(trainer=...)``, predict/export with
  ``YOLO("<save_dir>/weights/merged.pt")``: the adapted ``best.pt`` the YOLO object reloads cannot be fused.

Use it from Python with ``YOLO(...).train(trainer=PeftDetectionTrainer.configure([...]), data=...)``, or
through ``visionpeft train`` (the detection task runner).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

from torch import nn
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model

from ... import api
from ...errors import ConfigError
from ...plan import TrainabilityPlan
from .callbacks import PerfMeter, make_callbacks, write_json

__all__ = ["PeftDetectionTrainer", "merged_copy"]


def merged_copy(model: nn.Module) -> nn.Module:
    """A deep copy of an adapted model with every strategy folded into plain weights (safe to fuse)."""
    out = copy.deepcopy(unwrap_model(model))
    if api.get_state(out) is not None:
        api.merge(out)
    return out


class PeftDetectionTrainer(DetectionTrainer):
    """A ``DetectionTrainer`` that applies and enforces visionpeft strategies.

    Configure a subclass with :meth:`configure` (Ultralytics instantiates the trainer class itself).

    Attributes:
        vp_strategies: strategy entries (``[{"method": "lora", "rank": 8}, {"method": "head"}]``).
        vp_run_dir: where the adapter directories, ``plan.json`` and ``tb/`` go (default: the save dir).
        vp_tensorboard: write visionpeft's TensorBoard events to ``<run_dir>/tb``.
    """

    vp_strategies: ClassVar[list[dict[str, Any]]] = [{"method": "full"}]
    vp_run_dir_cfg: ClassVar[str | None] = None
    vp_tensorboard: ClassVar[bool] = True

    @classmethod
    def configure(
        cls, strategies: list[Any], *, run_dir: str | Path | None = None, tensorboard: bool = True
    ) -> type[PeftDetectionTrainer]:
        """A trainer class bound to ``strategies`` (validated now, so typos fail before any data loading)."""
        configs = api.parse_strategies(strategies)
        attrs = {
            "vp_strategies": [c.model_dump(mode="json") for c in configs],
            "vp_run_dir_cfg": str(run_dir) if run_dir is not None else None,
            "vp_tensorboard": tensorboard,
        }
        return type(cls.__name__, (cls,), attrs)

    def __init__(self, cfg: Any = None, overrides: dict[str, Any] | None = None, _callbacks: Any = None) -> None:
        overrides = dict(overrides or {})
        if overrides.get("freeze"):
            raise ConfigError(
                f"freeze={overrides['freeze']!r}: use the freeze strategy instead ({{method: freeze, n: N}} "
                "freezes exactly what Ultralytics' freeze=N does) so the trainability plan knows about it"
            )
        if overrides.get("resume"):
            raise ConfigError("resume: resuming a visionpeft detection run is not supported yet; start a new run")
        from ultralytics.cfg import DEFAULT_CFG

        super().__init__(cfg if cfg is not None else DEFAULT_CFG, overrides, _callbacks)
        if self.world_size > 1:
            raise ConfigError(
                "multi-GPU (DDP) training re-launches Ultralytics in a subprocess that would not carry the "
                "visionpeft strategies; train on one device (device=0)"
            )
        self.vp_plan: TrainabilityPlan | None = None
        self.vp_run_dir = Path(self.vp_run_dir_cfg) if self.vp_run_dir_cfg else Path(self.save_dir)
        self.vp_perf = PerfMeter()
        self.vp_logger = None
        if self.vp_tensorboard and RANK in {-1, 0}:
            from ...logging.tensorboard import RunLogger

            self.vp_logger = RunLogger(self.vp_run_dir / "tb")
        for event, fn in make_callbacks(self).items():
            self.add_callback(event, fn)

    # ------------------------------------------------------------------ model
    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
        """Build the model as Ultralytics does (new head for the dataset's classes), then apply strategies."""
        if isinstance(weights, nn.Module) and api.get_state(weights) is not None:
            raise ConfigError(
                "the weights to load are already adapted by visionpeft; pass the plain base model/checkpoint "
                "and let the trainer apply the strategies"
            )
        model = super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        self.vp_plan = api.apply(model, self.vp_strategies)
        if RANK in {-1, 0}:
            LOGGER.info("visionpeft plan:\n" + self.vp_plan.summary())
        return model

    def vp_model(self) -> nn.Module:
        """The network being trained (unwrapped from compile / DDP wrappers)."""
        return unwrap_model(self.model)

    def set_model_attributes(self) -> None:
        """Ultralytics' attributes, then every float parameter temporarily trainable.

        ``_setup_train`` runs its freeze loop right after this: it would set ``requires_grad=True`` on every
        parameter we froze, logging one warning per tensor. Opening them here keeps that loop quiet;
        :meth:`build_optimizer` (the next step that cares) re-applies the plan.
        """
        super().set_model_attributes()
        for p in self.model.parameters():
            if p.dtype.is_floating_point:
                p.requires_grad_(True)

    def build_optimizer(self, model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """Ultralytics' optimizer and parameter groups, holding only the plan's trainable parameters."""
        if self.vp_plan is None:
            raise ConfigError("the model was not built through get_model, so no strategies were applied")
        self.vp_plan.enforce(unwrap_model(model))
        optimizer = super().build_optimizer(model, *args, **kwargs)
        removed = 0
        for group in optimizer.param_groups:
            keep = [p for p in group["params"] if p.requires_grad]
            removed += len(group["params"]) - len(keep)
            group["params"] = keep
        if RANK in {-1, 0}:
            kept = sum(len(g["params"]) for g in optimizer.param_groups)
            LOGGER.info(f"visionpeft: optimizer holds {kept} trainable tensors ({removed} frozen tensors removed)")
        return optimizer

    # ------------------------------------------------------------------ outputs
    def vp_save_adapter(self, name: str) -> Path | None:
        """Save the EMA model's adapter (what Ultralytics validates and checkpoints) to ``<run_dir>/<name>``."""
        if RANK not in {-1, 0}:
            return None
        source = self.ema.ema if self.ema is not None else self.vp_model()
        return api_save_adapter(source, self.vp_run_dir / name, {"epoch": int(self.epoch) + 1})

    def vp_write_plan(self) -> None:
        if RANK in {-1, 0} and self.vp_plan is not None:
            write_json(self.vp_run_dir / "plan.json", self.vp_plan.to_dict())

    def final_eval(self) -> None:
        """Ultralytics' final validation of ``best.pt``, with adapters merged before the Conv+BN fusion."""
        from ultralytics.nn.tasks import load_checkpoint
        from ultralytics.utils.torch_utils import strip_optimizer

        best = self.best if self.best.exists() else None
        if RANK in {-1, 0}:
            ckpt = strip_optimizer(self.last) if self.last.exists() else {}
            if best:
                strip_optimizer(self.best, updates={"train_results": ckpt.get("train_results")})
        if best is None:
            return
        LOGGER.info(f"\nValidating {best} (visionpeft: adapters merged before fusing)...")
        model, _ = load_checkpoint(best)
        merged = merged_copy(model)
        if RANK in {-1, 0}:
            # Ship-ready output: a plain Ultralytics checkpoint, loadable without visionpeft.
            from .merge import save_plain_checkpoint

            strategies = self.vp_strategies
            save_plain_checkpoint(merged, self.wdir / "merged.pt", {"merged_from": str(best), "strategies": strategies})
        self.validator.args.plots = self.args.plots
        self.validator.args.compile = False
        self.metrics = self.validator(model=merged)
        self.metrics.pop("fitness", None)
        self.epoch += 1  # log best metrics at step epochs+1, as Ultralytics does
        self.run_callbacks("on_fit_epoch_end")
        self.epoch -= 1


def api_save_adapter(model: nn.Module, directory: Path, extra: dict[str, Any]) -> Path:
    from ...adapter_io import save_adapter

    return save_adapter(model, directory, extra=extra)
