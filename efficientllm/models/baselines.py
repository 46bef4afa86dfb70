"""Model families: our decoder plus the attention-free and other baselines that come from transformers.

A pretraining recipe (params.yaml ``variants``) names a full model. Its ``family`` key picks an entry of ``FAMILIES``
(default ``efficientlm``, the configurable decoder); the family turns the base ``model`` shape (hidden_size,
num_hidden_layers, ...; transformers' names) plus the recipe's overrides plus the prepared tokenizer's vocabulary
and special tokens into a transformers config, and builds the model from it. The baselines are plain transformers
classes, so the training loop, ``save_pretrained`` and ``AutoModelForCausalLM.from_pretrained`` need nothing special:

- ``mamba2``: ``Mamba2ForCausalLM`` (Dao & Gu 2024, SSD). Its reference PyTorch path trains on CPU. Default knob
  for the budget: depth (the Mamba papers' convention of matching a transformer with more, thinner-per-width blocks).
- ``mamba``: ``MambaForCausalLM`` (v1, Gu & Dao 2023). Registered, but CUDA-only in practice: without the
  ``mamba-ssm`` kernels its reference selective scan takes seconds to minutes per step on CPU.
- ``rwkv``: ``RwkvForCausalLM`` (RWKV-4, Peng et al. 2023), through its CPU time loop (no CUDA kernel needed).
- ``gptneox``: ``GPTNeoXForCausalLM`` in the Pythia style (Biderman et al. 2023): rotary on 25% of each head
  (``rotary_pct``), parallel residual, GELU MLP, biases, LayerNorm.

Recipe keys every family understands: ``family``; ``param_budget`` (``match_base``: the non-embedding parameter count
of the plain decoder built from the ``model`` section; or a number of non-embedding parameters) with ``size_by`` (a
knob of models.sizing.KNOBS; default per family) and ``param_budget_tolerance`` (default 0.10); ``depth_scale`` and
``width_scale`` (models.sizing.SHAPE_SCALES: multiply the base's layers / query heads, so a recipe means the same
at every model size); the base shape's keys; and any field of the family's transformers config (e.g. ``state_size``
for mamba2). Order: base shape, scales, absolute keys, data fields, then the budget search.

What each family reports for the row (analytic where the architecture allows, else measured once on the meta device):

- FLOPs per token: decoder and GPT-NeoX analytic (2 x matmul weights + attention scores over the full T x T grid);
  RWKV analytic (2 x matmul weights: its WKV recurrence is elementwise, which no FLOP count here includes); Mamba and
  Mamba2 by ``torch.utils.flop_counter.FlopCounterMode`` over one forward of a (1, seq_len) batch on the meta device
  (their chunked scan is batched matmuls whose size depends on chunk and state size). Training = 3 x forward.
- KV-cache bytes per token: attention models as usual; Mamba and RWKV keep a constant-size recurrent state instead,
  so they report 0 per token and ``state_bytes_per_sequence`` (bytes per sequence, independent of its length).

    python -c "from efficientllm.models.baselines import FAMILIES; print(sorted(FAMILIES))"
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
    RwkvConfig,
    RwkvForCausalLM,
)

from efficientllm.models import accounting
from efficientllm.models.configuration import EfficientLMConfig
from efficientllm.models.modeling import EfficientLMForCausalLM
from efficientllm.models.sizing import KNOBS, SHAPE_SCALES, Sizing, non_embedding_parameters, size_to_budget

DATA_KEYS = frozenset({"vocab_size", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"})
"""Config fields that come from the prepared data (tokenizer and block length), never from a recipe."""

_FIXED_KEYS = DATA_KEYS | {"context_length"}  # RWKV's name for max_position_embeddings
_PRETRAINED_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(PreTrainedConfig))

DEFAULT_TOLERANCE = 0.10
"""Largest accepted |actual - budget| / budget of a sized recipe, unless it sets ``param_budget_tolerance``."""

RECIPE_KEYS = ("family", "param_budget", "size_by", "param_budget_tolerance", *SHAPE_SCALES)
"""Recipe keys read here, not passed to any config."""


class ModelFamily:
    """One architecture family: builds its config from the base shape and reports FLOPs and cache sizes.

    Subclasses set the class attributes and implement ``config_kwargs``; the rest is shared.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[PreTrainedConfig]]
    model_class: ClassVar[type[PreTrainedModel]]
    shape_keys: ClassVar[frozenset[str]]
    """Keys of the base ``model`` shape this family reads (a recipe may override only these)."""
    options: ClassVar[Mapping[str, Any]] = {}
    """Recipe keys the family translates itself (not fields of its config), with their defaults."""
    size_by: ClassVar[str]
    """Default knob of a ``param_budget`` search."""
    flops_method: ClassVar[str] = "analytic"
    """How ``flops_per_token`` is obtained: "analytic" or "flop_counter" (FlopCounterMode, meta device)."""
    describe_keys: ClassVar[tuple[str, ...]] = ("hidden_size", "num_hidden_layers")
    """Config fields copied into the row's ``extra``."""

    def native_keys(self) -> frozenset[str]:
        """Recipe keys passed straight to the config: its own fields, plus the family's options."""
        fields = {f.name for f in dataclasses.fields(self.config_class)} - _PRETRAINED_CONFIG_FIELDS - _FIXED_KEYS
        return frozenset(fields | set(self.options))

    def config_kwargs(self, shape: Mapping[str, Any], native: dict[str, Any], data: Mapping[str, Any]) -> dict:
        """transformers config kwargs from the base shape, the recipe's native keys and the data's fields."""
        raise NotImplementedError

    def build_config(self, shape: Mapping[str, Any], native: Mapping[str, Any], data: Mapping[str, Any]) -> Any:
        """The family's config; a value the config rejects raises ValueError naming it."""
        native = dict(native)
        opts = {k: native.pop(k, default) for k, default in self.options.items()}
        kwargs = self.config_kwargs(shape, {**native, **opts}, data)
        for k in opts:
            kwargs.pop(k, None)
        kwargs.update(native)
        try:
            config = self.config_class(**kwargs)
        except StrictDataclassError as e:  # transformers' strict configs: one readable line, as a ValueError
            raise ValueError(f"family {self.name}: " + " ".join(str(e).split())) from None
        self.check(config)
        return config

    def check(self, config: Any) -> None:
        """Raise ValueError, naming the key, for a config that builds but cannot run."""

    def build_model(self, config: Any) -> PreTrainedModel:
        return self.model_class(config)

    def forward_flops_per_token(self, config: Any, seq_len: int) -> float:
        """Forward matmul FLOPs per token of a ``seq_len``-token sequence in one forward (no cache)."""
        return _counted_flops_per_token(self, config, seq_len)

    def flops_per_token(self, config: Any, seq_len: int, training: bool = False) -> float:
        if seq_len <= 0:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        forward = self.forward_flops_per_token(config, seq_len)
        return 3.0 * forward if training else float(forward)

    def kv_cache_bytes_per_token(self, config: Any, bytes_per_element: float) -> float:
        """Cache bytes added per token of context per sequence (0 for constant-size recurrent state)."""
        return 0.0

    def state_bytes_per_sequence(self, config: Any, bytes_per_element: float) -> float:
        """Bytes of constant-size recurrent state per sequence, all layers (0 for attention models)."""
        return 0.0

    def describe(self, config: Any) -> dict[str, Any]:
        """The architecture fields for the row's ``extra``."""
        return {key: getattr(config, key) for key in self.describe_keys}


