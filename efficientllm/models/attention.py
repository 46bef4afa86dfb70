"""Attention: the seam that MHA / MQA / GQA (here) and MLA, NSA (mla.py, nsa.py) plug into.

An attention class takes the normed hidden states of one block and returns its update:

    forward(hidden (B, T, C), inputs: AttentionInputs, past_key_values: Cache | None) -> (B, T, C)

``AttentionInputs`` is what the model computes once per forward and hands to every layer: its positional encoding,
the position ids and the additive mask. A variant implements ``attend``, everything up to the per-head outputs
(B, H, T, Dv): its projections, calling ``inputs.positional.rotate`` on q and k, writing its own state into the
transformers ``Cache`` (``past_key_values.update(..., self.layer_idx)``; MLA caches its latent there instead of K and
V), and the score kernel; the base ``forward`` merges the heads through the variant's ``o_proj`` (H * Dv -> C).
Two class methods let accounting.py reason about it from the config alone:
``kv_cache_bytes_per_token`` (what one layer caches per token) and ``flops_per_token`` (its forward matmul FLOPs).

Kernels are a second, smaller seam (``ATTENTION_KERNELS``, picked by ``config.attn_kernel`` at call time): "sdpa" is
``F.scaled_dot_product_attention``; "eager" does softmax(QK^T * scale + mask) V with explicit matmuls so that
``torch.utils.flop_counter.FlopCounterMode`` sees the attention FLOPs (it records nothing for SDPA on CPU).

    python -c "from efficientllm.models.attention import ATTENTION; print(sorted(ATTENTION))"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from efficientllm.models.component import Component

if TYPE_CHECKING:
    from transformers import Cache

    from efficientllm.models.configuration import EfficientLMConfig
    from efficientllm.models.positional import PositionalEncoding


# ---------------------------------------------------------------------------------------------------------------------
# Kernels. q, k (B, H, Tq, D), (B, Hkv, Tk, D); v (B, Hkv, Tk, Dv) with H a multiple of Hkv (query head h reads kv
# head h // (H/Hkv); Dv may differ from D, as in MLA);
# mask: additive (B|1, 1|H, Tq, Tk), 0 where allowed and a large negative where not, or None meaning plain causal with
# Tq == Tk. Returns (B, H, Tq, Dv).
# ---------------------------------------------------------------------------------------------------------------------


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    # Fold the G = H / Hkv query heads that share a kv head into the row dim, so k and v are never copied per head.
    q = q.reshape(B, Hkv, (H // Hkv) * Tq, D)  # (B, Hkv, G*Tq, D)
    scores = (q @ k.transpose(-2, -1)).view(B, H, Tq, Tk) * scale  # (B, H, Tq, Tk)
    if mask is None:
        causal = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    else:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)  # fp32 softmax, as HF eager does
    out = probs.view(B, Hkv, (H // Hkv) * Tq, Tk) @ v  # (B, Hkv, G*Tq, Dv)
    return out.view(B, H, Tq, v.shape[-1])


AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", float], torch.Tensor]

ATTENTION_KERNELS: dict[str, AttentionKernel] = {
    "sdpa": sdpa_attention,
    "eager": eager_attention,
}


# ---------------------------------------------------------------------------------------------------------------------
# Attention modules
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionInputs:
    """What one forward pass hands every attention layer besides its hidden states and the cache (built once)."""

    positional: PositionalEncoding
    """The model's positional encoding; attention calls its ``rotate`` on q and k."""
    position_ids: torch.Tensor
    """(B|1, T) positions of the new tokens."""
    mask: torch.Tensor | None
    """Additive (B|1, 1|H, Tq, Tk) mask (causal, padding, positional bias), or None: plain causal with Tq == Tk."""


