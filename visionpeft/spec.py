"""What a backend tells the strategies about a model (strategies never import timm or Ultralytics).

A :class:`ModelSpec` describes a model's structure *by role*: its ``head``, its input ``stem``, its ordered
``blocks``, its ``tokens`` (token blocks of a transformer and their width) and what never trains. Strategies
derive their defaults from these roles (:mod:`visionpeft.strategies.roles`), so a new method needs no backend
edit. The method-specific fields (``lora_targets``, ``lora_exclude``, ``ssf_targets``, ``mlp_modules``) are
*overrides*: ``None`` (the default) means "derive from the roles"; a backend sets one only where it knows
better than the derivation (Ultralytics does for its conv-family LoRA targets, see its ``ultralytics_spec``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TokenSpec:
    """The token role of a transformer: its token blocks, their width and the tokens before the patches.

    VPT inserts prompts here; the role also gives the derivations of :mod:`visionpeft.strategies.roles`
    their "token blocks" (adapter targets, SSF placement, the MLP of each block).

    Attributes:
        blocks: qualified names of the token (transformer) blocks, in order; prompts are inserted before the
            first.
        embed_dim: token width (channels per token).
        num_prefix_tokens: class + register (+ distillation) tokens that precede the patch tokens; prompts
            sit after them.
        patch_size: patch edge in pixels (used for the VPT paper's initialisation range).
    """

    blocks: tuple[str, ...]
    embed_dim: int
    num_prefix_tokens: int
    patch_size: int = 16




@dataclass(frozen=True)
class ModelSpec:
    """Structural facts about a model by role, supplied by its backend.

    Roles (what the backend knows about the model):
        backend: ``"timm"``, ``"ultralytics"`` or ``"generic"``.
        name: model identity recorded in adapter files (e.g. ``"timm:vit_tiny_patch16_224"``).
        head: qualified names (or patterns) of the task-head modules, trained by the ``head`` strategy and
            left out of every adapter's default targets.
        stem: names of the input stem (ViT ``patch_embed`` + its tokens, ResNet ``conv1``/``bn1``,
            EfficientNet ``conv_stem``/``bn1``, Ultralytics ``model.0``); empty when unknown. Its first conv
            is kept out of a CNN's default adapter targets (3 input channels: an adapter is as large as it).
        blocks: ordered block names; ``freeze: {n: N}`` freezes ``blocks[:N]`` (the stem is ``blocks[0]``
            for timm and Ultralytics models).
        tokens: the token role of a transformer (:class:`TokenSpec`), ``None`` for other models.
        always_frozen: parameter-name patterns that never train (e.g. Ultralytics' ``.dfl``).

    Overrides (``None``: derived from the roles by :mod:`visionpeft.strategies.roles`):
        lora_targets: default target patterns of LoRA, DoRA, LoHa and LoKr when a recipe gives none.
        lora_exclude: patterns never adapted by default by those methods and SSF (e.g. the stem, the head).
        ssf_targets: default SSF target patterns (layers followed by a learned scale and shift).
        mlp_modules: names of the MLP modules where AdaptFormer puts its parallel bottleneck.

    ``extra`` holds backend facts that are not roles (timm ``block_members``, Ultralytics ``task``...).
    A spec returned by a backend (``spec_for``) has its overrides filled with the derived values
    (:func:`visionpeft.strategies.roles.with_defaults`) so that they can be read; a hand-made spec may
    leave them ``None``.
    """

    backend: str = "generic"
    name: str = "generic"
    head: tuple[str, ...] = ()
    stem: tuple[str, ...] = ()
    blocks: tuple[str, ...] = ()
    tokens: TokenSpec | None = None
    always_frozen: tuple[str, ...] = ()
    lora_targets: tuple[str, ...] | None = None
    lora_exclude: tuple[str, ...] | None = None
    ssf_targets: tuple[str, ...] | None = None
    mlp_modules: tuple[str, ...] | None = None
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle a spec, including one saved before the roles existed (``prompt`` became ``tokens``)."""
        state = dict(state)
        if "prompt" in state:
            state.setdefault("tokens", state.pop("prompt"))
        for name, value in (("stem", ()), ("tokens", None)):
            state.setdefault(name, value)
        self.__dict__.update(state)


#: What checkpoints of adapted models pickle from this module (the checkpoint loader's allow-list reads it). A spec
#: saved before the roles existed names its token role by the former class name.
CHECKPOINT_CLASSES: tuple[Any, ...] = (ModelSpec, TokenSpec, (TokenSpec, "visionpeft.spec.PromptSpec"))
