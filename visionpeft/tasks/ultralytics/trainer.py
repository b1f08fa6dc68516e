"""Ultralytics' trainers, extended so visionpeft strategies hold for the whole run.

:class:`PeftTrainerMixin` goes in front of Ultralytics' own trainer class of each task in the task table (from
Ultralytics' ``task_map``): ``PeftDetectionTrainer`` (``DetectionTrainer``), ``PeftSegmentationTrainer``,
``PeftPoseTrainer``, ``PeftOBBTrainer``, ``PeftClassificationTrainer`` and ``PeftRTDETRTrainer``, made in
:data:`TRAINERS`; :func:`trainer_for` picks one. It extends
Ultralytics through overridable methods and callbacks only (each calls the parent's); tested with Ultralytics
8.4.190 (the floor in ``pyproject.toml`` is 8.4.104).

What Ultralytics does, and what the mixin changes (``ultralytics/engine/trainer.py``):

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
* Ultralytics' final validation (``BaseTrainer.final_eval``, called as is) hands ``best.pt`` to the validator:
  :meth:`final_eval` gives it a validator wrapper (:class:`MergingValidator`) that loads ``best.pt`` with the
  allow-list, merges the adapters into plain layers (also written as ``weights/merged.pt``) and validates that.
* ``resume``: ``get_model`` receives the checkpoint's already adapted EMA model. The plain model is rebuilt
  from the run's base and adapted again, and only what training changed is loaded from the checkpoint
  (:mod:`.resume`): frozen tensors stay bit-identical to the base, the strategies must match.
* Multi-GPU (``device=0,1``): Ultralytics re-creates the trainer in ``torch.distributed.run`` workers. The
  settings travel with the pickled class and in an environment variable; the DDP wrapper is rebuilt once the
  plan has frozen its tensors; only rank 0 writes adapters, ``plan.json``, TensorBoard and ``metrics.json``
  (:mod:`.ddp`).
* Checkpoints still pickle the adapted EMA model (Ultralytics' ``last.pt``/``best.pt``, needs visionpeft to
  load; predict/val/export fuse it exactly, the LoRA layers fold their update into the fused weights). They
  are written atomically (:meth:`save_model`), and a resume continues in the directory holding ``last.pt``
  (:meth:`check_resume`). The shippable outputs are the adapter directories (``adapter/`` = best epoch,
  ``adapter_last/``) and ``weights/merged.pt``, the best epoch merged into a plain Ultralytics checkpoint
  (also written by ``visionpeft merge``), loadable without visionpeft.

Use it from Python with ``YOLO(...).train(trainer=PeftDetectionTrainer.configure([...]), data=...)``, or
through ``visionpeft train`` (the detection task runner).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

from torch import nn
from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model

from ... import api
from ...checkpoint import STAGING_DIR, atomic_write, remove_stale_temporaries
from ...errors import ConfigError
from ...plan import TrainabilityPlan
from . import resume
from .callbacks import PerfMeter, check_train_loss, make_callbacks, write_json
from .ddp import launch_env, rewrap_ddp, settings_from_env
from .merge import merged_copy

# Also the generated ``Peft<UltralyticsTrainer>`` classes (``PeftDetectionTrainer``...; see :data:`TRAINERS`).
__all__ = ["PeftTrainerMixin", "TRAINERS", "trainer_for", "MergingValidator", "split_groups_by_owner"]


class PeftTrainerMixin:
    """Mixed in front of an Ultralytics trainer class: applies and enforces visionpeft strategies.

    Configure a subclass with :meth:`configure` (Ultralytics instantiates the trainer class itself). The
    class itself, unconfigured, trains ``[{method: full}]``, or resumes with the strategies stored in the
    checkpoint.

    Attributes:
        vp_strategies: strategy entries (``[{"method": "lora", "rank": 8}, {"method": "head"}]``); ``None``
            on an unconfigured trainer that resumes (taken from the checkpoint).
        vp_run_dir: where the adapter directories, ``plan.json``, ``metrics.json`` and visionpeft's TensorBoard
            event files go (default: the save dir).
        vp_tensorboard: write visionpeft's TensorBoard events into ``vp_run_dir``.
        vp_run_name: the run name recorded in ``metrics.json`` (default: the save dir's name).
    """

    vp_strategies: ClassVar[list[dict[str, Any]] | None] = [{"method": "full"}]
    vp_run_dir_cfg: ClassVar[str | None] = None
    vp_tensorboard: ClassVar[bool] = True
    vp_run_name: ClassVar[str | None] = None
    vp_configured: ClassVar[bool] = False

    @classmethod
    def configure(
        cls, strategies: list[Any], *, run_dir: str | Path | None = None, tensorboard: bool = True,
        run_name: str | None = None,
    ) -> type[PeftTrainerMixin]:
        """A trainer class bound to ``strategies`` (validated now, so typos fail before any data loading)."""
        configs = api.parse_strategies(strategies)
        for i, c in enumerate(configs):
            if getattr(c, "budget", None) is not None and getattr(c, "allocation", None) == "importance":
                raise ConfigError(
                    f"strategies.{i}.allocation: importance is not available for detection (Ultralytics' trainer "
                    "builds the model before its data loaders, so no batches exist to measure gradients on); use "
                    "allocation: uniform"
                )
        attrs = {
            "vp_strategies": [c.model_dump(mode="json") for c in configs],
            "vp_run_dir_cfg": str(run_dir) if run_dir is not None else None,
            "vp_tensorboard": tensorboard,
            "vp_run_name": run_name,
            "vp_configured": True,
        }
        # Same name and module as this class: Ultralytics 8.3's DDP script imports the trainer by name and
        # then gets this class, which reads the settings back from the environment (see .ddp).
        return type(cls.__name__, (cls,), attrs)

    def __init__(self, cfg: Any = None, overrides: dict[str, Any] | None = None, _callbacks: Any = None) -> None:
        overrides = dict(overrides or {})
        if overrides.get("freeze"):
            raise ConfigError(
                f"freeze={overrides['freeze']!r}: use the freeze strategy instead ({{method: freeze, n: N}} "
                "freezes exactly what Ultralytics' freeze=N does) so the trainability plan knows about it"
            )
        from ultralytics.cfg import DEFAULT_CFG

        super().__init__(cfg if cfg is not None else DEFAULT_CFG, overrides, _callbacks)
        self._vp_read_settings()
        self.vp_plan: TrainabilityPlan | None = None
        self.vp_run_dir = Path(self.vp_run_dir_cfg) if self.vp_run_dir_cfg else Path(self.save_dir)
        self.vp_perf = PerfMeter()
        self._vp_merged_from: str | None = None  # digest of the best.pt that merged.pt was written from
        self.vp_updates = 0
        self.vp_logger = None
        # A DDP launcher (self.ddp) trains nothing itself: its workers log; of those, rank 0 only.
        if self.vp_tensorboard and RANK in {-1, 0} and not self.ddp:
            from ...logging.tensorboard import RunLogger

            self.vp_logger = RunLogger(self.vp_run_dir)
        for event, fn in make_callbacks(self).items():
            # A DDP worker receives the launcher's callbacks (ours included) from Ultralytics: add them once.
            if fn not in self.callbacks.get(event, []):
                self.add_callback(event, fn)

    def _vp_read_settings(self) -> None:
        """Settings of an unconfigured class: from a DDP launcher's environment, or the checkpoint on resume."""
        if self.vp_configured:
            return
        env = settings_from_env()
        if env is not None:  # a DDP worker whose Ultralytics imported the trainer class by name
            strategies = env["strategies"]
            self.vp_strategies = None if strategies is None else [
                c.model_dump(mode="json") for c in api.parse_strategies(strategies)]
            self.vp_run_dir_cfg = env.get("run_dir")
            self.vp_tensorboard = bool(env.get("tensorboard", True))
            self.vp_run_name = env.get("run_name")
        elif self.resume:
            self.vp_strategies = None  # adopted from the checkpoint in get_model

    def vp_settings(self) -> dict[str, Any]:
        """What a DDP worker needs to re-create this trainer (JSON-able)."""
        return {"strategies": self.vp_strategies, "run_dir": str(self.vp_run_dir),
                "tensorboard": self.vp_tensorboard, "run_name": self.vp_run_name}

    def train(self) -> Any:
        """Ultralytics' training (checkpoints loaded with the allow-list of :mod:`visionpeft.backends.safe_load`);
        as a DDP launcher, with the settings exported to the workers' environment."""
        from ...backends.safe_load import restricted_loading

        with restricted_loading():
            return self._vp_train()

    def _vp_train(self) -> Any:
        if not self.ddp:
            return super().train()
        # Ultralytics' launcher deletes save_dir unless resuming, and with it visionpeft's recipe.yaml (which
        # 'visionpeft resume' needs). The workers reuse save_dir through args.save_dir: nothing to clear.
        resuming, self.resume = self.resume, True
        try:
            with launch_env(self.vp_settings()):
                return super().train()
        finally:
            self.resume = resuming

    # ------------------------------------------------------------------ model
    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
        """Build the model as Ultralytics does (new head for the dataset's classes), then apply strategies."""
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
        self.vp_plan = api.apply(model, self.vp_strategies)
        self._vp_log_plan()
        return model

    def _vp_resumed_model(self, cfg: Any, saved: nn.Module, verbose: bool) -> nn.Module:
        """Resume: rebuild base + strategies, load what training changed from the checkpoint (see .resume)."""
        where = f"resume {self.args.resume}"
        self._vp_match_strategies(resume.saved_strategies(saved, where), where)
        source = resume.base_source(saved, where)
        base = resume.load_base_weights(source, where)
        model = super().get_model(cfg=cfg, weights=base, verbose=verbose)
        random_ids = resume.random_init(model, base)
        self.vp_plan = api.apply(model, self.vp_strategies)
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
            self.vp_strategies = saved
        else:
            resume.check_same_strategies(saved, self.vp_strategies, where)

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

    def build_optimizer(self, model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """Ultralytics' optimizer and parameter groups (weight / bn / bias), holding only the plan's trainable
        parameters, each group split per strategy owner with the owner's ``lr`` / ``weight_decay`` (see
        :func:`split_groups_by_owner`)."""
        if self.vp_plan is None:
            raise ConfigError("the model was not built through get_model, so no strategies were applied")
        self.vp_plan.enforce(unwrap_model(model))
        if model is self.model and isinstance(model, nn.parallel.DistributedDataParallel):
            self.model = model = rewrap_ddp(model)  # DDP was built while everything was trainable
        optimizer = super().build_optimizer(model, *args, **kwargs)
        total = sum(len(g["params"]) for g in optimizer.param_groups)
        state = api.get_state(unwrap_model(model))
        wd_scale = self.batch_size * self.accumulate / self.args.nbs  # Ultralytics' own weight-decay scaling
        optimizer.param_groups[:] = split_groups_by_owner(
            optimizer.param_groups, unwrap_model(model), self.vp_plan, state.configs if state else [],
            base_lr=float(self.args.lr0), wd_scale=wd_scale)
        if RANK in {-1, 0}:
            kept = sum(len(g["params"]) for g in optimizer.param_groups)
            lrs = sorted({(g["owner"], g["param_group"], round(g["lr"], 8)) for g in optimizer.param_groups})
            LOGGER.info(f"visionpeft: optimizer holds {kept} trainable tensors ({total - kept} frozen tensors "
                        f"removed); groups (owner, kind, lr): {lrs}")
        return optimizer

    # ------------------------------------------------------------------ resume
    def check_resume(self, overrides: dict[str, Any]) -> None:
        """Ultralytics' resume check, with a clear error for a damaged ``last.pt`` and the run dir where it lies.

        Ultralytics takes ``save_dir`` from inside the checkpoint, so resuming a copied run directory would write
        into the original: here the run continues in the directory that holds ``weights/last.pt`` (or in an
        explicit ``save_dir`` override).
        """
        target = self.args.resume
        if target and isinstance(target, (str, Path)) and Path(target).is_file():
            resume.read_checkpoint(target)  # ConfigError naming size and cause instead of "not found"
        super().check_resume(overrides)
        if self.resume:
            run_dir = overrides.get("save_dir") or resume.run_dir_of(self.args.resume)
            if run_dir:
                self.args.save_dir = str(run_dir)

    def optimizer_step(self) -> None:
        """Ultralytics' update, refused for a non-finite loss: the NaN never reaches the weights or the EMA."""
        check_train_loss(self)
        super().optimizer_step()  # type: ignore[misc]
        self.vp_updates += 1  # the memory meter measures the first step after the first update

    def save_model(self) -> Any:
        """Ultralytics' checkpoints, each written to a temporary file and renamed over the old one.

        Ultralytics writes ``last.pt`` in place: a run killed while saving would leave a torn file and nothing to
        resume from. Here the previous good file stays until the new one is complete.
        """
        wdir, last, best = self.wdir, self.last, self.best
        staging = wdir / STAGING_DIR
        shutil.rmtree(staging, ignore_errors=True)
        self.wdir, self.last, self.best = staging, staging / last.name, staging / best.name
        try:
            saved = super().save_model()
            for path in sorted(staging.iterdir()):  # last.pt first: best.pt / epochN.pt are extra copies
                os.replace(path, wdir / path.name)
        finally:
            self.wdir, self.last, self.best = wdir, last, best
            shutil.rmtree(staging, ignore_errors=True)
        return saved

    def resume_training(self, ckpt: Any) -> None:
        """Ultralytics' resume (optimizer, EMA, epoch, early stopping), with a clear error for a finished run."""
        if ckpt is not None and self.resume:
            start = int(ckpt.get("epoch", -1)) + 1
            if not 0 < start < self.epochs:
                raise ConfigError(
                    f"resume: {self.args.resume} holds a finished run (epoch {start} of {self.epochs}; a "
                    "completed run's last.pt has no optimizer state): nothing to resume. Start a new run"
                )
        super().resume_training(ckpt)
        if ckpt is not None and self.resume and RANK in {-1, 0}:
            remove_stale_temporaries(self.wdir)  # what a kill during the last checkpoint write left
            self._vp_trim_results(int(ckpt.get("epoch", -1)) + 1)

    def _vp_trim_results(self, epochs_done: int) -> None:
        """Drop ``results.csv`` rows past the checkpoint's epoch before training goes on.

        Ultralytics appends an epoch's row before it writes the checkpoint; a run killed in between resumes from
        the previous checkpoint and would append a second, different row for the same epoch.
        """
        csv = Path(self.csv)
        if not csv.is_file():
            return
        lines = csv.read_text(encoding="utf-8").splitlines(keepends=True)
        keep = lines[:1] + [row for row in lines[1:] if _row_epoch(row) <= epochs_done]
        if len(keep) != len(lines):
            atomic_write(csv, lambda tmp: Path(tmp).write_text("".join(keep), encoding="utf-8"))

    def _load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
        """Ultralytics loads the whole float16 EMA; the frozen tensors are then reset to the exact base."""
        super()._load_checkpoint_state(ckpt)
        if self.ema is not None and self.vp_plan is not None:
            resume.restore_frozen(self.ema.ema, self.vp_model(), self.vp_plan)

    # ------------------------------------------------------------------ outputs
    def vp_save_adapter(self, name: str) -> Path | None:
        """Save the EMA model's adapter (what Ultralytics validates and checkpoints) to ``<run_dir>/<name>``."""
        if RANK not in {-1, 0}:
            return None
        from ...adapter_io import save_adapter

        source = self.ema.ema if self.ema is not None else self.vp_model()
        return save_adapter(source, self.vp_run_dir / name, extra={"epoch": int(self.epoch) + 1})

    def vp_write_plan(self) -> None:
        if RANK in {-1, 0} and self.vp_plan is not None:
            write_json(self.vp_run_dir / "plan.json", self.vp_plan.to_dict())

    def vp_result(self) -> Any:
        """The run's :class:`~visionpeft.tasks.base.RunResult` (also written to ``metrics.json`` at the end)."""
        from ..base import RunResult
        from .callbacks import metrics_from_ultralytics

        plan, perf = self.vp_plan, self.vp_perf
        adapter = self.vp_run_dir / "adapter" / "adapter.safetensors"
        return RunResult(
            strategy=self.vp_run_name or Path(self.save_dir).name,
            trainable_params=plan.trainable_count,
            total_params=plan.total,
            trainable_pct=plan.trainable_pct,
            metrics=metrics_from_ultralytics(self.metrics, self.args.task),
            peak_mem_mb=perf.peak_mem_mb,
            train_img_per_s=perf.img_per_s,
            train_seconds=perf.train_seconds,
            adapter_bytes=adapter.stat().st_size if adapter.is_file() else 0,
            step_time_s=perf.step_time_s,
            run_dir=self.vp_run_dir,
            extra={"epochs": int(self.epochs), "imgsz": self.args.imgsz, "batch": int(self.batch_size),
                   "device": str(self.device), "strategies": plan.strategies,
                   "start_epoch": int(self.start_epoch), "world_size": max(int(self.world_size), 1),
                   "hparams": self.vp_hparams(), "val": getattr(self, "vp_val_settings", None)},
        )

    def vp_hparams(self) -> dict[str, Any]:
        """The run's TensorBoard hyper-parameters, in the vocabulary shared with classification."""
        plan = self.vp_plan
        return {"strategy": self.vp_run_name or Path(self.save_dir).name, "methods": plan.describe(),
                "trainable_params": plan.trainable_count, "trainable_pct": round(plan.trainable_pct, 4),
                "total_params": plan.total, "model": Path(str(self.args.model)).name, "epochs": int(self.epochs),
                "batch_size": int(self.batch_size), "lr": float(self.args.lr0), "optimizer": str(self.args.optimizer),
                "img_size": int(self.args.imgsz), "seed": int(self.args.seed)}

    def final_eval(self) -> None:
        """Ultralytics' own final validation of ``best.pt``, its validator wrapped to merge the adapters first.

        ``BaseTrainer.final_eval`` strips the checkpoints and validates ``best.pt`` by path; the wrapper
        (:class:`MergingValidator`) validates the merged model instead, writes it as ``weights/merged.pt`` and
        records the validator's settings (what ``visionpeft eval`` reuses). ``vp_final_eval`` tells the
        TensorBoard callback that these are the result, not one more epoch.
        """
        validator = self.validator
        self.validator = MergingValidator(validator, self._vp_write_merged)
        self.vp_final_eval = True
        try:
            with _atomic_strip():
                super().final_eval()
        finally:
            self.validator = validator
            self.vp_final_eval = False
        self._vp_remerge_if_rewritten()
        if self.validator is not None and getattr(self.validator, "dataloader", None) is not None:
            from .validation import record_settings

            self.vp_val_settings = record_settings(self.validator)  # so 'visionpeft eval' validates the same way

    def _vp_remerge_if_rewritten(self) -> None:
        """``merged.pt`` again from ``best.pt`` when the task's trainer rewrote ``best.pt`` after validating it.

        Ultralytics' ``DepthTrainer.final_eval`` does: after the validation it fits the depth head's output scale
        (``cal_a``/``cal_b`` buffers) and writes it into ``best.pt`` / ``last.pt``; the merged checkpoint must carry
        what ``best.pt`` computes.
        """
        merged, best = self.wdir / "merged.pt", Path(self.best)
        if RANK not in {-1, 0} or not (merged.is_file() and best.is_file()):
            return
        if _digest(best) == self._vp_merged_from:  # contents, not times: file times can be coarse
            return
        from ...backends.safe_load import load_checkpoint

        loaded, _ = load_checkpoint(best)
        self._vp_write_merged(merged_copy(loaded), best)

    def _vp_write_merged(self, merged: nn.Module, source: Path) -> None:
        """Ship-ready output (rank 0): a plain Ultralytics checkpoint, loadable without visionpeft."""
        if RANK in {-1, 0}:
            from ...backends import backend_named

            backend_named("ultralytics").export_merged(merged, self.wdir / "merged.pt",
                                  {"merged_from": str(source), "strategies": self.vp_strategies})
            self._vp_merged_from = _digest(Path(source))


class MergingValidator:
    """Wraps an Ultralytics validator: a checkpoint path handed to it is loaded (allow-listed), merged and validated.

    Every other attribute reads and writes through to the wrapped validator (``args``, ``dataloader``...).

    Args:
        validator: the trainer's validator.
        on_merged: called with the merged model and the checkpoint path before validation (writes merged.pt).
    """

    def __init__(self, validator: Any, on_merged: Any) -> None:
        object.__setattr__(self, "_vp_inner", validator)
        object.__setattr__(self, "_vp_on_merged", on_merged)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._vp_inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._vp_inner, name, value)

    def __call__(self, *args: Any, model: Any = None, **kwargs: Any) -> Any:
        if isinstance(model, (str, Path)):
            from ...backends.safe_load import load_checkpoint

            LOGGER.info(f"visionpeft: validating {model} with its adapters merged before fusing")
            loaded, _ = load_checkpoint(model)
            merged = merged_copy(loaded)
            self._vp_on_merged(merged, Path(model))
            model = merged
        return self._vp_inner(*args, model=model, **kwargs)


@contextlib.contextmanager
def _atomic_strip() -> Any:
    """While active, ``BaseTrainer.final_eval``'s ``strip_optimizer`` writes each file atomically.

    Ultralytics rewrites ``last.pt``/``best.pt`` in place there; a run killed mid-write would leave a torn file.
    ``final_eval`` offers no hook for it, so the name ``strip_optimizer`` in ``ultralytics.engine.trainer`` is
    replaced for the duration of the call (and restored, also on error); a call with an explicit output file
    ``s`` goes to the original.
    """
    import ultralytics.engine.trainer as engine

    original = engine.strip_optimizer

    def strip(f: Any = "best.pt", s: str = "", updates: dict[str, Any] | None = None) -> dict[str, Any]:
        return original(f, s, updates) if s else _strip_atomic(Path(f), updates)

    engine.strip_optimizer = strip
    try:
        yield
    finally:
        engine.strip_optimizer = original


def _strip_atomic(path: Path, updates: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ultralytics' ``strip_optimizer`` (final checkpoint: EMA as model, no optimizer), written atomically."""
    from ultralytics.utils.torch_utils import strip_optimizer

    staging = path.with_name(f".{path.name}.strip")
    try:
        out = strip_optimizer(path, str(staging), updates=updates)
        if staging.is_file():
            os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return out


def _digest(path: Path) -> str:
    """SHA-256 of a file's bytes (a checkpoint: tens of MB, read once per run)."""
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _row_epoch(row: str) -> float:
    """The epoch (counted from 1) of one ``results.csv`` row; an unreadable row counts as past every epoch."""
    try:
        return float(row.split(",", 1)[0])
    except ValueError:
        return float("inf")


def split_groups_by_owner(groups: list[dict[str, Any]], model: nn.Module, plan: TrainabilityPlan,
                          configs: list[Any], base_lr: float, wd_scale: float) -> list[dict[str, Any]]:
    """Ultralytics' parameter groups, frozen tensors dropped and each group split per strategy owner and setting.

    Every tensor's rate and decay follow :func:`visionpeft.optim_settings.resolve`, the rule classification uses:
    the recipe-wide values are Ultralytics' (``lr0``; ``weight_decay`` as Ultralytics scaled it for the batch), so a
    group's rate is its source group's rate times ``entry.lr / base_lr`` when the owning entry sets ``lr`` (so
    Ultralytics' own warmup boosts survive), times the LoRA+ ratio for ``lora_B``; biases, 1-D tensors (norm
    affines, SSF scale and shift) and ``no_weight_decay()`` tensors are not decayed, nor anything Ultralytics puts
    in its no-decay groups (``bn``, ``bias``); an entry's ``weight_decay`` is scaled like Ultralytics' own.
    Every new group keeps its source group's keys (``param_group`` decides Ultralytics' bias warmup) and carries
    ``owner``. Empty groups are dropped.

    Args:
        groups: ``optimizer.param_groups`` as Ultralytics built them.
        model: the unwrapped model those groups hold the parameters of.
        plan: its trainability plan; configs: the applied strategy configs.
        base_lr: the rate Ultralytics used (``args.lr0``, after ``optimizer=auto`` chose it).
        wd_scale: Ultralytics' ``batch * accumulate / nbs`` weight-decay factor.
    """
    from ...optim_settings import owner_settings, resolve

    settings = owner_settings(model, plan, configs)
    names = {id(p): n for n, p in model.named_parameters()}
    out: list[dict[str, Any]] = []
    for group in groups:
        split: dict[tuple[str, float, float], list[Any]] = {}
        decayed = group.get("param_group") in {"weight", "muon"}
        recipe_wd = group.get("weight_decay", 0.0) / wd_scale if decayed else 0.0
        for p in group["params"]:
            name = names.get(id(p))
            if not (p.requires_grad and name in settings):
                continue
            s = settings[name]
            rate, wd = resolve(s, lr=base_lr, weight_decay=recipe_wd, no_decay=not decayed)
            split.setdefault((s.owner, group["lr"] * rate / base_lr, wd * wd_scale), []).append(p)
        for (owner, lr, wd), params in split.items():
            out.append({**group, "params": params, "owner": owner, "lr": lr, "weight_decay": wd})
    return out


def _peft_trainer(base: type) -> type[PeftTrainerMixin]:
    """``Peft<Base>``: :class:`PeftTrainerMixin` in front of Ultralytics' trainer class ``base``, defined in this module
    under that name (Ultralytics' DDP launcher imports the trainer class by module and name)."""
    cls = type(f"Peft{base.__name__}", (PeftTrainerMixin, base), {
        "__module__": __name__, "__doc__": f"Ultralytics' ``{base.__name__}`` with visionpeft strategies."})
    globals()[cls.__name__] = cls
    return cls


def _build_trainers() -> dict[tuple[str, bool], type[PeftTrainerMixin]]:
    """One trainer class per row of the task table (Ultralytics' trainer of the task, from its ``task_map``), plus
    RT-DETR's own ``detect`` trainer."""
    from ...backends.ultralytics import task_classes
    from ...ultralytics_tasks import TASKS

    out = {(task, False): _peft_trainer(task_classes(task)["trainer"]) for task in TASKS}
    out["detect", True] = _peft_trainer(task_classes("detect", rtdetr=True)["trainer"])
    return out


#: (Ultralytics task, RT-DETR?) -> the trainer class: ``PeftDetectionTrainer``, ``PeftSegmentationTrainer``,
#: ``PeftPoseTrainer``, ``PeftOBBTrainer``, ``PeftClassificationTrainer``, ``PeftRTDETRTrainer`` (module names too).
TRAINERS: dict[tuple[str, bool], type[PeftTrainerMixin]] = _build_trainers()


def trainer_for(task: str, rtdetr: bool = False) -> type[PeftTrainerMixin]:
    """The visionpeft trainer class for an Ultralytics task (``rtdetr``: RT-DETR's own trainer)."""
    from ...ultralytics_tasks import get

    return TRAINERS[get(task).name, rtdetr]