_COUNTED_FLOPS: dict[tuple[str, str, int], float] = {}


def _counted_flops_per_token(family: ModelFamily, config: Any, seq_len: int) -> float:
    """FlopCounterMode over one forward of a (1, seq_len) batch, the model built on the meta device; memoised."""
    from torch.utils.flop_counter import FlopCounterMode

    key = (family.name, config.to_json_string(use_diff=False), seq_len)
    if key not in _COUNTED_FLOPS:
        with torch.device("meta"):
            model = family.model_class(config)
        ids = torch.zeros(1, seq_len, dtype=torch.long, device="meta")
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(input_ids=ids, use_cache=False)
        _COUNTED_FLOPS[key] = counter.get_total_flops() / seq_len
    return _COUNTED_FLOPS[key]


def _linear_weights(*shapes: tuple[int, int]) -> int:
    return sum(a * b for a, b in shapes)


class DecoderFamily(ModelFamily):
    """The configurable decoder (efficientllm.models): attention x positional x MLP components."""

    name = "efficientlm"
    config_class = EfficientLMConfig
    model_class = EfficientLMForCausalLM
    shape_keys = frozenset(
        {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
         "head_dim", "rope_theta", "rms_norm_eps", "tie_word_embeddings"}
    )
    size_by = "intermediate_size"
    describe_keys = ("attention", "positional", "mlp", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "intermediate_size")

    def native_keys(self) -> frozenset[str]:
        import inspect

        params = set(inspect.signature(EfficientLMConfig.__init__).parameters) - {"self", "kwargs"}
        return frozenset(params - _FIXED_KEYS)

    def config_kwargs(self, shape: Mapping[str, Any], native: dict[str, Any], data: Mapping[str, Any]) -> dict:
        return {**shape, **data}

    def flops_per_token(self, config: Any, seq_len: int, training: bool = False) -> float:
        return accounting.flops_per_token(config, seq_len, training=training)

    def kv_cache_bytes_per_token(self, config: Any, bytes_per_element: float) -> float:
        return accounting.kv_cache_bytes_per_token(config, bytes_per_element)


