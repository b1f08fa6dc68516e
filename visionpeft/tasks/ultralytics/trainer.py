"""Ultralytics' trainers, extended so visionpeft strategies hold for the whole run.

:class:`PeftTrainerMixin` goes in front of Ultralytics' own trainer class of each task in the task table (from
Ultralytics' ``task_map``): ``PeftDetectionTrainer`` (``DetectionTrainer``), ``PeftSegmentationTrainer``,
``PeftPoseTrainer``, ``PeftOBBTrainer``, ``PeftClassificationTrainer`` and ``PeftRTDETRTrainer``, made in
:data:`TRAINERS`; :func:`trainer_for` picks one. It extends Ultralytics through overridable methods and callbacks
(each calls the parent's, except ``final_eval``, restated); tested with Ultralytics 8.4.190 (the floor in
``pyproject.toml`` is 8.4.104). Its jobs live in one module each: the model (:mod:`.trainer_model`), the
optimizer (:mod:`.trainer_optim`), checkpoints and resume (:mod:`.trainer_checkpoints`), merge before the final
validation (:mod:`.trainer_final`); this module holds the settings, the outputs and the trainer classes.

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
* Ultralytics' final validation (``BaseTrainer.final_eval``) hands ``best.pt`` to the validator by path and
  strips the checkpoints in place: ``final_eval`` (restated in :mod:`.trainer_final`, at ``BaseTrainer``'s place
  in the MRO so a task trainer's own extension such as ``DepthTrainer``'s calibration still runs) strips them
  atomically, loads ``best.pt`` with the allow-list, merges the adapters into plain layers (also written as
  ``weights/merged.pt``, again if the task trainer rewrites ``best.pt`` afterwards) and validates that.
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

Use it from Python with ``YOLO(...).train(trainer=PeftDetectionTrainer.configure([...]), data=...)`` (the run gets
its ``recipe.yaml`` from :mod:`.run_record`, so visionpeft's commands read it), with ``yolo.train(...)`` after
``visionpeft.apply(yolo, [...])`` (:mod:`.attached`: the trainer continues from that adapted model, ``vp_source``),
or through ``visionpeft train`` (the Ultralytics runner). The classes are also ``visionpeft.PeftDetectionTrainer``...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ultralytics.utils import RANK

from ... import api
from ...errors import ConfigError
from ...plan import TrainabilityPlan
from .callbacks import PerfMeter, make_callbacks, write_json
from .ddp import launch_env, settings_from_env
from .trainer_checkpoints import CheckpointMixin
from .trainer_final import FinalEvalMixin, RestatedFinalEval
from .trainer_model import AdaptedSource, ModelSetupMixin
from .trainer_optim import OptimizerMixin, split_groups_by_owner

# Also the generated ``Peft<UltralyticsTrainer>`` classes (``PeftDetectionTrainer``...; see :data:`TRAINERS`).
__all__ = ["PeftTrainerMixin", "TRAINERS", "trainer_for", "split_groups_by_owner"]


class PeftTrainerMixin(ModelSetupMixin, OptimizerMixin, CheckpointMixin, FinalEvalMixin):
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
    #: ``vp_strategies`` as typed configs, parsed once (``configure``, a DDP worker's settings, or the checkpoint's
    #: strategies on resume); ``apply`` takes them as they are.
    vp_configs: ClassVar[list[Any] | None] = None
    vp_run_dir_cfg: ClassVar[str | None] = None
    vp_tensorboard: ClassVar[bool] = True
    vp_run_name: ClassVar[str | None] = None
    vp_configured: ClassVar[bool] = False
    #: The user's adapted model to continue from (``yolo.train(...)`` after ``visionpeft.apply(yolo, ...)``, see
    #: :mod:`.attached`); ``None``: the strategies are applied to the model Ultralytics builds.
    vp_source: ClassVar[AdaptedSource | None] = None

    @classmethod
    def configure(
        cls, strategies: list[Any], *, run_dir: str | Path | None = None, tensorboard: bool = True,
        run_name: str | None = None, source: AdaptedSource | None = None,
    ) -> type[PeftTrainerMixin]:
        """A trainer class bound to ``strategies`` (validated now, so typos fail before any data loading).

        ``source``: continue from a model the user adapted (its adapter tensors, its base; see :mod:`.attached`,
        which passes it); its budgets come with the per-layer ranks they resolved to."""
        configs = api.parse_strategies(strategies)
        for i, c in enumerate(configs):
            if source is None and getattr(c, "budget", None) is not None \
                    and getattr(c, "allocation", None) == "importance":
                raise ConfigError(
                    f"strategies.{i}.allocation: importance is not available for detection (Ultralytics' trainer "
                    "builds the model before its data loaders, so no batches exist to measure gradients on); use "
                    "allocation: uniform"
                )
        attrs = {
            "vp_strategies": [c.model_dump(mode="json") for c in configs],
            "vp_configs": configs,
            "vp_run_dir_cfg": str(run_dir) if run_dir is not None else None,
            "vp_tensorboard": tensorboard,
            "vp_run_name": run_name,
            "vp_configured": True,
            "vp_source": source,
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
        if self.vp_source is not None and self.world_size > 1:
            raise ConfigError(
                f"device={self.args.device}: the adapted model of this YOLO object cannot travel to Ultralytics' DDP "
                "workers; train on one device, or use 'visionpeft train RECIPE ultralytics.device=0,1' / "
                "YOLO(base).train(trainer=visionpeft.trainer_for(task).configure([...]), device='0,1')"
            )
        self.vp_overrides = overrides  # what the caller set: the run's recipe.yaml records it (see .run_record)
        self._vp_read_settings()
        self.vp_plan: TrainabilityPlan | None = None
        self.vp_run_dir = Path(self.vp_run_dir_cfg) if self.vp_run_dir_cfg else Path(self.save_dir)
        self.vp_perf = PerfMeter()
        self.vp_updates = 0
        self.vp_logger = None
        # A DDP launcher (self.ddp) trains nothing itself: its workers log; of those, rank 0 only.
        if self.vp_tensorboard and RANK in {-1, 0} and not self.ddp:
            from ...logging.tensorboard import RunLogger

            self.vp_logger = RunLogger(self.vp_run_dir)
        for event, fn in make_callbacks().items():
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
            self.vp_configs = None if strategies is None else api.parse_strategies(strategies)
            self.vp_strategies = None if strategies is None else [c.model_dump(mode="json") for c in self.vp_configs]
            self.vp_run_dir_cfg = env.get("run_dir")
            self.vp_tensorboard = bool(env.get("tensorboard", True))
            self.vp_run_name = env.get("run_name")
        elif self.resume:
            self.vp_strategies = self.vp_configs = None  # adopted from the checkpoint in get_model

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

def _peft_trainer(base: type) -> type[PeftTrainerMixin]:
    """``Peft<Base>``: :class:`PeftTrainerMixin` in front of Ultralytics' trainer class ``base``, defined in this module
    under that name (Ultralytics' DDP launcher imports the trainer class by module and name)."""
    # RestatedFinalEval last: it replaces BaseTrainer.final_eval only, so a task trainer's own final_eval
    # (DepthTrainer's calibration) runs around it as in Ultralytics (see .trainer_final).
    cls = type(f"Peft{base.__name__}", (PeftTrainerMixin, base, RestatedFinalEval), {
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

