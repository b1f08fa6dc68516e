"""The model job of :class:`~.trainer.PeftTrainerMixin`: build the network as Ultralytics does, then apply the
strategies (or, on resume, rebuild base + strategies and load what training changed; see :mod:`.resume`).

Ultralytics' ``Model.train()`` / ``setup_model`` build the network through ``get_model``; ``_setup_train`` then sets
``requires_grad=True`` on every parameter outside its own ``freeze`` list (``set_model_attributes`` opens them all
first, so its loop stays quiet; the optimizer job re-applies the plan).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model

from ... import api
from ...errors import ConfigError
from . import resume

__all__ = ["ModelSetupMixin", "AdaptedSource"]


@dataclass(frozen=True)
class AdaptedSource:
    """A model the user adapted, to train on (``yolo.train(...)`` after ``visionpeft.apply(yolo, ...)``).

    Attributes:
        model: the adapted network (its adapter tensors, trained head, BatchNorm statistics are taken).
        base: a copy of the plain network before it was adapted (what Ultralytics transfers into the model it
            builds for the data, as it transfers a ``.pt``'s weights).
        resolved: what its budgets resolved to (``plan.resolved``), so they are not solved again.
    """

    model: nn.Module
    base: nn.Module
    resolved: list[dict[str, Any]] = field(default_factory=list)


class ModelSetupMixin:
    """``get_model``, ``setup_model``, ``set_model_attributes`` (see the module docstring). Reads the trainer's
    ``vp_configs`` (the typed strategies, parsed once in ``configure``) and sets ``vp_plan``."""

    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
        """Build the model as Ultralytics does (new head for the dataset's classes), then apply strategies."""
        if self.vp_source is not None and not self.resume:
            return self._vp_model_from_source(self.vp_source, verbose)
        if isinstance(weights, nn.Module) and api.get_state(weights) is not None:
            if self.resume:
                return self._vp_resumed_model(cfg, weights, verbose)
            raise ConfigError(
                "the weights to load are already adapted by visionpeft; pass the plain base model/checkpoint "
                "and let the trainer apply the strategies (or resume=path/to/last.pt to continue that run)"
            )
        if self.vp_strategies is None:
            raise ConfigError(f"resume: {self.args.resume} carries no visionpeft strategies; resume it with "
                              "Ultralytics' own DetectionTrainer, or start a new visionpeft run")
        model = super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        self.vp_plan = api.apply(model, self._vp_configs())
        self._vp_log_plan()
        return model

    def _vp_model_from_source(self, source: AdaptedSource, verbose: bool) -> nn.Module:
        """The user's adapted model, rebuilt for this data exactly: Ultralytics builds the network for the data's
        classes and transfers the plain base into it (as it transfers a ``.pt``), the strategies are applied as a
        fresh run applies them, then every tensor of the user's model whose name and shape match is copied in
        (adapters, trained head, BatchNorm statistics). The rest (e.g. the class convs of a head for another class
        count) stays as a fresh run initialises it, named in one log line."""
        model = super().get_model(cfg=source.base.yaml, weights=source.base, verbose=verbose)
        self.vp_plan = api.apply(model, self._vp_configs(), resolved=source.resolved or None)
        theirs = source.model.state_dict()
        fresh = []
        with torch.no_grad():
            for key, tensor in model.state_dict().items():
                value = theirs.get(key)
                if value is not None and value.shape == tensor.shape:
                    tensor.copy_(value)
                else:
                    fresh.append(key)
        if RANK in {-1, 0}:
            total = len(model.state_dict())
            detail = f"; initialised as a fresh run does (shapes differ, e.g. another class count): {fresh[:4]}"
            LOGGER.info(f"visionpeft: took {total - len(fresh)}/{total} tensors from the adapted model"
                        + (detail + (" ..." if len(fresh) > 4 else "") if fresh else ""))
        self._vp_log_plan()
        return model

    def _vp_resumed_model(self, cfg: Any, saved: nn.Module, verbose: bool) -> nn.Module:
        """Resume: rebuild base + strategies, load what training changed from the checkpoint (see .resume)."""
        where = f"resume {self.args.resume}"
        self._vp_match_strategies(resume.saved_strategies(saved, where), where)
        source = resume.base_source(saved, where)
        base = resume.load_base_weights(resume.weights_source(saved, where), where)  # pretrained= if it named one
        model = super().get_model(cfg=cfg, weights=base, verbose=verbose)
        random_ids = resume.random_init(model, base)
        self.vp_plan = api.apply(model, self._vp_configs())
        taken = resume.load_resumed_state(model, self.vp_plan, saved, where, random_ids)
        if taken and RANK in {-1, 0}:
            LOGGER.warning(f"visionpeft: {len(taken)} frozen, randomly initialised tensors {taken[:3]} differ from "
                           "the interrupted run's (another seed or number of GPUs?); using last.pt's float16 copies")
        self.args.model = source  # this run's checkpoints record the base too, so they can be resumed again
        if RANK in {-1, 0}:
            LOGGER.info(f"visionpeft: resuming {self.args.resume} (base {source}, strategies {self.vp_strategies})")
        self._vp_log_plan()
        return model

    def _vp_match_strategies(self, saved: list[dict[str, Any]], where: str) -> None:
        if self.vp_strategies is None:
            self.vp_strategies, self.vp_configs = saved, api.parse_strategies(saved)
        else:
            resume.check_same_strategies(saved, self.vp_strategies, where)

    def _vp_configs(self) -> list[Any]:
        """The typed strategy configs (parsed once; the unconfigured class's default ``full`` parsed here)."""
        if self.vp_configs is None:
            self.vp_configs = api.parse_strategies(self.vp_strategies or [])
        return self.vp_configs

    def _vp_log_plan(self) -> None:
        if RANK in {-1, 0} and self.vp_plan is not None:
            LOGGER.info("visionpeft plan:\n" + self.vp_plan.summary())

    def setup_model(self) -> Any:
        """Ultralytics' setup; a model handed over already adapted (a DDP worker's) keeps its plan."""
        ckpt = super().setup_model()
        if self.vp_plan is None and isinstance(self.model, nn.Module):
            # Ultralytics pickles trainer.model for its DDP workers: after YOLO(...).train(trainer=...), the
            # launcher already built (and adapted) it through get_model, so the workers do not call it again.
            where = "the model handed to the trainer"
            if api.get_state(self.model) is None:
                raise ConfigError(f"{where} was not built through get_model, so no strategies were applied")
            self._vp_match_strategies(resume.saved_strategies(self.model, where), where)
            self.vp_plan = api.get_plan(self.model)
        return ckpt

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
