"""Classification task: train / evaluate / merge a timm classifier from a recipe (see ``TaskRunner``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...checkpoint import load_tensors, load_trainable_state, load_training_state
from ...data import build_data, list_recipe_splits, resolve_data_config
from ...data.loaders import make_loader
from ...logging.tensorboard import RunLogger
from ...recipe import load_recipe, save_resolved
from ..base import RunResult
from ..distributed import barrier, init_distributed, is_main, rank, world_size
from . import features as feat
from .hooks import CheckpointHook, EarlyStopping, LogHook, PeakMemory, ProgressHook, TensorBoardHook
from .model import build_adapted, resolve_device
from .optim import build_optimizer, build_scheduler, param_groups
from .trainer import Trainer, evaluate_model

__all__ = ["ClassificationTask"]


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


class _Setup:
    """Everything one training run is built from (kept together so helpers stay short)."""

    def __init__(self, recipe: Any, strategies: list[dict[str, Any]], run_dir: Path, run_name: str) -> None:
        self.recipe, self.run_dir, self.name = recipe, Path(run_dir), run_name
        self.device = resolve_device(recipe.train.device)
        if recipe.train.threads:
            torch.set_num_threads(recipe.train.threads)
        listed = list_recipe_splits(recipe)
        self.classes = listed[1]["train"].classes
        self.model, self.spec, self.plan, model_cfg = build_adapted(recipe, strategies, len(self.classes))
        self.data_cfg = resolve_data_config(model_cfg, recipe.augment)
        self.data = build_data(recipe, self.data_cfg, rank(), world_size(), listed=listed)
        self.model.to(self.device)
        self.heads = _head_modules(self.spec)
        self.keep = list(self.plan.trainable) + self.plan.bn_buffers()
        self.run_recipe = recipe.model_copy(update={"strategies": strategies, "compare": None,
                                                    "name": run_name, **_absolute_paths(recipe)})


class ClassificationTask:
    """The classification :class:`~visionpeft.tasks.base.TaskRunner`."""

    primary_metric = "top1"
    metric_names = ("top1", "top5")

    # ------------------------------------------------------------------------------------------ train
    def train(self, recipe: Any, strategies: list[dict[str, Any]], run_dir: Path, run_name: str) -> RunResult:
        """Train one strategy list; write the run directory; return the result for the report."""
        init_distributed()
        s = _Setup(recipe, strategies, run_dir, run_name)
        if is_main():
            self._write_run_files(s)
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
        logger = RunLogger(s.run_dir / "tb", enabled=recipe.tensorboard and is_main())
        memory = PeakMemory(s.device)
        ckpt = CheckpointHook(
            s.run_dir / "checkpoints", tensors=lambda: _snapshot(target(), s.keep, head_prefix),
            raw_tensors=lambda: _snapshot(live, s.keep, head_prefix), save_last=recipe.train.save_every_epoch,
            write=is_main(), extra=lambda: {"ema": _snapshot(ema.module, s.keep, head_prefix)} if ema else {})
        hooks = [memory, ckpt, TensorBoardHook(logger, memory), LogHook(run_name, is_main()),
                 ProgressHook(run_name, recipe.train.progress and is_main())]
        if recipe.train.patience:
            hooks.append(EarlyStopping(recipe.train.patience))
        sampler = train_loader.sampler if hasattr(train_loader.sampler, "set_epoch") else None

        def set_epoch(epoch: int) -> None:  # shuffling and augmentation depend on (seed, epoch) only
            if sampler is not None:
                sampler.set_epoch(epoch)
            s.data.train.set_epoch(epoch)

        trainer = Trainer(
            module, optimizer, scheduler, torch.nn.CrossEntropyLoss(label_smoothing=recipe.train.label_smoothing),
            train_loader, val_loader, recipe.train, s.device, len(s.classes), s.classes, hooks,
            eval_model=target, after_step=(lambda t: ema.update(live, step=t.state.updates)) if ema else None,
            set_epoch=set_epoch)
        start = self._maybe_resume(s, trainer, live, ema, head_prefix, ckpt)
        logger.plan(s.plan)
        t0 = time.perf_counter()
        trainer.fit(start_epoch=start)
        wall = time.perf_counter() - t0
        return self._finish(s, trainer, ckpt, memory, logger, wall)

    def _write_run_files(self, s: _Setup) -> None:
        s.run_dir.mkdir(parents=True, exist_ok=True)
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
                from ...errors import ConfigError

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
    def _maybe_resume(s: _Setup, trainer: Trainer, live: nn.Module, ema: Any, prefix: str,
                      ckpt: CheckpointHook) -> int:
        """Restore ``last.pt`` when ``train.resume`` is set; return the epoch to start from."""
        path = s.run_dir / "checkpoints" / "last.pt"
        if not s.recipe.train.resume or not path.is_file():
            return 0
        state = load_training_state(path)
        strip = {k[len(prefix):]: v for k, v in state["model"].items()}
        load_trainable_state(live, strip)
        if ema is not None and state["extra"].get("ema"):
            load_trainable_state(ema.module, {k[len(prefix):]: v for k, v in state["extra"]["ema"].items()})
        trainer.optimizer.load_state_dict(state["optimizer"])
        if state["scheduler"] is not None:
            trainer.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        saved = state["extra"]["state"]
        st = trainer.state
        st.updates, st.images, st.train_time = saved["updates"], saved["images"], saved["train_time"]
        st.best_metric, st.best_epoch, st.history = saved["best_metric"], saved["best_epoch"], saved["history"]
        st.step_times = [saved["mean_step_time"]] * saved["step_count"]
        ckpt.best_metrics = saved.get("best_metrics", {})
        if is_main():
            print(f"[{s.name}] resumed from {path} after epoch {state['epoch'] + 1}", flush=True)
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
            extra={"best_epoch": st.best_epoch, "epochs_run": len(st.history), "world_size": world,
                   "cache_seconds": s.cache_seconds, "lrs": dict(s.lrs)})
        if is_main():
            adapter = save_adapter(s.model, s.run_dir / "adapter", extra={
                "task": "classification", "model": s.recipe.model, "weights": s.recipe.weights,
                "num_classes": len(s.classes), "classes": list(s.classes)})
            result.adapter_bytes = (adapter / "adapter.safetensors").stat().st_size
            full = {**result.to_dict(), "best_metrics": best, "history": st.history}
            (s.run_dir / "metrics.json").write_text(json.dumps(full, indent=2))
            logger.hparams(self._hparams(s), {**metrics, "trainable_pct": s.plan.trainable_pct})
        logger.close()
        barrier()
        return result

    @staticmethod
    def _hparams(s: _Setup) -> dict[str, Any]:
        r = s.recipe
        return {"strategy": s.name, "methods": "+".join(s.plan.strategies), "model": r.model,
                "epochs": r.train.epochs, "batch_size": r.train.batch_size,
                **{f"lr/{k}": v for k, v in s.lrs.items()}, "optimizer": r.optim.name,
                "img_size": s.data_cfg.img_size, "trainable_params": s.plan.trainable_count, "seed": r.seed}

    # --------------------------------------------------------------------------------- eval / merge
    @staticmethod
    def load_run(run_dir: Path) -> tuple[Any, nn.Module, Any, dict[str, Any]]:
        """Rebuild a finished run's model: ``(recipe, model with adapter loaded, plan, adapter meta)``."""
        from ...adapter_io import load_adapter, read_adapter_config
        from .model import build_base

        run_dir = Path(run_dir)
        recipe = load_recipe(run_dir / "recipe.yaml")
        meta = read_adapter_config(run_dir / "adapter")
        model, spec, cfg = build_base(recipe, int(meta["extra"]["num_classes"]))
        plan = load_adapter(model, run_dir / "adapter", spec)
        return recipe, model, plan, {**meta, "data_config": cfg}

    def evaluate(self, run_dir: Path, split: str = "val") -> dict[str, float]:
        """Top-1/top-5 (and per-class accuracy) of the run's saved adapter on ``split``."""
        recipe, model, _, meta = self.load_run(run_dir)
        device = resolve_device(recipe.train.device)
        data_cfg = resolve_data_config(meta["data_config"], recipe.augment)
        data = build_data(recipe, data_cfg, eval_split=split, eval_only=True)
        classes = tuple(meta["extra"]["classes"])
        if data.classes != classes:
            from ...errors import ConfigError

            raise ConfigError(f"split {split!r} classes {list(data.classes)[:10]} differ from the run's "
                              f"{list(classes)[:10]}")
        model.to(device)
        return evaluate_model(model, data.val_loader, device, classes)

    def merge(self, run_dir: Path, out: Path) -> Path:
        """Fold the adapter into plain weights: a timm state dict (``.safetensors`` or ``.pt``) + ``.json``.

        ``timm.create_model(model, num_classes=K).load_state_dict(<file>, strict=True)`` accepts it.
        """
        from safetensors.torch import save_file

        from ...api import merge as merge_model
        from ...checkpoint import atomic_save

        recipe, model, _, meta = self.load_run(run_dir)
        merge_model(model)
        out = Path(out)
        if out.suffix not in (".safetensors", ".pt", ".pth"):
            out = out / "model.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        if out.suffix == ".safetensors":
            save_file(sd, str(out))
        else:
            atomic_save(sd, out)
        out.with_suffix(".json").write_text(json.dumps({
            "timm_model": recipe.model, "num_classes": meta["extra"]["num_classes"],
            "classes": meta["extra"]["classes"], "data_config": meta["data_config"],
            "load": f"timm.create_model({recipe.model!r}, num_classes={meta['extra']['num_classes']})"
                    ".load_state_dict(state_dict, strict=True)"}, indent=2, default=list))
        return out
