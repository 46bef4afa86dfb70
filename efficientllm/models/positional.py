"""Positional encodings: the seam through which a decoder learns where a token sits.

A positional encoding can act at three points of the forward pass, and each class overrides only the hooks it needs:

- ``embed(hidden, position_ids)``: add something to the token embeddings once, before the first block
  (sinusoidal or learned absolute encodings);
- ``rotate(q, k, position_ids)``: transform queries and keys inside every attention layer (RoPE);
- ``bias(q_len, k_len)``: an additive (1, H, Tq, Tk) term for the attention scores (T5-style relative bias).

The model owns one instance (``model.positional``) and hands it to every attention layer, so a learned table is
shared, not copied per layer. The defaults are identities, which makes the base class itself the "no positional
encoding" variant. ``POSITIONAL`` maps the config name to the class.

    python -c "from efficientllm.models.positional import POSITIONAL; print(sorted(POSITIONAL))"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from efficientllm.models.configuration import EfficientLMConfig


class PositionalEncoding(nn.Module):
    """Base class; every hook is the identity (no positional information at all)."""

    def __init__(self, config: EfficientLMConfig) -> None:
        super().__init__()
        self.config = config

    @classmethod
    def validate_config(cls, config: EfficientLMConfig) -> None:
        """Raise ValueError, naming the key, if ``config`` cannot build this encoding."""

    def embed(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, C), position_ids (B|1, T) -> (B, T, C)."""
        return hidden

    def rotate(self, q: torch.Tensor, k: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, H, T, D), k (B, Hkv, T, D), position_ids (B|1, T) -> (q, k) of the same shapes."""
        return q, k

    def bias(self, q_len: int, k_len: int) -> torch.Tensor | None:
        """Additive score bias (1, H, q_len, k_len) or None. Queries are the last ``q_len`` of ``k_len`` positions."""
        return None

    def reset_extra_parameters(self, std: float) -> None:
        """(Re)initialise what the generic Linear / Embedding / norm init does not cover (buffers, odd params)."""


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


POSITIONAL: dict[str, type[PositionalEncoding]] = {
    "rope": RotaryPositional,
}
