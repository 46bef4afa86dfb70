"""DiT recipes as data: the keys a `vision_variants` recipe may set and the VisionDiT arguments they make.

Pure Python (no torch, no diffusers), so the `check_params` stage can refuse a bad recipe in a blink, before any
cell runs; efficientllm.vision.dit builds the model from `dit_kwargs`.

    python -c "from efficientllm.vision.recipes import DiTShape, dit_kwargs; \
print(dit_kwargs(DiTShape(8, 1, 10, 2, 64, 2, 4), {'attention': 'mla', 'kv_lora_rank': 16}))"
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from efficientllm.config import ConfigError, did_you_mean

ATTENTION_KINDS = ("mha", "gqa", "mla")
MLP_KINDS = ("dense", "moe")
RECIPE_KEYS = ("attention", "kv_heads", "kv_lora_rank", "mlp", "num_experts", "num_experts_per_tok",
               "moe_intermediate_size", "router_aux_loss_coef")
"""Keys a `vision_variants` recipe may set (everything else of the shape is `pretrain_vision`'s)."""


@dataclass(frozen=True)
class DiTShape:
    """The base shape every variant shares (from `pretrain_vision` and the prepared images)."""

    image_size: int
    channels: int
    num_classes: int
    patch_size: int
    hidden_size: int
    num_layers: int
    num_attention_heads: int

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def dit_kwargs(shape: DiTShape, recipe: dict[str, Any]) -> dict[str, Any]:
    """The VisionDiT constructor arguments of a recipe on `shape`; ValueError naming the key for a bad recipe."""
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (allowed: {', '.join(RECIPE_KEYS)})")
    heads, dim = shape.num_attention_heads, shape.hidden_size
    if dim % heads:
        raise ValueError(f"hidden_size={dim} is not a multiple of num_attention_heads={heads}")
    if shape.image_size % shape.patch_size:
        raise ValueError(f"image_size={shape.image_size} is not a multiple of patch_size={shape.patch_size}")
    attention, mlp = recipe.get("attention", "mha"), recipe.get("mlp", "dense")
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention: {attention!r} is not one of {', '.join(ATTENTION_KINDS)}")
    if mlp not in MLP_KINDS:
        raise ValueError(f"mlp: {mlp!r} is not one of {', '.join(MLP_KINDS)}")
    kv_heads = recipe.get("kv_heads") if attention == "gqa" else None
    if attention == "gqa" and (not isinstance(kv_heads, int) or kv_heads < 1 or heads % kv_heads):
        raise ValueError(f"kv_heads: {kv_heads!r} must divide num_attention_heads={heads} (1: MQA)")
    rank = recipe.get("kv_lora_rank") if attention == "mla" else None
    if attention == "mla" and (not isinstance(rank, int) or rank < 1):
        raise ValueError(f"kv_lora_rank: {rank!r} must be a positive int for attention: mla")
    experts, top_k = recipe.get("num_experts", 4), recipe.get("num_experts_per_tok", 2)
    if mlp == "moe" and not (isinstance(experts, int) and isinstance(top_k, int) and 1 <= top_k <= experts):
        raise ValueError(f"num_experts_per_tok={top_k!r} must be in 1..num_experts={experts!r}")
    return dict(num_attention_heads=heads, attention_head_dim=dim // heads, in_channels=shape.channels,
                num_layers=shape.num_layers, sample_size=shape.image_size, patch_size=shape.patch_size,
                num_embeds_ada_norm=shape.num_classes, attention=attention, kv_heads=kv_heads, kv_lora_rank=rank,
                mlp=mlp, num_experts=experts, num_experts_per_tok=top_k,
                moe_intermediate_size=recipe.get("moe_intermediate_size"),
                router_aux_loss_coef=float(recipe.get("router_aux_loss_coef", 0.01)))


def vision_recipe(params: Mapping[str, Any], slug: str) -> dict[str, Any]:
    """The recipe of DiT variant `slug` from the params mapping's `vision_variants` section; ConfigError naming the
    slug and the nearest defined one when it is missing."""
    variants = params.get("vision_variants")
    if not isinstance(variants, Mapping):
        raise ConfigError("params: missing section [vision_variants] (a mapping slug -> DiT recipe)")
    if slug not in variants:
        raise ConfigError(f"[vision_variants] unknown variant {slug!r}{did_you_mean(slug, variants)} "
                          f"(defined: {', '.join(variants) or 'none'})")
    recipe = variants[slug] or {}
    if not isinstance(recipe, Mapping):
        raise ConfigError(f"[vision_variants] {slug}: expected a mapping of recipe keys, got {recipe!r}")
    return dict(recipe)


def check_recipe(slug: str, recipe: dict[str, Any], shape: DiTShape) -> dict[str, Any]:
    """The VisionDiT arguments of a recipe; ConfigError naming `[vision_variants] <slug>` when it cannot build."""
    try:
        return dit_kwargs(shape, recipe)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"[vision_variants] {slug}: {e}") from None


