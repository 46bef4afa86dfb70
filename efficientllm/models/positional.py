"""Positional encodings: the seam through which a decoder learns where a token sits.

A positional encoding can act at three points of the forward pass, and each class overrides only the hooks it needs:

- ``embed(hidden, position_ids)``: add something to the token embeddings once, before the first block
  (sinusoidal or learned absolute encodings);
- ``rotate(q, k, position_ids)``: transform queries and keys inside every attention layer (RoPE);
- ``bias(q_len, k_len)``: an additive (1, H, Tq, Tk) term for the attention scores (T5-style relative bias). The
  queries are the last ``q_len`` of ``k_len`` positions, which is exactly the KV-cache situation (k_len = cached + new
  tokens), so a bias never needs to be told the cache length separately.

The model owns one instance (``model.positional``) and hands it to every attention layer, so a learned table is
shared, not copied per layer. The defaults are identities. ``POSITIONAL`` maps the config name to the class (the
variants of the EfficientLM paper's table 4):

- ``rope``: rotary embedding of q and k in every layer;
- ``absolute``: fixed sinusoidal encoding added to the token embeddings (Vaswani et al. 2017);
- ``learned``: a learned table of ``max_position_embeddings`` rows added to the token embeddings (GPT-2);
- ``relative``: a learned per-head score bias over log-spaced relative-distance buckets (T5, Raffel et al. 2020);
- ``none``: nothing; the causal mask alone lets the model infer order (NoPE, Kazemnejad et al. 2023).

None of them adds matmul FLOPs (adds and table lookups), so ``accounting.flops_per_token`` ignores this seam. The
absolute encodings read ``position_ids`` (derived from the attention mask for left-padded batches); the relative
bias depends on index distances only, which left padding does not change (padding keys are masked anyway).

    python -c "from efficientllm.models.positional import POSITIONAL; print(sorted(POSITIONAL))"
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from efficientllm.models.component import Component

if TYPE_CHECKING:
    from efficientllm.models.configuration import EfficientLMConfig


class PositionalEncoding(Component):
    """Base class; every hook is the identity (no positional information at all)."""

    def embed(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, C), position_ids (B|1, T) -> (B, T, C)."""
        return hidden

    def rotate(self, q: torch.Tensor, k: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, H, T, D), k (B, Hkv, T, D), position_ids (B|1, T) -> (q, k) of the same shapes."""
        return q, k

    def bias(self, q_len: int, k_len: int) -> torch.Tensor | None:
        """Additive score bias (1, H, q_len, k_len) or None. Queries are the last ``q_len`` of ``k_len`` positions."""
        return None


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the last dim: the 'half-split' RoPE pairing that HF Llama checkpoints use."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryPositional(PositionalEncoding):
    """Rotary position embedding (Su et al. 2021, RoFormer eq. 34), applied to q and k in every layer.

    Pairs dimension i with i + D/2 (the Llama/NeoX convention), frequencies theta^(-2i/D).
    cos/sin are recomputed from ``position_ids`` in each layer: T x D/2 elementwise work, negligible against the
    projections, and it keeps left-padded batches (per-row positions) exact.
    """

    def __init__(self, config: EfficientLMConfig) -> None:
        super().__init__(config)
        # A plain attribute, not a buffer: it stays fp32 under model.to(bfloat16), is never in a checkpoint, and is
        # built lazily on the right device (from_pretrained constructs modules on the meta device).
        self._inv_freq: torch.Tensor | None = None

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        """theta^(-2i/D) for i < D/2, fp32, on ``device``: (D/2,)."""
        if self._inv_freq is None or self._inv_freq.device != device:
            dim = self.config.head_dim
            exponents = torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim
            self._inv_freq = 1.0 / (self.config.rope_theta**exponents)
        return self._inv_freq

    @classmethod
    def validate_config(cls, config: EfficientLMConfig) -> None:
        if config.head_dim % 2:
            raise ValueError(f"positional='rope' needs an even head_dim, got head_dim={config.head_dim}")

    def rotate(self, q: torch.Tensor, k: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq(q.device)  # (B|1, T, D/2), fp32 as in Llama
        angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B|1, 1, T, D) broadcasts over heads
        cos, sin = angles.cos().to(q.dtype), angles.sin().to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        return q, k


class SinusoidalPositional(PositionalEncoding):
    """Fixed sinusoidal absolute encoding added to the token embeddings (Vaswani et al. 2017, section 3.5).

    PE(pos, 2i) = sin(pos / 10000^(2i/C)), PE(pos, 2i+1) = cos(pos / 10000^(2i/C)), computed in fp32 from
    ``position_ids`` on the fly (no table, no parameters, any position), then multiplied by ``scale`` =
    sqrt(2) * initializer_range so that its per-element RMS equals the token embeddings' init std. Why: Vaswani et
    al. add it at amplitude 1 to embeddings multiplied by sqrt(C), i.e. to token and position signals of the same size;
    with Llama's init (std 0.02) an amplitude-1 encoding is ~35x the token signal and, on the default profile (hidden
    64, 200 steps), gave val loss 6.44 against 5.81 scaled (NoPE: 5.68). The token embeddings themselves are left
    as in every other variant.
    """

    base = 10000.0

    def __init__(self, config: EfficientLMConfig) -> None:
        super().__init__(config)
        self.scale = math.sqrt(2.0) * config.initializer_range

    @classmethod
    def validate_config(cls, config: EfficientLMConfig) -> None:
        if config.hidden_size % 2:
            raise ValueError(f"positional='absolute' needs an even hidden_size, got hidden_size={config.hidden_size}")
        if not config.initializer_range > 0:
            raise ValueError(
                f"positional='absolute' scales the encoding by initializer_range, which must be > 0 here, "
                f"got {config.initializer_range!r}"
            )

    def encoding(self, position_ids: torch.Tensor) -> torch.Tensor:
        """position_ids (B|1, T) -> PE (B|1, T, C) in fp32."""
        dim = self.config.hidden_size
        exponents = torch.arange(0, dim, 2, dtype=torch.float, device=position_ids.device) / dim
        angles = position_ids[..., None].float() / (self.base**exponents)  # (B|1, T, C/2)
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # interleaved: sin at 2i, cos at 2i+1

    def embed(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return hidden + (self.scale * self.encoding(position_ids)).to(hidden.dtype)  # (B, T, C)


class LearnedPositional(PositionalEncoding):
    """Learned absolute position embeddings added to the token embeddings (GPT-2's ``wpe``).

    One (max_position_embeddings, C) table, initialised like the token embeddings. Positions at or beyond the table
    raise a ValueError instead of an opaque index error (or a device-side assert on GPU); the check costs one host
    sync per forward.
    """

    def __init__(self, config: EfficientLMConfig) -> None:
        super().__init__(config)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def embed(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        low, high = (int(v) for v in torch.aminmax(position_ids.detach()))  # host sync: a clear error beats an assert
        rows = self.embed_positions.num_embeddings
        if low < 0 or high >= rows:
            raise ValueError(
                f"positional='learned' has max_position_embeddings={rows} positions (0..{rows - 1}), got position "
                f"{high if high >= rows else low}; raise max_position_embeddings or shorten the context"
            )
        return hidden + self.embed_positions(position_ids).to(hidden.dtype)  # (B|1, T, C) broadcasts over batch


def relative_position_bucket(distance: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Causal T5 bucket of each query-minus-key ``distance`` (>= 0 for the keys a query sees), as a long tensor.

    Distances below num_buckets // 2 get a bucket each; larger ones share buckets whose width grows geometrically up
    to ``max_distance``, and everything from there on falls in the last bucket. Negative distances (future keys,
    masked anyway) map to bucket 0. Same values as T5's ``_relative_position_bucket(-distance, bidirectional=False)``.
    """
    n = distance.clamp(min=0)
    exact = num_buckets // 2
    # Log-spaced part, computed for every entry (clamped to avoid log(0)) and used where n >= exact.
    scaled = torch.log(n.clamp(min=exact).float() / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    far = (exact + scaled.long()).clamp(max=num_buckets - 1)
    return torch.where(n < exact, n, far)


class RelativePositionBias(PositionalEncoding):
    """T5-style learned relative-position bias (Raffel et al. 2020, section 2.1): one scalar per (bucket, head).

    The bias b[h, bucket(i - j)] is added to the attention score of query i and key j in every layer (one table
    shared by all layers, as in T5 where only the first layer owns it). Buckets are causal (unidirectional): all
    ``relative_num_buckets`` cover the distances to past keys. With a KV cache the new queries are the last ``q_len``
    of ``k_len`` positions, so cached and uncached decoding see the same biases.
    """

    def __init__(self, config: EfficientLMConfig) -> None:
        super().__init__(config)
        self.relative_attention_bias = nn.Embedding(config.relative_num_buckets, config.num_attention_heads)

    @classmethod
    def validate_config(cls, config: EfficientLMConfig) -> None:
        buckets, max_distance = config.relative_num_buckets, config.relative_max_distance
        if not isinstance(buckets, int) or isinstance(buckets, bool) or buckets < 2:
            raise ValueError(f"relative_num_buckets must be an int >= 2, got {buckets!r}")
        if not isinstance(max_distance, int) or isinstance(max_distance, bool) or max_distance <= buckets // 2:
            raise ValueError(
                f"relative_max_distance must be an int > relative_num_buckets // 2 = {buckets // 2} (the exact "
                f"buckets), got {max_distance!r}"
            )

    def bias(self, q_len: int, k_len: int) -> torch.Tensor:
        device = self.relative_attention_bias.weight.device
        # Distances range over 0..k_len-1 for visible keys: bucket each distance once, then gather per (i, j).
        buckets = relative_position_bucket(
            torch.arange(k_len, device=device), self.config.relative_num_buckets, self.config.relative_max_distance
        )  # (Tk,)
        per_distance = self.relative_attention_bias(buckets)  # (Tk, H)
        q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]  # (Tq, 1)
        k_pos = torch.arange(k_len, device=device)[None, :]  # (1, Tk)
        distance = (q_pos - k_pos).clamp(min=0)  # (Tq, Tk); future keys are masked by the causal mask
        return per_distance[distance].permute(2, 0, 1)[None]  # (1, H, Tq, Tk)


class NoPositional(PositionalEncoding):
    """No positional encoding (NoPE): every hook is the base-class identity and there are no parameters.

    A causal decoder can still infer positions, from how many tokens each query attends over (Kazemnejad et al. 2023,
    "The Impact of Positional Encoding on Length Generalization in Transformers").
    """


POSITIONAL: dict[str, type[PositionalEncoding]] = {
    "rope": RotaryPositional,
    "absolute": SinusoidalPositional,
    "learned": LearnedPositional,
    "relative": RelativePositionBias,
    "none": NoPositional,
}