class Mamba2Family(ModelFamily):
    """Mamba2 (SSD). Heads: head_dim defaults to the base's (hidden_size / num_attention_heads), num_heads to
    expand x hidden_size / head_dim; n_groups 1; chunk_size capped at the block length (a longer chunk only pads)."""

    name = "mamba2"
    config_class = Mamba2Config
    model_class = Mamba2ForCausalLM
    shape_keys = frozenset({"hidden_size", "num_hidden_layers", "num_attention_heads", "tie_word_embeddings"})
    size_by = "num_hidden_layers"
    flops_method = "flop_counter"
    describe_keys = ("hidden_size", "num_hidden_layers", "state_size", "expand", "num_heads", "head_dim", "n_groups",
                     "chunk_size", "conv_kernel")

    def config_kwargs(self, shape: Mapping[str, Any], native: dict[str, Any], data: Mapping[str, Any]) -> dict:
        hidden, heads = shape["hidden_size"], shape["num_attention_heads"]
        expand = native.get("expand", 2)
        if "head_dim" not in native and hidden % heads:
            raise ValueError(f"family mamba2: hidden_size ({hidden}) is not divisible by num_attention_heads "
                             f"({heads}); set head_dim")
        head_dim = native.get("head_dim", hidden // heads)
        chunk = min(256, data["max_position_embeddings"])  # 256: transformers' default
        return dict(
            hidden_size=hidden, num_hidden_layers=shape["num_hidden_layers"],
            tie_word_embeddings=shape["tie_word_embeddings"], expand=expand, head_dim=head_dim,
            num_heads=expand * hidden // head_dim, n_groups=1, chunk_size=chunk,
            **{k: data[k] for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")},
        )

    def check(self, config: Any) -> None:
        if config.num_heads % config.n_groups:
            raise ValueError(f"family mamba2: num_heads ({config.num_heads}) must be divisible by n_groups "
                             f"({config.n_groups})")

    def state_bytes_per_sequence(self, config: Any, bytes_per_element: float) -> float:
        d_inner = config.expand * config.hidden_size
        conv = (d_inner + 2 * config.n_groups * config.state_size) * config.conv_kernel  # last conv inputs
        ssm = config.num_heads * config.head_dim * config.state_size  # the SSM state h
        return float(config.num_hidden_layers * (conv + ssm) * bytes_per_element)


class MambaFamily(ModelFamily):
    """Mamba v1 (selective scan). CUDA-only in practice: needs the mamba-ssm kernels to train at a usable speed."""

    name = "mamba"
    config_class = MambaConfig
    model_class = MambaForCausalLM
    shape_keys = frozenset({"hidden_size", "num_hidden_layers", "tie_word_embeddings"})
    size_by = "num_hidden_layers"
    flops_method = "flop_counter"
    describe_keys = ("hidden_size", "num_hidden_layers", "state_size", "expand", "conv_kernel")

    def config_kwargs(self, shape: Mapping[str, Any], native: dict[str, Any], data: Mapping[str, Any]) -> dict:
        return dict(
            hidden_size=shape["hidden_size"], num_hidden_layers=shape["num_hidden_layers"],
            tie_word_embeddings=shape["tie_word_embeddings"],
            **{k: data[k] for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")},
        )

    def state_bytes_per_sequence(self, config: Any, bytes_per_element: float) -> float:
        d_inner = config.expand * config.hidden_size
        per_layer = d_inner * config.conv_kernel + d_inner * config.state_size  # conv inputs + SSM state
        return float(config.num_hidden_layers * per_layer * bytes_per_element)


class RwkvFamily(ModelFamily):
    """RWKV-4. ``rescale_every`` defaults to 0: transformers' inference rescaling divides weights in place when the
    model enters eval mode, so a checkpoint saved right after an evaluation would hold rescaled weights."""

    name = "rwkv"
    config_class = RwkvConfig
    model_class = RwkvForCausalLM
    shape_keys = frozenset({"hidden_size", "num_hidden_layers", "intermediate_size", "tie_word_embeddings"})
    size_by = "intermediate_size"
    describe_keys = ("hidden_size", "num_hidden_layers", "intermediate_size", "attention_hidden_size")

    def config_kwargs(self, shape: Mapping[str, Any], native: dict[str, Any], data: Mapping[str, Any]) -> dict:
        return dict(
            hidden_size=shape["hidden_size"], num_hidden_layers=shape["num_hidden_layers"],
            intermediate_size=shape["intermediate_size"], tie_word_embeddings=shape["tie_word_embeddings"],
            context_length=data["max_position_embeddings"], rescale_every=0,
            **{k: data[k] for k in ("vocab_size", "bos_token_id", "eos_token_id")},
        )

    def forward_flops_per_token(self, config: Any, seq_len: int) -> float:
        C, A, F = config.hidden_size, config.attention_hidden_size, config.intermediate_size
        time_mix = _linear_weights((C, A), (C, A), (C, A), (A, C))  # key, value, receptance, output
        channel_mix = _linear_weights((C, F), (F, C), (C, C))  # key, value, receptance
        return float(config.num_hidden_layers * 2 * (time_mix + channel_mix) + 2 * C * config.vocab_size)

    def state_bytes_per_sequence(self, config: Any, bytes_per_element: float) -> float:
        # Five (hidden_size,) vectors per layer: the last inputs of time- and channel-mix in the model's dtype, and
        # the WKV numerator, denominator and running max, which transformers keeps in fp32.
        return float(config.num_hidden_layers * config.hidden_size * (2 * bytes_per_element + 3 * 4))


class GPTNeoXFamily(ModelFamily):
    """Pythia-style GPT-NeoX: multi-head attention (num_key_value_heads is not used), rotary on ``rotary_pct`` of each
    head (default 0.25, Pythia's), parallel residual, GELU MLP with biases."""

    name = "gptneox"
    config_class = GPTNeoXConfig
    model_class = GPTNeoXForCausalLM
    shape_keys = frozenset({"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                            "rope_theta", "tie_word_embeddings"})
    options = {"rotary_pct": 0.25}
    size_by = "intermediate_size"
    describe_keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "use_parallel_residual")

    def config_kwargs(self, shape: Mapping[str, Any], native: dict[str, Any], data: Mapping[str, Any]) -> dict:
        rope = {"rope_type": "default", "rope_theta": float(shape["rope_theta"]),
                "partial_rotary_factor": float(native["rotary_pct"])}
        return dict(
            hidden_size=shape["hidden_size"], num_hidden_layers=shape["num_hidden_layers"],
            num_attention_heads=shape["num_attention_heads"], intermediate_size=shape["intermediate_size"],
            tie_word_embeddings=shape["tie_word_embeddings"], rope_parameters=rope, **data,
        )

    def forward_flops_per_token(self, config: Any, seq_len: int) -> float:
        C, F = config.hidden_size, config.intermediate_size
        projections = _linear_weights((C, 3 * C), (C, C), (C, F), (F, C))  # qkv, dense, h->4h, 4h->h
        scores_and_values = 2 * seq_len * C  # QK^T and PV over the full T x T grid, per token (x2 below)
        per_layer = 2 * projections + 2 * scores_and_values
        return float(config.num_hidden_layers * per_layer + 2 * C * config.vocab_size)

    def kv_cache_bytes_per_token(self, config: Any, bytes_per_element: float) -> float:
        return float(config.num_hidden_layers * 2 * config.hidden_size * bytes_per_element)  # K and V, every head

    def describe(self, config: Any) -> dict[str, Any]:
        return {**super().describe(config), "rotary_pct": config.rope_parameters.get("partial_rotary_factor")}


FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (DecoderFamily(), Mamba2Family(), MambaFamily(), RwkvFamily(), GPTNeoXFamily())
}
"""Recipe ``family`` -> the family that builds it."""


def family_of(config: Any) -> ModelFamily:
    """The family whose config class built ``config`` (by transformers' model_type)."""
    for family in FAMILIES.values():
        if family.config_class.model_type == config.model_type:
            return family
    raise ValueError(f"no model family for model_type {config.model_type!r}; known: {sorted(FAMILIES)}")


def flops_per_token(config: Any, seq_len: int, training: bool = False) -> float:
    """Matmul FLOPs per token of any family's config (accounting.flops_per_token for decoders)."""
    return family_of(config).flops_per_token(config, seq_len, training=training)


def kv_cache_bytes_per_token(config: Any, bytes_per_element: float) -> float:
    """Per-token cache bytes of any family's config (0 for recurrent families: see state_bytes_per_sequence)."""
    return family_of(config).kv_cache_bytes_per_token(config, bytes_per_element)


def state_bytes_per_sequence(config: Any, bytes_per_element: float) -> float:
    """Constant-size recurrent state bytes per sequence of any family's config (0 for attention models)."""
    return family_of(config).state_bytes_per_sequence(config, bytes_per_element)


@dataclass(frozen=True)
class Variant:
    """A resolved recipe: its family, its config, and how it was sized (None when it sets no budget)."""

    family: ModelFamily
    config: Any
    sizing: Sizing | None = None

    def build_model(self) -> PreTrainedModel:
        return self.family.build_model(self.config)

    def non_embedding_parameters(self) -> int:
        return non_embedding_parameters(self.family.model_class, self.config)


def base_budget(base: Mapping[str, Any], data: Mapping[str, Any]) -> int:
    """Non-embedding parameters of the plain decoder built from the base shape: the ``match_base`` budget."""
    decoder = FAMILIES["efficientlm"]
    return non_embedding_parameters(decoder.model_class, decoder.build_config(dict(base), {}, data))


def _budget(value: Any, base: Mapping[str, Any], data: Mapping[str, Any]) -> int:
    if value == "match_base":
        return base_budget(base, data)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"param_budget must be 'match_base' or a positive number of non-embedding parameters, "
                         f"got {value!r}")
    return int(value)


def resolve_recipe(base: Mapping[str, Any], recipe: Mapping[str, Any], data: Mapping[str, Any]) -> Variant:
    """A recipe's family and config: base shape, the recipe's overrides, the data's fields, then the budget search.

    ``base``: the ``model`` section as a dict; ``data``: vocab_size, max_position_embeddings, bos/eos/pad token ids.
    Raises ValueError naming the offending key for an unknown family or key, a key the family does not use, a key
    the data fixes, or a budget the chosen knob cannot meet.
    """
    recipe = dict(recipe)
    family_name = recipe.pop("family", "efficientlm")
    if family_name not in FAMILIES:
        raise ValueError(f"family={family_name!r} is not implemented; allowed: {sorted(FAMILIES)}")
    family = FAMILIES[family_name]
    budget = recipe.pop("param_budget", None)
    size_by = recipe.pop("size_by", None)
    tolerance = recipe.pop("param_budget_tolerance", DEFAULT_TOLERANCE)

    shape, native = dict(base), {}
    for key, scale in SHAPE_SCALES.items():  # relative to the base: depth_scale, width_scale
        if key in recipe:
            shape = scale(shape, recipe.pop(key))
    allowed = family.native_keys()
    for key, value in recipe.items():
        if key in _FIXED_KEYS:
            raise ValueError(f"{key!r} is set by the prepared data, not by a recipe")
        if key in base and key in family.shape_keys:
            shape[key] = value
        elif key in allowed:
            native[key] = value
        elif key in base:
            raise ValueError(f"family {family.name} does not use {key!r} (of the base shape it reads: "
                             f"{', '.join(sorted(family.shape_keys & set(base)))})")
        else:
            known = sorted(set(RECIPE_KEYS) | (family.shape_keys & set(base)) | allowed)
            raise ValueError(f"unknown key {key!r} for family {family.name} (allowed: {', '.join(known)})")

    def build(s: Mapping[str, Any]) -> Any:
        return family.build_config(s, native, data)

    if budget is None:
        if size_by is not None:
            raise ValueError("size_by is set but param_budget is not")
        return Variant(family, build(shape))
    target = _budget(budget, base, data)
    size_by = size_by or family.size_by
    if size_by not in KNOBS or size_by not in family.shape_keys:
        usable = sorted(set(KNOBS) & family.shape_keys)
        raise ValueError(f"size_by={size_by!r} cannot size family {family.name}; allowed: {usable}")
    if size_by in recipe:
        raise ValueError(f"the recipe sets {size_by!r} and also sizes by it; drop one")
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or tolerance < 0:
        raise ValueError(f"param_budget_tolerance must be a number >= 0, got {tolerance!r}")
    config, sizing = size_to_budget(build, family.model_class, shape, target, size_by, float(tolerance))
    return Variant(family, config, sizing)


def describe_variant(variant: Variant, bytes_per_element: float) -> dict[str, Any]:
    """Row ``extra`` fields of a variant: family, architecture, sizing, FLOP method and recurrent-state bytes."""
    fam = variant.family
    return {
        "family": fam.name,
        **fam.describe(variant.config),
        "non_embedding_params": variant.non_embedding_parameters(),
        "sizing": variant.sizing.as_dict() if variant.sizing else None,
        "flops_method": fam.flops_method,
        "state_bytes_per_sequence": fam.state_bytes_per_sequence(variant.config, bytes_per_element),
    }
