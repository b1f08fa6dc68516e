"""The classification recipe: a timm model, a dataset and how to train it."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..devices import parse_device
from ..safe_yaml import brief
from .base import BaseRecipe, Section

__all__ = ["ClassificationRecipe", "TrainSection", "OptimSection", "AugmentSection", "DatasetSection"]


class TrainSection(Section):
    """The training loop.

    Attributes:
        epochs: passes over the training split.
        batch_size: images per step per process; lower it when memory runs out (use ``grad_accum``
            to keep the effective batch).
        eval_batch_size: images per validation step (default: ``2 * batch_size``).
        workers: DataLoader worker processes; 0 loads in the main process (debugging, tiny CPUs).
        grad_accum: micro-batches accumulated before each optimizer step.
        clip_grad: max gradient norm over the trainable parameters; ``null`` disables clipping.
        label_smoothing: cross-entropy label smoothing; 0.1 helps small datasets.
        amp: ``auto`` uses bf16 autocast on GPUs that support it and fp32 on CPU; ``bf16`` forces bf16
            autocast (also on CPU, where it is slower on old CPUs); ``off`` disables it.
        ema: keep an exponential moving average of the trainable weights and validate with it.
        ema_decay: EMA decay per step; closer to 1 for long runs.
        patience: stop after this many epochs without a better validation metric; ``null`` never stops.
        cache_features: with a fully frozen backbone and a deterministic train transform, compute the
            backbone features once and train only the head on them (much faster later epochs).
        device: ``auto`` (CUDA when available), ``cpu``, ``mps``, ``cuda``, ``cuda:N`` or a GPU index ``N``; one
            device per process (several GPUs: torchrun). Checked against the machine when the run starts.
        threads: CPU threads torch may use (``null``: torch's default, one per core). On a machine shared
            with other jobs, 1 is often several times faster than oversubscribed cores.
        max_steps_per_epoch: cap on train steps per epoch (smoke tests, quick looks); ``null`` = all.
        progress: show a progress bar.
        compile: ``torch.compile`` the training module (the adapted model, adapters included) in place, after
            the strategies are applied: state-dict keys, checkpoints, EMA, resume and merge are unchanged. The
            first steps (and the first validation) pay the compilation (tens of seconds on CPU; needs a C++
            compiler there); use it for long runs, not for quick looks. A failed compilation stops the run
            with one line naming this key.
        save_every_epoch: write ``checkpoints/last.pt`` after every epoch so ``visionpeft resume RUN_DIR`` can
            continue a killed run exactly; ``false`` saves the time of writing it (a run can then not be resumed).

    Resuming is a command, not a recipe key: ``visionpeft resume RUN_DIR [key=value ...]``. Run directories
    written by older versions recorded ``resume: false`` and ``resume_dir: null``; those two values are still
    read (and dropped), anything else there is an error pointing to the command.
    """

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    workers: int = Field(2, ge=0)
    grad_accum: int = Field(1, ge=1)
    clip_grad: float | None = Field(1.0, gt=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    amp: Literal["auto", "bf16", "off"] = "auto"
    ema: bool = False
    ema_decay: float = Field(0.999, gt=0, lt=1)
    patience: int | None = Field(None, ge=1)
    cache_features: bool = False
    device: str | int = "auto"
    threads: int | None = Field(None, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    progress: bool = True
    save_every_epoch: bool = True
    compile: bool = False

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> Any:
        """The form only (``gpu`` is refused here); the machine is checked when a run starts."""
        devices = parse_device(value)  # ValueError: pydantic names train.device
        if len(devices) > 1 or isinstance(value, list | tuple):
            raise ValueError("one device per process; for several GPUs launch with torchrun --nproc_per_node=N")
        return value

    @model_validator(mode="before")
    @classmethod
    def _retired_resume_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not {"resume", "resume_dir"} & set(data):
            return data
        data = dict(data)
        resume, resume_dir = data.pop("resume", False), data.pop("resume_dir", None)
        if resume not in (False, None) or resume_dir is not None:
            from ..errors import ConfigError

            target = resume_dir or "RUN_DIR"
            raise ConfigError(f"train.resume / train.resume_dir: not recipe keys; continue a run with 'visionpeft "
                              f"resume {target}' (it reads the run's own recipe.yaml and checkpoints/last.pt)")
        return data


class OptimSection(Section):
    """Optimizer and learning-rate schedule (timm's ``create_optimizer_v2`` / ``create_scheduler_v2``).

    Attributes:
        name: ``adamw`` (default; robust for adapters and prompts) or ``sgd`` (momentum, classic for CNNs).
        lr: learning rate of every non-head parameter whose strategy entry sets no ``lr`` of its own.
            ``null`` (default) gives each method its documented default
            (:data:`visionpeft.optim_settings.DEFAULT_LR`: full fine-tuning 1e-4, LoRA, VPT and BitFit 1e-3...;
            ten times more for SGD). A compare refuses one ``lr`` shared by methods with different defaults.
        head_lr: learning rate of the classifier head (default: ``lr``, else the ``head`` default); raise it
            when the head starts random.
        weight_decay: decoupled weight decay (a strategy entry's ``weight_decay`` overrides it for its
            parameters); biases, norm weights, timm's ``no_weight_decay()`` tensors and VPT prompts get none.
        momentum: SGD momentum.
        scheduler: ``cosine`` (with warmup) or ``none`` (constant after warmup).
        warmup_epochs: linear warmup length in epochs.
        warmup_lr: learning rate at the start of warmup.
        min_lr: floor of the cosine schedule.
    """

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float | None = Field(None, gt=0)
    head_lr: float | None = Field(None, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["cosine", "none"] = "cosine"
    warmup_epochs: int = Field(1, ge=0)
    warmup_lr: float = Field(1e-5, ge=0)
    min_lr: float = Field(1e-6, ge=0)


#: ``augment.img_size`` bounds in pixels: below 8 the smallest timm stems have nothing left; above 4096 a batch
#: of decoded and resized images alone needs gigabytes (OpenCV's "Insufficient memory").
IMG_SIZE_RANGE = (8, 4096)


class AugmentSection(Section):
    """albumentations pipelines. Eval: resize + centre crop from the model's data config.

    Attributes:
        img_size: input size in pixels, 8..4096 (default: the model's data config); smaller is faster.
        crop_pct: eval centre-crop fraction (default: the model's data config).
        random_resized_crop: train with RandomResizedCrop; ``false`` uses the eval transform for train.
        scale: RandomResizedCrop area range; raise the lower bound for small or centred objects.
        ratio: RandomResizedCrop aspect-ratio range.
        hflip: horizontal-flip probability; 0 for data where left/right matters (digits, text).
        color_jitter: brightness/contrast/saturation jitter strength; 0 disables it.
    """

    img_size: int | None = None
    crop_pct: float | None = Field(None, gt=0, le=1)
    random_resized_crop: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333333)
    hflip: float = Field(0.5, ge=0, le=1)
    color_jitter: float = Field(0.0, ge=0)

    @field_validator("img_size")
    @classmethod
    def _img_size(cls, value: int | None) -> int | None:
        if value is not None and not IMG_SIZE_RANGE[0] <= value <= IMG_SIZE_RANGE[1]:
            raise ValueError(f"expected an image size of {IMG_SIZE_RANGE[0]}..{IMG_SIZE_RANGE[1]} pixels, such as 224 "
                             "(or leave it out for the model's own size); larger images do not fit in memory")
        return value

    @field_validator("scale", "ratio", mode="before")
    @classmethod
    def _pair(cls, value: Any, info: Any) -> Any:
        bound = " <= 1" if info.field_name == "scale" else ""
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise ValueError(f"expected a [min, max] pair with 0 < min <= max{bound}, e.g. "
                             f"{[0.08, 1.0] if bound else [0.75, 1.333]}; got {brief(value)}")
        return value

    @field_validator("scale")
    @classmethod
    def _area(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] > 1:
            raise ValueError(f"expected a [min, max] pair with 0 < min <= max <= 1 (fractions of the image area), "
                             f"got {list(value)}")
        return value

    @field_validator("scale", "ratio")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"expected 0 < low <= high, got {list(value)}")
        return value

    @property
    def deterministic(self) -> bool:
        """Whether the train transform gives the same tensor for an image every epoch."""
        return not self.random_resized_crop and self.hflip == 0 and self.color_jitter == 0


class DatasetSection(Section):
    """How the dataset is read.

    Attributes:
        train_split / val_split / test_split: split names in the dataset descriptor. Training uses the first
            two; ``visionpeft eval RUN_DIR --split test`` (``val``, ``train``) evaluates the split named here.
        skip_bad_images: skip unreadable images (counted in the log) instead of stopping with an error.
        max_per_class: keep at most this many images per class and split (quick runs, tests).
    """

    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    skip_bad_images: bool = False
    max_per_class: int | None = Field(None, ge=1)


class ClassificationRecipe(BaseRecipe):
    """A timm classifier fine-tuned on an image-classification dataset.

    Attributes:
        model: timm model name (``tf_efficientnet_lite0``, ``vit_tiny_patch16_224``, ...).
        weights: pretrained weights: ``null`` (random init, or the hub when ``pretrained`` is true), a local
            ``.safetensors``/``.pth`` file, or a named weight source documented by the timm backend.
        pretrained: download hub weights when ``weights`` is null (needs network).
        data: dataset descriptor YAML (see ``datasets/``) or an ImageFolder root with ``train/`` and ``val/``.
        head_init_std: re-initialise the new classifier with N(0, std^2) weights and zero bias. Small
            initial logits let a fresh head learn from the first step; timm's own init for EfficientNet
            gives logits of +-20 on pretrained features. ``null`` keeps timm's initialisation.
    """

    FIXED_ON_RESUME: ClassVar[tuple[str, ...]] = (*BaseRecipe.FIXED_ON_RESUME, "weights", "pretrained",
                                                  "head_init_std")

    task: Literal["classification"] = "classification"
    weights: str | None = None
    pretrained: bool = False
    head_init_std: float | None = Field(0.01, ge=0)
    train: TrainSection = Field(default_factory=TrainSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    augment: AugmentSection = Field(default_factory=AugmentSection)
    dataset: DatasetSection = Field(default_factory=DatasetSection)
