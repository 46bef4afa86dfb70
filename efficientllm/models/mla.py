"""Multi-head latent attention (MLA, DeepSeek-V2 arXiv 2405.04434 section 2.1; DeepSeek-V3): a low-rank KV cache.

Every token's keys and values are generated from one small latent ``c_kv = RMSNorm(W_dkv x)`` of width
``kv_lora_rank`` (r), plus one rotary key ``k_rope`` of width ``qk_rope_head_dim`` (dr) shared by all heads. Only those
two are cached, so a layer caches (r + dr) numbers per token instead of 2 x Hkv x D, independent of the head count:

    c_kv, k_rope = split(kv_a_proj_with_mqa(x))                  # (B, T, r), (B, T, dr)
    k_nope_h, v_h = split(kv_b_proj(RMSNorm(c_kv)))[h]           # per head: (nope,), (v,)  "up-projection"
    q_nope_h, q_rope_h = split(q_proj(x))[h]                     # or q_b_proj(RMSNorm(q_a_proj(x))) with q_lora_rank
    score_h = [q_nope_h ; rope(q_rope_h)] . [k_nope_h ; rope(k_rope)] / sqrt(nope + dr)

Parameter names and the cache layout (``past_key_values.update(latent, k_rope)``) follow transformers'
``DeepseekV3Attention``, so its weights load as they are (tests/test_attention_variants.py checks the outputs match).

Two ways to compute the same attention, picked per call by which needs fewer FLOPs (``_absorbed_is_cheaper``):

- expanded (training and prefill): up-project the latent of every key to per-head k_nope and v, then ordinary
  attention with H heads;
- absorbed (decode: few queries over a long cache): fold the key up-projection into the query
  (q_lat_h = W_uk_h^T q_nope_h) and the value up-projection into the output, so attention runs directly on the
  cached latents as multi-query attention with one kv head of width r + dr (values: the latent). This is why MLA
  decodes from its small cache without re-expanding it.

Positional encodings: MLA rotates only its decoupled rope part. With positional="rope" (any ``RotaryPositional``) it
rotates q_rope and k_rope with a RotaryPositional sized to ``qk_rope_head_dim`` (the model's instance is sized to
``head_dim``); the nope part never rotates, as in the paper. Encodings whose ``rotate`` is the identity work
unchanged: "none" gives no rotation at all (a position-free MLA), absolute / learned encodings act through the
embeddings, and an additive score bias (relative) reaches the scores through the mask. Any other encoding that
overrides ``rotate`` is rejected by ``validate_config``: rotating a whole head is not defined for MLA's split heads.

    python -c "from efficientllm.models import EfficientLMConfig as C, EfficientLMForCausalLM as M; \
print(M(C(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, attention='mla')))"
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from efficientllm.models.attention import ATTENTION_KERNELS, Attention, AttentionInputs
from efficientllm.models.modeling import RMSNorm
from efficientllm.models.positional import POSITIONAL, PositionalEncoding, RotaryPositional

if TYPE_CHECKING:
    from transformers import Cache

    from efficientllm.models.configuration import EfficientLMConfig


def _dims(config: EfficientLMConfig) -> tuple[int, int, int, int, int | None, int]:
    """(H, r, dr, nope, q_lora_rank, v) with the None defaults of the config resolved."""
    nope = config.qk_nope_head_dim if config.qk_nope_head_dim is not None else config.head_dim
    v = config.v_head_dim if config.v_head_dim is not None else config.head_dim
    return config.num_attention_heads, config.kv_lora_rank, config.qk_rope_head_dim, nope, config.q_lora_rank, v


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class MultiHeadLatentAttention(Attention):
    """MLA: caches a ``kv_lora_rank`` latent + a ``qk_rope_head_dim`` rotary key per token (see the module docstring).

    ``num_key_value_heads`` is not used: every query head has its own up-projected key and value.
    """

    def __init__(self, config: EfficientLMConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        C = config.hidden_size
        H, r, dr, nope, rq, v = _dims(config)
        self.num_heads, self.kv_lora_rank, self.rope_dim, self.nope_dim, self.v_dim = H, r, dr, nope, v
        self.scale = (nope + dr) ** -0.5
        if rq is None:
            self.q_proj = nn.Linear(C, H * (nope + dr), bias=False)
        else:
            self.q_a_proj = nn.Linear(C, rq, bias=False)
            self.q_a_layernorm = RMSNorm(rq, config.rms_norm_eps)
            self.q_b_proj = nn.Linear(rq, H * (nope + dr), bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(C, r + dr, bias=False)  # down-projection: latent and the shared rope key
        self.kv_a_layernorm = RMSNorm(r, config.rms_norm_eps)
        self.kv_b_proj = nn.Linear(r, H * (nope + v), bias=False)  # up-projection: per-head k_nope and v
        self.o_proj = nn.Linear(H * v, C, bias=False)
        # RoPE for the rope part only: the same class as the model's encoding, sized to qk_rope_head_dim. It holds no
        # parameters, so it adds nothing to the state dict.
        positional_cls = POSITIONAL[config.positional]
        if issubclass(positional_cls, RotaryPositional):
            rope_config = copy.copy(config)
            rope_config.head_dim = dr
            self.rope: RotaryPositional | None = positional_cls(rope_config)
        else:
            self.rope = None

    # --- config-only hooks ------------------------------------------------------------------------------------------

    @classmethod
    def validate_config(cls, config: EfficientLMConfig) -> None:
        for key in ("kv_lora_rank", "qk_rope_head_dim"):
            if not _positive_int(getattr(config, key)):
                raise ValueError(f"attention='mla' needs {key} to be a positive int, got {getattr(config, key)!r}")
        for key in ("q_lora_rank", "qk_nope_head_dim", "v_head_dim"):
            value = getattr(config, key)
            if value is not None and not _positive_int(value):
                raise ValueError(f"attention='mla' needs {key} to be None or a positive int, got {value!r}")
        positional_cls = POSITIONAL.get(config.positional)
        if positional_cls is None:
            return  # the config's registry check names the unknown encoding
        if issubclass(positional_cls, RotaryPositional):
            if config.qk_rope_head_dim % 2:
                raise ValueError(
                    f"attention='mla' with positional={config.positional!r} needs an even qk_rope_head_dim, "
                    f"got {config.qk_rope_head_dim}"
                )
        elif positional_cls.rotate is not PositionalEncoding.rotate:
            raise ValueError(
                f"attention='mla' cannot use positional={config.positional!r}: it rotates whole query/key heads, "
                "while MLA rotates only its decoupled qk_rope_head_dim part; use a RotaryPositional or an encoding "
                "that acts through embed/bias"
            )

    @classmethod
    def kv_cache_bytes_per_token(cls, config: EfficientLMConfig, bytes_per_element: float) -> float:
        _, r, dr, _, _, _ = _dims(config)
        return (r + dr) * bytes_per_element  # the normed latent c_kv and the rotated shared key

    @classmethod
    def _absorbed_is_cheaper(cls, config: EfficientLMConfig, q_len: int, k_len: int) -> bool:
        """Expanded: up-project k_len latents, attend at width nope+dr / v. Absorbed: project q_len queries into and
        out of the latent, attend at width r+dr / r. Compare the FLOPs that differ (both x 2H)."""
        _, r, dr, nope, _, v = _dims(config)
        expanded = k_len * r * (nope + v) + q_len * k_len * (nope + dr + v)
        absorbed = q_len * r * (nope + v) + q_len * k_len * (2 * r + dr)
        return absorbed < expanded

    @classmethod
    def forward_flops(cls, config: EfficientLMConfig, q_len: int, k_len: int) -> float:
        """Matmul FLOPs of one forward of ONE layer (per sequence) with q_len new tokens over k_len keys."""
        C = config.hidden_size
        H, r, dr, nope, rq, v = _dims(config)
        q = 2 * C * H * (nope + dr) if rq is None else 2 * C * rq + 2 * rq * H * (nope + dr)
        per_query = q + 2 * C * (r + dr) + 2 * H * v * C  # q, the kv down-projection, o
        if cls._absorbed_is_cheaper(config, q_len, k_len):
            per_query += 2 * H * nope * r + 2 * H * r * v  # q_nope -> latent, latent output -> v
            per_query += 2 * k_len * H * (r + dr) + 2 * k_len * H * r  # scores and values on the latent
            return float(q_len * per_query)
        per_query += 2 * k_len * H * (nope + dr) + 2 * k_len * H * v  # scores and values per head
        return float(q_len * per_query + 2 * k_len * r * H * (nope + v))  # + up-projecting every key's latent

    @classmethod
    def flops_per_token(cls, config: EfficientLMConfig, seq_len: int) -> float:
        return cls.forward_flops(config, seq_len, seq_len) / seq_len

    # --- forward --------------------------------------------------------------------------------------------------

    def _rotate(
        self, inputs: AttentionInputs, q_rope: torch.Tensor, k_rope: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rope is not None:
            return self.rope.rotate(q_rope, k_rope, inputs.position_ids)
        # identity for every encoding validate_config allows
        return inputs.positional.rotate(q_rope, k_rope, inputs.position_ids)

    def attend(self, hidden: torch.Tensor, inputs: AttentionInputs, past_key_values: Cache | None) -> torch.Tensor:
        B, T, _ = hidden.shape
        H, r, dr, nope = self.num_heads, self.kv_lora_rank, self.rope_dim, self.nope_dim
        if self.config.q_lora_rank is None:
            q = self.q_proj(hidden)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden)))
        q = q.view(B, T, H, nope + dr).transpose(1, 2)  # (B, H, T, nope + dr)
        q_nope, q_rope = q.split([nope, dr], dim=-1)  # (B, H, T, nope), (B, H, T, dr)

        latent, k_rope = self.kv_a_proj_with_mqa(hidden).split([r, dr], dim=-1)  # (B, T, r), (B, T, dr)
        latent = self.kv_a_layernorm(latent).view(B, 1, T, r)  # one "kv head", as the cache expects 4-D tensors
        k_rope = k_rope.view(B, 1, T, dr)
        q_rope, k_rope = self._rotate(inputs, q_rope, k_rope)
        if past_key_values is not None:
            latent, k_rope = past_key_values.update(latent, k_rope, self.layer_idx)  # (B, 1, Tk, r), (B, 1, Tk, dr)

        absorbed = self._absorbed_is_cheaper(self.config, T, latent.shape[2])
        return self._attend_latents(q_nope, q_rope, latent, k_rope, inputs.mask, absorbed=absorbed)  # (B, H, T, v)

    def _attend_latents(
        self,
        q_nope: torch.Tensor,
        q_rope: torch.Tensor,
        latent: torch.Tensor,
        k_rope: torch.Tensor,
        mask: torch.Tensor | None,
        *,
        absorbed: bool,
    ) -> torch.Tensor:
        """Attention of the queries over the cached latents and rope keys, (B, H, T, v), computed one of two ways.

        expanded: up-project every key's latent to per-head k_nope and v, then H-head attention.
        absorbed (DeepSeek-V2 section 2.1.3): q_nope . (W_uk_h c) = (W_uk_h^T q_nope) . c, and
        sum_j p_j (W_uv_h c_j) = W_uv_h (sum_j p_j c_j): both up-projections move to the query side, so the keys are
        [c ; k_rope] and the values c, shared by all heads.
        """
        kernel = ATTENTION_KERNELS[self.config.attn_kernel]
        if absorbed:
            w = self.kv_b_proj.weight.view(self.num_heads, self.nope_dim + self.v_dim, self.kv_lora_rank)
            w_uk, w_uv = w.split([self.nope_dim, self.v_dim], dim=1)  # (H, nope, r), (H, v, r)
            q_lat = torch.einsum("bhtn,hnr->bhtr", q_nope, w_uk)  # (B, H, T, r)
            q = torch.cat((q_lat, q_rope), dim=-1)  # (B, H, T, r + dr)
            k = torch.cat((latent, k_rope), dim=-1)  # (B, 1, Tk, r + dr): multi-query attention with one kv head
            y_lat = kernel(q, k, latent, mask, self.scale)  # (B, H, T, r)
            return torch.einsum("bhtr,hvr->bhtv", y_lat, w_uv)  # (B, H, T, v)
        B, _, Tk, _ = latent.shape
        kv = self.kv_b_proj(latent[:, 0]).view(B, Tk, self.num_heads, -1).transpose(1, 2)  # (B, H, Tk, nope + v)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        q = torch.cat((q_nope, q_rope), dim=-1)  # (B, H, T, nope + dr)
        k = torch.cat((k_nope, k_rope.expand(-1, self.num_heads, -1, -1)), dim=-1)  # (B, H, Tk, nope + dr)
        return kernel(q, k, v, mask, self.scale)
