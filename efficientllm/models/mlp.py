"""Feed-forward layers: the seam for dense MLPs and sparse mixtures of experts (``moe``, in moe.py).

A feed-forward class maps (B, T, C) -> ((B, T, C), aux_loss | None). The auxiliary loss (an MoE load-balancing term,
already scaled by its coefficient) is summed over layers by the model, exposed as ``outputs.aux_loss`` and added to
the training loss. Class/instance hooks for accounting.py:

- ``flops_per_token(config)``: forward matmul FLOPs of one layer per token, counting only the experts a token uses;
- ``inactive_parameters()``: parameters this layer holds that a token does not use (0 for dense; the unrouted experts
  for MoE), so that ``count_parameters`` can report active parameters.

    python -c "from efficientllm.models.mlp import MLP; print(sorted(MLP))"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from efficientllm.models.component import Component
from efficientllm.models.moe import MixtureOfExperts

if TYPE_CHECKING:
    from efficientllm.models.configuration import EfficientLMConfig


class FeedForward(Component):
    """Base class: the contract every feed-forward variant implements."""

    @classmethod
    def flops_per_token(cls, config: EfficientLMConfig) -> float:
        raise NotImplementedError

    def inactive_parameters(self) -> int:
        return 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


class SwiGLU(FeedForward):
    """down(silu(gate(x)) * up(x)) (Shazeer 2020, "GLU Variants Improve Transformer"); Llama's MLP and names."""

    def __init__(self, config: EfficientLMConfig) -> None:
        super().__init__(config)
        C, F_ = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(C, F_, bias=False)
        self.up_proj = nn.Linear(C, F_, bias=False)
        self.down_proj = nn.Linear(F_, C, bias=False)

    @classmethod
    def flops_per_token(cls, config: EfficientLMConfig) -> float:
        return float(2 * 3 * config.hidden_size * config.intermediate_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)), None  # (B, T, C), no aux loss


MLP: dict[str, type[FeedForward]] = {
    "swiglu": SwiGLU,
    "moe": MixtureOfExperts,  # moe.py; it implements the FeedForward contract without importing this module
}
