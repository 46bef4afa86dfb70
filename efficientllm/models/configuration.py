"""EfficientLMConfig: the one config of the configurable decoder family.

Field names follow HF Llama, so transformers' generation and cache utilities, PEFT and lm-eval read it as they read
any decoder. Three extra string fields choose the components (``attention``, ``positional``, ``mlp``) and one the
attention kernel (``attn_kernel``); each must be a key of its registry, checked at construction.

    python -c "from efficientllm.models import EfficientLMConfig; print(EfficientLMConfig(num_key_value_heads=2))"
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from transformers import GenerationConfig, PreTrainedConfig

from efficientllm.models.attention import ATTENTION, ATTENTION_KERNELS
from efficientllm.models.mlp import MLP
from efficientllm.models.positional import POSITIONAL

# config key -> registry its value must name
COMPONENT_REGISTRIES: dict[str, dict[str, Any]] = {
    "attention": ATTENTION,
    "positional": POSITIONAL,
    "mlp": MLP,
    "attn_kernel": ATTENTION_KERNELS,
}

_POSITIVE_INTS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
)


# Non-field keyword arguments that transformers itself passes to a config (from_pretrained, to_dict round trips) and
# that PreTrainedConfig.__post_init__ consumes. Anything else is most likely a typo (num_kv_heads=2 silently giving MHA
# would corrupt a benchmark cell), so it raises.
_TRANSFORMERS_KWARGS = frozenset(
    {
        "attn_implementation",
        "experts_implementation",
        "model_type",
        "name_or_path",
        "output_attentions",
        "torch_dtype",
        "num_labels",
        "per_layer_config",
    }
)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class EfficientLMConfig(PreTrainedConfig):
    """Decoder-only LM: pre-norm (RMSNorm) blocks of attention + feed-forward, untied or tied LM head."""

    model_type = "efficientlm"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 32000
    """Rows of the token embedding and of the LM head."""
    hidden_size: int = 512
    """Residual stream width C."""
    intermediate_size: int = 1376
    """Inner width of the dense feed-forward."""
    num_hidden_layers: int = 8
    """Number of decoder blocks L."""
    num_attention_heads: int = 8
    """Query heads H."""
    num_key_value_heads: int | None = None
    """Key/value heads Hkv: None or H gives MHA, 1 gives MQA, a divisor of H in between gives GQA."""
    head_dim: int | None = None
    """Per-head width D; None means hidden_size // num_attention_heads."""
    max_position_embeddings: int = 2048
    """Longest context the model is meant for (sizes learned absolute tables; RoPE extrapolates past it)."""
    rope_theta: float = 10000.0
    """RoPE base theta."""
    rms_norm_eps: float = 1e-6
    """Epsilon inside RMSNorm's rsqrt."""
    initializer_range: float = 0.02
    """Std of the normal init of every Linear and Embedding weight (Llama's scheme)."""
    use_cache: bool = True
    """Return a KV cache from forward by default (only outside training)."""
    tie_word_embeddings: bool = False
    """Share the token embedding matrix with the LM head."""
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    attention: str = "gqa"
    """Attention component, a key of models.attention.ATTENTION."""
    positional: str = "rope"
    """Positional encoding, a key of models.positional.POSITIONAL."""
    mlp: str = "swiglu"
    """Feed-forward component, a key of models.mlp.MLP."""
    attn_kernel: str = "sdpa"
    """Score kernel, a key of models.attention.ATTENTION_KERNELS: "sdpa" (fast) or "eager" (FLOP-countable)."""

    # --- MLA (multi-head latent attention, DeepSeek-V2/V3; models/mla.py); read only when attention == "mla" ---
    q_lora_rank: int | None = None
    """Rank of the low-rank query projection; None projects queries directly from the hidden state."""
    kv_lora_rank: int = 32
    """Width r of the compressed KV latent c_kv; MLA caches r + qk_rope_head_dim numbers per token and layer."""
    qk_rope_head_dim: int = 8
    """Per-head width of the decoupled RoPE part of q and k (even under rope; the rope key is shared and cached)."""
    qk_nope_head_dim: int | None = None
    """Per-head width of the non-rotary part of q and k; None means head_dim."""
    v_head_dim: int | None = None
    """Per-head width of the values; None means head_dim."""

    # --- NSA (native sparse attention, arXiv 2502.11089; models/nsa.py); read only when attention == "nsa" ---
    nsa_compress_block_size: int = 16
    """Tokens per compressed block l (the compression branch); must divide max_position_embeddings."""
    nsa_compress_stride: int = 8
    """Stride d between compressed block starts, <= nsa_compress_block_size (blocks overlap when smaller)."""
    nsa_selection_block_size: int = 16
    """Tokens per selectable block l' (the selection branch); must divide max_position_embeddings."""
    nsa_num_selected_blocks: int = 4
    """Blocks n each query attends to in full, at most max_position_embeddings / l': its own block, the initial
    block and the previous block always, then the highest compressed-attention scores."""
    nsa_window_size: int = 32
    """Sliding-window branch width w in tokens (the query's own included), <= max_position_embeddings."""

    # --- relative position bias (T5-style buckets); read only when positional == "relative" ---
    relative_num_buckets: int = 32
    """Buckets of the causal relative-position bias (>= 2): the first half exact distances, the rest log-spaced."""
    relative_max_distance: int = 128
    """Distances from this on share the last bucket (must exceed relative_num_buckets // 2)."""

    # --- mixture of experts; read only when mlp == "moe" ---
    num_experts: int = 8
    """Routed experts E per MoE layer."""
    num_experts_per_tok: int = 2
    """Experts each token is routed to (top-k)."""
    moe_intermediate_size: int | None = None
    """Inner width of each expert; None means intermediate_size."""
    num_shared_experts: int = 0
    """Always-on experts beside the routed ones, each moe_intermediate_size wide (DeepSeek-MoE style)."""
    router_aux_loss_coef: float = 0.01
    """Coefficient of the load-balancing loss E * sum_i f_i * P_i (1 at uniform routing) added to the training loss."""

    def __post_init__(self, **kwargs: Any) -> None:
        self._reject_unknown_keys(kwargs)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and _is_positive_int(self.hidden_size) and _is_positive_int(self.num_attention_heads):
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                    f"({self.num_attention_heads}); set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        super().__post_init__(**kwargs)
        self.check()

    def _reject_unknown_keys(self, kwargs: dict[str, Any]) -> None:
        # generation parameters found in old config.json files: PreTrainedConfig drops them
        allowed = _TRANSFORMERS_KWARGS | set(GenerationConfig._get_default_generation_params())
        unknown = sorted(k for k in kwargs if k not in allowed and not k.startswith("_"))
        if unknown:
            fields = [f.name for f in dataclasses.fields(self)]
            hints = {k: difflib.get_close_matches(k, fields, n=1, cutoff=0.6) for k in unknown}
            hints_text = "; ".join(f"{k} (did you mean {h[0]}?)" if h else k for k, h in hints.items())
            raise ValueError(f"unknown EfficientLMConfig key(s): {hints_text}")

    def check(self) -> None:
        """Raise ValueError naming the offending key. Runs at construction and before saving; call it after mutating."""
        for key in _POSITIVE_INTS:
            value = getattr(self, key)
            if not _is_positive_int(value):
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        for key in ("rope_theta", "rms_norm_eps"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{key} must be a positive number, got {value!r}")
        if not isinstance(self.initializer_range, (int, float)) or self.initializer_range < 0:
            raise ValueError(f"initializer_range must be a number >= 0, got {self.initializer_range!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        for key, registry in COMPONENT_REGISTRIES.items():
            value = getattr(self, key)
            if value not in registry:
                raise ValueError(f"{key}={value!r} is not implemented; allowed values: {sorted(registry)}")
        ATTENTION[self.attention].validate_config(self)
        POSITIONAL[self.positional].validate_config(self)
        MLP[self.mlp].validate_config(self)

    def validate(self) -> None:
        """transformers calls this before save_pretrained: re-check, in case fields were mutated since construction."""
        super().validate()
        self.check()
