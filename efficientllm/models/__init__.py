"""The configurable decoder family (attention x positional encoding x MLP), registered with transformers' Auto classes.

Importing this package registers model_type "efficientlm", so afterwards
``AutoModelForCausalLM.from_pretrained(dir)`` loads a saved EfficientLM without trust_remote_code.

    python -c "import efficientllm.models as m; print(sorted(m.ATTENTION), sorted(m.POSITIONAL), sorted(m.MLP))"
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from efficientllm.models.accounting import count_parameters, flops_per_token, kv_cache_bytes_per_token
from efficientllm.models.attention import (
    ATTENTION,
    ATTENTION_KERNELS,
    Attention,
    AttentionInputs,
    GroupedQueryAttention,
)
from efficientllm.models.configuration import EfficientLMConfig
from efficientllm.models.mla import MultiHeadLatentAttention
from efficientllm.models.mlp import MLP, FeedForward, SwiGLU
from efficientllm.models.modeling import (
    DecoderBlock,
    EfficientLMCausalLMOutput,
    EfficientLMForCausalLM,
    EfficientLMModel,
    EfficientLMModelOutput,
    EfficientLMPreTrainedModel,
    RMSNorm,
)
from efficientllm.models.nsa import NativeSparseAttention
from efficientllm.models.positional import POSITIONAL, PositionalEncoding, RotaryPositional

# MLA and NSA subclass Attention (and MLA reuses modeling's RMSNorm), so attention.py cannot import them without a
# cycle; they join the registry here, on package import, before any config check or model can read it.
ATTENTION["mla"] = MultiHeadLatentAttention
ATTENTION["nsa"] = NativeSparseAttention

# exist_ok: importing twice (or reloading) must not raise.
AutoConfig.register(EfficientLMConfig.model_type, EfficientLMConfig, exist_ok=True)
AutoModel.register(EfficientLMConfig, EfficientLMModel, exist_ok=True)
AutoModelForCausalLM.register(EfficientLMConfig, EfficientLMForCausalLM, exist_ok=True)

__all__ = [
    "ATTENTION",
    "ATTENTION_KERNELS",
    "MLP",
    "POSITIONAL",
    "Attention",
    "AttentionInputs",
    "DecoderBlock",
    "EfficientLMCausalLMOutput",
    "EfficientLMConfig",
    "EfficientLMForCausalLM",
    "EfficientLMModel",
    "EfficientLMModelOutput",
    "EfficientLMPreTrainedModel",
    "FeedForward",
    "GroupedQueryAttention",
    "MultiHeadLatentAttention",
    "NativeSparseAttention",
    "PositionalEncoding",
    "RMSNorm",
    "RotaryPositional",
    "SwiGLU",
    "count_parameters",
    "flops_per_token",
    "kv_cache_bytes_per_token",
]
