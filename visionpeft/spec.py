"""What a backend tells the strategies about a model (strategies never import timm or Ultralytics)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PromptSpec:
    """Where visual prompt tokens go in a transformer.

    Attributes:
        blocks: qualified names of the transformer blocks, in order; prompts are inserted before the first.
        embed_dim: token width.
        num_prefix_tokens: class + register tokens that precede the patch tokens; prompts sit after them.
        patch_size: patch edge in pixels (used for the VPT paper's initialisation range).
    """

    blocks: tuple[str, ...]
    embed_dim: int
    num_prefix_tokens: int
    patch_size: int = 16


@dataclass(frozen=True)
class ModelSpec:
    """Structural facts about a model, supplied by its backend.

    Attributes:
        backend: ``"timm"``, ``"ultralytics"`` or ``"generic"``.
        name: model identity recorded in adapter files (e.g. ``"timm:vit_tiny_patch16_224"``).
        head: qualified names of the task-head modules (trained by the ``head`` strategy).
        blocks: ordered block names; ``freeze: {n: N}`` freezes ``blocks[:N]``.
        lora_targets: default LoRA target patterns when a recipe gives none.
        lora_exclude: patterns never adapted by default (e.g. the stem, the head).
        always_frozen: parameter-name patterns that never train (e.g. Ultralytics' ``.dfl``).
        prompt: prompt insertion point for VPT, or ``None`` when the model is not a supported transformer.
        ssf_targets: default SSF target patterns (layers followed by a learned scale and shift); the
            ``lora_exclude`` patterns and the head are left out of them too.
        mlp_modules: names of the transformer blocks' MLP modules, where AdaptFormer puts its parallel
            bottleneck; empty when the model has none.
    """

    backend: str = "generic"
    name: str = "generic"
    head: tuple[str, ...] = ()
    blocks: tuple[str, ...] = ()
    lora_targets: tuple[str, ...] = ("Linear", "Conv2d")
    lora_exclude: tuple[str, ...] = ()
    always_frozen: tuple[str, ...] = ()
    prompt: PromptSpec | None = None
    ssf_targets: tuple[str, ...] = ("Linear", "Conv2d", "_NormBase", "LayerNorm", "GroupNorm")
    mlp_modules: tuple[str, ...] = ()
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)
