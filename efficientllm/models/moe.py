"""Sparse mixture-of-experts feed-forward (``mlp: moe``): top-k routed SwiGLU experts plus optional shared experts.

Each token is sent to the k of E routed experts with the highest router probability and gets their outputs weighted
by those probabilities renormalised over the k (Mixtral, Jiang et al. 2024), plus the output of the always-on shared
experts, if any (DeepSeekMoE, Dai et al. 2024). Routing is dropless (no capacity factor): every token reaches its k
experts. A Switch-style load-balancing loss (Fedus et al. 2021, eq. 4) comes back as the layer's aux loss and reaches
the training loss through the model.

The paper's question for this axis is "better perplexity for more memory": a layer holds E experts but a token uses
k, so ``inactive_parameters`` reports the (E - k) unused routed experts and ``count_parameters`` gives both totals.
Convention: the router and the shared experts are always active. Load statistics (tokens per expert, accumulated
in training mode) are read with ``expert_load_summary(model)`` and cleared with ``reset_expert_load(model)``.

    OMP_WAIT_POLICY=PASSIVE python -c "from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM as M; \
m = M(EfficientLMConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp='moe', num_experts=4)); \
from efficientllm.models.accounting import count_parameters; print(count_parameters(m))"
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from efficientllm.models.component import Component

if TYPE_CHECKING:
    from efficientllm.models.configuration import EfficientLMConfig


class Expert(nn.Module):
    """One SwiGLU expert, down(silu(gate(x)) * up(x)), with Llama / Mixtral projection names."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class MixtureOfExperts(Component):
    """Top-k routed SwiGLU experts (+ shared experts) with a load-balancing aux loss.

    Implements the feed-forward contract of ``mlp.FeedForward`` (forward -> (out, aux_loss), ``validate_config``,
    ``flops_per_token``, ``inactive_parameters``, ``reset_extra_parameters``) on the shared ``Component`` base, without
    subclassing FeedForward: mlp.py imports this module to register it under "moe", so importing mlp.py from here
    would be circular.

    Shapes: E = num_experts, k = num_experts_per_tok, F_e = moe_intermediate_size (None: intermediate_size),
    S = num_shared_experts (implemented as one SwiGLU of width S * F_e, which equals the sum of S experts).
    """

    def __init__(self, config: EfficientLMConfig) -> None:
        super().__init__(config)
        C, E = config.hidden_size, config.num_experts
        self.num_experts, self.top_k = E, config.num_experts_per_tok
        width = self.expert_width(config)
        self.router = nn.Linear(C, E, bias=False)
        self.experts = nn.ModuleList(Expert(C, width) for _ in range(E))
        self.shared_experts = Expert(C, config.num_shared_experts * width) if config.num_shared_experts else None
        # Tokens routed to each expert since the last reset (training mode only). A plain attribute, not a buffer:
        # not in checkpoints, not broadcast by DDP from rank 0, and created lazily on the device the tokens are on.
        self._load: torch.Tensor | None = None

    @staticmethod
    def expert_width(config: EfficientLMConfig) -> int:
        return config.moe_intermediate_size if config.moe_intermediate_size is not None else config.intermediate_size

    @classmethod
    def validate_config(cls, config: EfficientLMConfig) -> None:
        E, k = config.num_experts, config.num_experts_per_tok
        if not _is_int(E) or E < 1:
            raise ValueError(f"num_experts must be an int >= 1, got {E!r}")
        if not _is_int(k) or k < 1:
            raise ValueError(f"num_experts_per_tok must be an int >= 1, got {k!r}")
        if k > E:
            raise ValueError(f"num_experts_per_tok ({k}) must not exceed num_experts ({E})")
        width = config.moe_intermediate_size
        if width is not None and (not _is_int(width) or width < 1):
            raise ValueError(f"moe_intermediate_size must be a positive int or None, got {width!r}")
        if not _is_int(config.num_shared_experts) or config.num_shared_experts < 0:
            raise ValueError(f"num_shared_experts must be an int >= 0, got {config.num_shared_experts!r}")
        coef = config.router_aux_loss_coef
        if not isinstance(coef, (int, float)) or isinstance(coef, bool) or coef < 0:
            raise ValueError(f"router_aux_loss_coef must be a number >= 0, got {coef!r}")

    @classmethod
    def flops_per_token(cls, config: EfficientLMConfig) -> float:
        """Router (C x E) + the k routed and S shared SwiGLU experts a token passes through (3 matmuls of C x F_e)."""
        C, width = config.hidden_size, cls.expert_width(config)
        experts_used = config.num_experts_per_tok + config.num_shared_experts
        return float(2 * C * config.num_experts + experts_used * 2 * 3 * C * width)

    def inactive_parameters(self) -> int:
        """The (E - k) routed experts a token does not use; router and shared experts count as active."""
        per_expert = sum(p.numel() for p in self.experts[0].parameters())
        return (self.num_experts - self.top_k) * per_expert

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, C) -> router probabilities (N, E) fp32, top-k weights summing to 1 (N, k), expert ids (N, k)."""
        probs = torch.softmax(self.router(x).float(), dim=-1)  # fp32 softmax: routing must not flip on bf16 rounding
        weights, experts = probs.topk(self.top_k, dim=-1)
        return probs, weights / weights.sum(dim=-1, keepdim=True), experts

    def load_balancing_loss(self, probs: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
        """coef * E * sum_i f_i * P_i (Switch Transformer eq. 4, generalised to top-k as in Megatron-LM).

        f_i: fraction of the N*k routing assignments that went to expert i (no gradient; sums to 1).
        P_i: mean router probability of expert i over the N tokens (carries the gradient to the router).
        Equals coef at perfectly uniform routing. HF Mixtral's loss normalises f by N instead of N*k: k times this.
        """
        f = tokens_per_expert.float() / (probs.shape[0] * self.top_k)  # (E,)
        P = probs.mean(dim=0)  # (E,)
        return self.config.router_aux_loss_coef * self.num_experts * torch.sum(f * P)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        flat = x.reshape(-1, C)  # (N, C)
        probs, weights, experts = self.route(flat)  # (N, E), (N, k), (N, k)
        assignment_expert = experts.flatten()  # (N*k,): assignment a is token a // k, slot a % k
        tokens_per_expert = torch.bincount(assignment_expert, minlength=self.num_experts)  # (E,)
        aux_loss = self.load_balancing_loss(probs, tokens_per_expert)

        # Sort-based dispatch: group the assignments by expert, run each expert once on its rows, scatter-add back.
        order = assignment_expert.argsort(stable=True)  # (N*k,)
        token = order // self.top_k  # (N*k,) token of each sorted assignment
        gate = weights.flatten()[order]  # (N*k,) its renormalised weight
        sizes = tokens_per_expert.tolist()  # host sync: split sizes must be Python ints
        out = torch.zeros_like(flat)  # (N, C)
        # Every expert runs, even on zero rows, so all expert weights get a (possibly zero) gradient.
        for expert, rows, g in zip(self.experts, token.split(sizes), gate.split(sizes), strict=True):
            out.index_add_(0, rows, (expert(flat[rows]) * g[:, None]).to(out.dtype))  # (n_e, C) into (N, C)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)

        if self.training:
            self._record_load(tokens_per_expert)
        return out.view(B, T, C), aux_loss

    @torch.no_grad()
    def _record_load(self, tokens_per_expert: torch.Tensor) -> None:
        if self._load is None:
            self._load = torch.zeros_like(tokens_per_expert)
        elif self._load.device != tokens_per_expert.device:
            self._load = self._load.to(tokens_per_expert.device)
        self._load += tokens_per_expert  # stays on device: no sync until someone reads it

    def expert_load(self) -> list[int]:
        """Tokens routed to each expert (counting each of a token's k choices) since the last reset."""
        if self._load is None:
            return [0] * self.num_experts
        return [int(c) for c in self._load.tolist()]

    def reset_expert_load(self) -> None:
        self._load = None


def expert_load_summary(model: nn.Module) -> dict[str, Any] | None:
    """Per-layer expert load of every MoE layer in ``model``, or None for a model without MoE layers.

    Counts are the routing assignments seen in training mode since the last ``reset_expert_load`` (each token counts
    once per chosen expert, so a layer sees B*T*k per step), on this process only: under DDP, all-reduce before
    comparing ranks. With activation checkpointing a recomputed forward may count again; the ratios are unaffected.

    Returns {"layers": {module name: {"tokens": [per expert], "cv": std/mean, "max_over_mean": max/mean}},
    "cv_mean": mean cv over layers, "max_over_mean": the worst layer's max/mean}. cv (coefficient of variation,
    population std) is 0 and max/mean is 1 for perfectly balanced experts; both are None before any token is counted.
    """
    moe_layers = [(name, m) for name, m in model.named_modules() if isinstance(m, MixtureOfExperts)]
    if not moe_layers:
        return None
    layers: dict[str, dict[str, Any]] = {}
    for name, layer in moe_layers:
        tokens = layer.expert_load()
        mean = sum(tokens) / len(tokens)
        layers[name] = {
            "tokens": tokens,
            "cv": statistics.pstdev(tokens) / mean if mean else None,
            "max_over_mean": max(tokens) / mean if mean else None,
        }
    cvs = [v["cv"] for v in layers.values() if v["cv"] is not None]
    ratios = [v["max_over_mean"] for v in layers.values() if v["max_over_mean"] is not None]
    return {
        "layers": layers,
        "cv_mean": sum(cvs) / len(cvs) if cvs else None,
        "max_over_mean": max(ratios) if ratios else None,
    }


@contextlib.contextmanager
def expert_load_kept(model: nn.Module) -> Iterator[None]:
    """Run a forward that must not count in the expert load (a measurement probe): the counts are restored."""
    layers = [m for m in model.modules() if isinstance(m, MixtureOfExperts)]
    saved = [None if m._load is None else m._load.clone() for m in layers]
    try:
        yield
    finally:
        for m, load in zip(layers, saved, strict=True):
            m._load = load


def reset_expert_load(model: nn.Module) -> None:
    """Zero the token counts of every MoE layer in ``model`` (e.g. at the start of a measured window)."""
    for module in model.modules():
        if isinstance(module, MixtureOfExperts):
            module.reset_expert_load()
