"""The contract shared by every pluggable part of the decoder: attention (attention.py, mla.py, nsa.py), positional
encodings (positional.py) and feed-forward layers (mlp.py, moe.py).

A component is built from the model config and keeps it; ``validate_config`` lets ``EfficientLMConfig.check`` reject
a config (naming the key) before anything is built; ``reset_extra_parameters`` is the hook the model's
``_init_weights`` calls for what the generic Linear / Embedding / norm init does not cover. Each seam's base class adds
its own forward contract on top.

    python -c "from efficientllm.models.component import Component; help(Component)"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from efficientllm.models.configuration import EfficientLMConfig


class Component(nn.Module):
    """Base of the seams' base classes: holds the config it was built from; both hooks default to doing nothing."""

    def __init__(self, config: EfficientLMConfig) -> None:
        super().__init__()
        self.config = config

    @classmethod
    def validate_config(cls, config: EfficientLMConfig) -> None:
        """Raise ValueError, naming the key, if ``config`` cannot build this component."""

    def reset_extra_parameters(self, std: float) -> None:
        """(Re)initialise what the generic Linear / Embedding / norm init does not cover (buffers, odd params)."""
