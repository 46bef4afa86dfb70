"""What a scaling map is: its kinds (attention, precision), its grid of points, and its recipes checked.

A map (efficientllm.sweep measures it) is one line per cell: an attention variant of our decoder at one realistic
shape (`sweep.shape` over SmolLM2-135M's, with the variant's `variants` recipe and `sweep.variant_overrides`), or
one precision of a real model. This module holds what the `check_params` stage needs to refuse a bad map before any
cell runs (no measurement, no inference imports): the map kinds, the grid, the recipes resolved at the map's shape.

    python -c "from efficientllm.maps import MAPS; print({k: v.reference for k, v in MAPS.items()})"
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from efficientllm.config import ConfigError, SweepConfig, did_you_mean

AXIS = "sweep"
"""The `axis` of every map row (results/sweep/<map>-<line>/row.json)."""

SMOLLM2_135M: dict[str, Any] = {
    "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192, "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "hidden_act": "silu", "initializer_range": 0.041666666666666664,
    "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
}
"""HuggingFaceTB/SmolLM2-135M's LlamaConfig: the precision map's random-initialised stand-in for the real model."""


@dataclass(frozen=True)
class MapSpec:
    """One kind of map: what a line is and the line the crossovers compare against."""

    line: str
    """What one cell (one line of the map's figures) is."""
    reference: str
    """The reference line: the view `sweep_crossovers` compares every other line's TPOT with it."""


MAPS: dict[str, MapSpec] = {
    "attention": MapSpec("an attention variant (a `variants` recipe) of our decoder at sweep.shape", "mha"),
    "precision": MapSpec("a precision (techniques.quantization.PRECISIONS) of sweep.precision_model", "bf16"),
}
"""Map name -> its spec; `stages.sweep --map <name>` runs one cell of it."""


def grid(cfg: SweepConfig) -> list[tuple[int, int]]:
    """The map's points (context, batch), by context then batch: `cross` every pair, `lines` every context at the
    first batch and every batch at the first context."""
    if cfg.grid == "cross":
        return [(c, b) for c in cfg.contexts for b in cfg.batch_sizes]
    first_c, first_b = cfg.contexts[0], cfg.batch_sizes[0]
    return sorted({*((c, first_b) for c in cfg.contexts), *((first_c, b) for b in cfg.batch_sizes)})


def attention_recipe(slug: str, variants: Mapping[str, Any], cfg: SweepConfig) -> dict[str, Any]:
    """The `variants` recipe of `slug` with `sweep.variant_overrides[slug]` over it; ConfigError for an unknown slug."""
    if slug not in variants:
        raise ConfigError(f"[matrix] sweep_attention: {slug!r} is not defined in [variants]"
                          f"{did_you_mean(slug, variants)}")
    return {**dict(variants[slug] or {}), **dict(cfg.variant_overrides.get(slug) or {})}


def attention_variant(slug: str, recipe: Mapping[str, Any], cfg: SweepConfig) -> Any:
    """The resolved variant (family + config) of a recipe at the map's shape; ConfigError naming the slug."""
    from efficientllm.models.baselines import resolve_recipe

    needed = max(cfg.contexts) + cfg.max_new_tokens
    positions = 1 << (needed - 1).bit_length()  # a power of two: NSA's block sizes must divide it
    data = {"vocab_size": cfg.vocab_size, "max_position_embeddings": positions, "bos_token_id": 0, "eos_token_id": 0,
            "pad_token_id": 0}
    try:
        return resolve_recipe(cfg.model_shape(), recipe, data)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"[sweep] variant {slug} at sweep.shape (variants + sweep.variant_overrides): {e}") from None


def check_sweep(params: Mapping[str, Any], parsed: Mapping[str, Any], precisions: Mapping[str, Any]) -> int:
    """The maps' matrices against their definitions (the `check_params` stage): every `sweep_attention` slug a
    `variants` recipe that builds at `sweep.shape` (with its override), every `sweep_precision` slug a precision.
    Returns the number of recipes built; ConfigError naming the key and the nearest valid name otherwise."""
    matrix = parsed["matrix"]
    if (matrix.sweep_attention or matrix.sweep_precision) and "sweep" not in parsed:
        raise ConfigError("[sweep] missing: matrix.sweep_attention / sweep_precision have cells")
    for slug in matrix.sweep_precision:
        if slug not in precisions:
            raise ConfigError(f"[matrix] sweep_precision: unknown precision {slug!r}{did_you_mean(slug, precisions)} "
                              f"(known: {', '.join(precisions)})")
    cfg = parsed.get("sweep")
    for slug in matrix.sweep_attention:
        attention_variant(slug, attention_recipe(slug, params.get("variants") or {}, cfg), cfg)
    return len(matrix.sweep_attention)
