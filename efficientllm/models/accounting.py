"""Parameter counts, analytic FLOPs and KV-cache size: the denominators of the benchmark's metrics.

TT (tokens / parameter / s) and ST need parameter counts, MFU needs FLOPs per token, and the inference axis reports
KV-cache bytes per token. FLOPs and cache size come from the config alone (no model is built), through hooks of the
component classes, so a new attention or MoE variant reports its own numbers.

    python -c "from efficientllm.models import EfficientLMConfig; from efficientllm.models.accounting import *; \
print(flops_per_token(EfficientLMConfig(), seq_len=1024), kv_cache_bytes_per_token(EfficientLMConfig(), 2))"
"""

from __future__ import annotations

from torch import nn

from efficientllm.models.attention import ATTENTION
from efficientllm.models.configuration import EfficientLMConfig
from efficientllm.models.mlp import MLP


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts of any torch model (shared tensors, e.g. tied embeddings, counted once).

    total: all parameters; trainable: those with requires_grad; embedding: parameters of nn.Embedding modules (lookup
    tables that cost no matmul FLOPs: token table, learned positions); active: parameters one token actually passes
    through, i.e. total minus what modules report via ``inactive_parameters()`` (the unrouted experts of an MoE layer).
    For dense models active == total. Quantized (packed) weights are counted as the tensors torch sees.
    """
    params = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in params.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    embedding_params = {id(p): p for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    embedding = sum(p.numel() for p in embedding_params.values())
    inactive = sum(m.inactive_parameters() for m in model.modules() if hasattr(m, "inactive_parameters"))
    return {"total": total, "trainable": trainable, "active": total - inactive, "embedding": embedding}


def flops_per_token(config: EfficientLMConfig, seq_len: int, training: bool = False) -> float:
    """Analytic matmul FLOPs per token for a sequence of ``seq_len`` tokens processed in one forward (no cache).

    forward = 2 x (active matmul weights: attention projections, feed-forward, LM head; the embedding lookup is free)
            + attention scores and values, 2 x 2 x n_layers x seq_len x n_heads x head_dim for dense attention,
    counted over the full T x T score grid as the kernels compute it (the causal mask does not halve the work of
    SDPA / eager matmuls). Norms, RoPE, softmax and other elementwise work are not counted, matching
    torch.utils.flop_counter.FlopCounterMode (which only counts matmuls and convolutions).
    training = 3 x forward (backward costs two forwards: grads w.r.t. activations and w.r.t. weights).
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    per_layer = ATTENTION[config.attention].flops_per_token(config, seq_len) + MLP[config.mlp].flops_per_token(config)
    lm_head = 2 * config.hidden_size * config.vocab_size
    forward = config.num_hidden_layers * per_layer + lm_head
    return 3.0 * forward if training else float(forward)


def kv_cache_bytes_per_token(config: EfficientLMConfig, bytes_per_element: float) -> float:
    """Bytes of inference cache per token of context per sequence, summed over layers.

    For GQA/MHA/MQA: 2 (K and V) x n_layers x n_kv_heads x head_dim x bytes_per_element. Other attention variants
    report their own size (e.g. MLA its compressed latent) through ``Attention.kv_cache_bytes_per_token``.
    """
    return config.num_hidden_layers * ATTENTION[config.attention].kv_cache_bytes_per_token(config, bytes_per_element)