NOT_FOR_VISION = {"qlora": "its 4-bit base loads through transformers' bitsandbytes path, not a diffusers model"}
"""Fine-tuning methods (efficientllm.techniques.METHODS) the DiT cells do not run, and why."""


def _require(parsed: Mapping[str, Any], key: str, sections: tuple[str, ...]) -> None:
    missing = [s for s in sections if s not in parsed]
    if missing:
        raise ConfigError(f"[matrix] {key} has cells but the params file has no [{missing[0]}] section")


def check_vision(params: Mapping[str, Any], parsed: Mapping[str, Any], methods: Mapping[str, Any]) -> int:
    """The vision matrices against their definitions (the `check_params` stage): every `pretrain_vision` slug a
    recipe of `vision_variants` that builds on `pretrain_vision`'s shape, every `finetune_vision` slug a method of
    `methods` the DiT runs, every `finetune_vlm` slug a model of `finetune_vlm.models` and its methods in `methods`.
    Returns the number of DiT recipes checked; ConfigError naming the key and the nearest valid name otherwise."""
    matrix = parsed["matrix"]
    if matrix.pretrain_vision:
        _require(parsed, "pretrain_vision", ("vision", "vision_eval", "pretrain_vision"))
        vision, cfg = parsed["vision"], parsed["pretrain_vision"]
        classes = 10 if vision.source == "digits" else max([*vision.heldout_classes, 0]) + 2  # placeholder
        shape = DiTShape(vision.image_size, vision.channels, classes, cfg.patch_size, cfg.hidden_size,
                         cfg.num_layers, cfg.num_attention_heads)
        for slug in matrix.pretrain_vision:
            check_recipe(slug, vision_recipe(params, slug), shape)
    vision_methods = [m for m in methods if m not in NOT_FOR_VISION]
    if matrix.finetune_vision:
        _require(parsed, "finetune_vision", ("vision", "vision_eval", "finetune_vision"))
    for slug in matrix.finetune_vision:
        if slug in NOT_FOR_VISION:
            raise ConfigError(f"[matrix] finetune_vision: {slug!r} is not offered for the DiT: {NOT_FOR_VISION[slug]}")
        if slug not in methods:
            raise ConfigError(f"[matrix] finetune_vision: unknown method {slug!r}{did_you_mean(slug, vision_methods)} "
                              f"(known: {', '.join(vision_methods)})")
    if matrix.finetune_vlm:
        _require(parsed, "finetune_vlm", ("finetune_vlm",))
        models = parsed["finetune_vlm"].models
        for slug in matrix.finetune_vlm:
            if slug not in models:
                raise ConfigError(f"[matrix] finetune_vlm: {slug!r} is not defined in [finetune_vlm] models"
                                  f"{did_you_mean(slug, models)} (defined: {', '.join(models) or 'none'})")
        for slug in matrix.finetune_vlm_methods:
            if slug in NOT_FOR_VISION:  # the VLM cells load the base in its dtype; a 4-bit base is not wired in
                raise ConfigError(f"[matrix] finetune_vlm_methods: {slug!r} is not offered for the VLM cells")
            if slug not in methods:
                raise ConfigError(f"[matrix] finetune_vlm_methods: unknown method {slug!r}"
                                  f"{did_you_mean(slug, methods)} (known: {', '.join(methods)})")
    return len(matrix.pretrain_vision)