class Attention(Component):
    """Base class: the contract every attention variant implements (see the module docstring). A variant defines
    ``attend`` and an ``o_proj`` (H * Dv -> C); ``forward`` is theirs in common."""

    def __init__(self, config: EfficientLMConfig, layer_idx: int) -> None:
        super().__init__(config)
        self.layer_idx = layer_idx  # which slot of the shared Cache this layer reads and writes

    @classmethod
    def kv_cache_bytes_per_token(cls, config: EfficientLMConfig, bytes_per_element: float) -> float:
        """Bytes this ONE layer adds to the cache per token of context (per sequence)."""
        raise NotImplementedError

    @classmethod
    def flops_per_token(cls, config: EfficientLMConfig, seq_len: int) -> float:
        """Forward matmul FLOPs of ONE layer per token at context length ``seq_len`` (projections + scores)."""
        raise NotImplementedError

    def attend(self, hidden: torch.Tensor, inputs: AttentionInputs, past_key_values: Cache | None) -> torch.Tensor:
        """The per-head attention outputs (B, H, T, Dv) of the new tokens, before the output projection."""
        raise NotImplementedError

    def forward(
        self, hidden: torch.Tensor, inputs: AttentionInputs, past_key_values: Cache | None = None
    ) -> torch.Tensor:
        B, T, _ = hidden.shape
        y = self.attend(hidden, inputs, past_key_values)  # (B, H, T, Dv)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, C)


class GroupedQueryAttention(Attention):
    """Multi-head attention with H query heads sharing Hkv key/value heads (Ainslie et al. 2023).

    Hkv == H is MHA (Vaswani et al. 2017), Hkv == 1 is MQA (Shazeer 2019), anything in between is GQA.
    Projection names match HF Llama (q_proj, k_proj, v_proj, o_proj), so Llama weights load as they are and PEFT
    ``target_modules`` written for Llama apply unchanged.
    """

    def __init__(self, config: EfficientLMConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        C, H, Hkv, D = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.head_dim = D
        self.scale = D**-0.5
        self.q_proj = nn.Linear(C, H * D, bias=False)
        self.k_proj = nn.Linear(C, Hkv * D, bias=False)
        self.v_proj = nn.Linear(C, Hkv * D, bias=False)
        self.o_proj = nn.Linear(H * D, C, bias=False)

    @classmethod
    def kv_cache_bytes_per_token(cls, config: EfficientLMConfig, bytes_per_element: float) -> float:
        return 2 * config.num_key_value_heads * config.head_dim * bytes_per_element  # K and V

    @classmethod
    def flops_per_token(cls, config: EfficientLMConfig, seq_len: int) -> float:
        C, H, Hkv, D = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        projections = 2 * C * (H * D + 2 * Hkv * D) + 2 * (H * D) * C  # q, k, v in; o out
        scores_and_values = 2 * 2 * seq_len * H * D  # QK^T and PV over the full T x T grid, as kernels compute it
        return float(projections + scores_and_values)

    def project_qkv(
        self, hidden: torch.Tensor, inputs: AttentionInputs, past_key_values: Cache | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, H, T, D) and k, v (B, Hkv, Tk, D), q and k rotated. With a cache, k and v are the cached keys and
        values followed by the new ones (Tk = past + T); without one, Tk = T."""
        B, T, _ = hidden.shape
        q = self.q_proj(hidden).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(hidden).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(hidden).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        q, k = inputs.positional.rotate(q, k, inputs.position_ids)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)  # (B, Hkv, past + T, D)
        return q, k, v

    def attend(self, hidden: torch.Tensor, inputs: AttentionInputs, past_key_values: Cache | None) -> torch.Tensor:
        q, k, v = self.project_qkv(hidden, inputs, past_key_values)
        kernel = ATTENTION_KERNELS[self.config.attn_kernel]  # looked up per call: switchable on a built model
        return kernel(q, k, v, inputs.mask, self.scale)  # (B, H, T, D)


ATTENTION: dict[str, type[Attention]] = {
    "gqa": GroupedQueryAttention,
}
