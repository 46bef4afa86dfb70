"""The paper's throughput, energy and compression metrics as pure functions of measured quantities.

EfficientLLM (arXiv 2505.13840) section 5.1: TT (pretraining tokens / parameter / s), ST
(fine-tuning samples / parameter / s), IT (inference tokens / s), AEC (J / s) and MCR, plus
tokens per joule and cost / CO2 per million tokens. Every function returns None, never inf or
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


def mcr(
    size_orig: Number | None,
    size_comp: Number | None,
    perf_orig: Number | None,
    perf_comp: Number | None,
    higher_is_better: bool = True,
) -> float | None:
    """Model compression rate MCR = (size_orig / size_comp) x (perf_comp / perf_orig).

    Sizes are nominal (bits per weight) or measured (bytes), the same unit for both. For a quality
    metric where lower is better (perplexity, loss) pass `higher_is_better=False`: the performance
    ratio is then perf_orig / perf_comp, so a worse compressed model still lowers MCR.
    """
    size_ratio = _ratio(size_orig, size_comp)
    perf_ratio = _ratio(perf_comp, perf_orig) if higher_is_better else _ratio(perf_orig, perf_comp)
    if size_ratio is None or perf_ratio is None:
        return None
    return size_ratio * perf_ratio


def cost_usd_per_mtok(usd_per_device_hour: Number | None, tokens_per_second: Number | None) -> float | None:
    """Dollars per million tokens at a user-set device-hour price."""
    return _ratio(None if usd_per_device_hour is None else usd_per_device_hour / 3600 * 1e6, tokens_per_second)


def co2_g_per_mtok(energy_j: Number | None, tokens: Number | None, grid_g_per_kwh: Number | None) -> float | None:
    """Grams CO2 per million tokens from the window's energy and a user-set grid intensity (g/kWh)."""
    if grid_g_per_kwh is None:
        return None
    kwh_per_mtok = _ratio(None if energy_j is None else energy_j / 3.6e6 * 1e6, tokens)
    return None if kwh_per_mtok is None else kwh_per_mtok * grid_g_per_kwh
