"""The paper's throughput, energy and compression metrics as pure functions of measured quantities.

EfficientLLM (arXiv 2505.13840) section 5.1: TT (pretraining tokens / parameter / s), ST
(fine-tuning samples / parameter / s), IT (inference tokens / s), AEC (J / s), plus tokens per
joule. MCR and cost / CO2 per million tokens compare a row with others or with user-set prices: the
report's `measured` view computes them in SQL. Every function returns None, never inf or
NaN, when an input is unknown (None) or a denominator is zero, so results go straight into rows.

    python -c "from efficientllm.measure.metrics import *; print(tt_tokens_per_param_s(1e6, 1e8, 10.0))"
"""

from __future__ import annotations

import math

Number = float | int


def _ratio(numerator: Number | None, denominator: Number | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    value = numerator / denominator
    return value if math.isfinite(value) else None


def tt_tokens_per_param_s(tokens: Number | None, n_params: Number | None, seconds: Number | None) -> float | None:
    """Training throughput TT: tokens processed / parameters / seconds (pretraining axis)."""
    return _ratio(_ratio(tokens, n_params), seconds)


def st_samples_per_param_s(samples: Number | None, n_params: Number | None, seconds: Number | None) -> float | None:
    """Sample throughput ST: training samples / parameters / seconds (fine-tuning axis)."""
    return _ratio(_ratio(samples, n_params), seconds)


def it_tokens_per_s(tokens: Number | None, seconds: Number | None) -> float | None:
    """Inference throughput IT: generated tokens / seconds."""
    return _ratio(tokens, seconds)


def tokens_per_s(tokens: Number | None, seconds: Number | None) -> float | None:
    """Tokens processed per second in the window (all axes)."""
    return _ratio(tokens, seconds)


def achieved_flops_per_s(flops: Number | None, seconds: Number | None) -> float | None:
    """FLOPs done in the window / seconds; the numerator of MFU."""
    return _ratio(flops, seconds)


def aec_w(energy_j: Number | None, seconds: Number | None) -> float | None:
    """Average energy consumption AEC = E_total / T, watts."""
    return _ratio(energy_j, seconds)


def tokens_per_j(tokens: Number | None, energy_j: Number | None) -> float | None:
    """Tokens per joule of energy spent in the window."""
    return _ratio(tokens, energy_j)
