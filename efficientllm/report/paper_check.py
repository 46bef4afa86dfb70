"""`efficientllm paper-check`: the study's published figures, recomputed with its own formulas and held against
physical bounds, the arithmetic shown.

A benchmark that repeats another's numbers should first check they can be true. Each `PaperFigure` is one number
the EfficientLLM study (arXiv 2505.13840) published, the quantity its definition implies (e.g. its TT =
tokens / parameter / s implies FLOP/s = 6 x N^2 x TT for training), and the bound that quantity cannot exceed on
the hardware the study names (datasheet peaks, labelled as such; this project's measured H200 peak beside it where
one exists). Verdicts: `impossible` (the implied quantity exceeds the bound), `possible`. Add a figure to FIGURES
with its source.

    efficientllm paper-check             # a table; --format json for scripts
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

GH200_BF16_DENSE_FLOPS = 989e12
"""Dense bf16 peak of one GH200 / H100 / H200 (SXM) GPU, FLOP/s: the vendor's datasheet (a ceiling, not measured)."""
H200_BF16_MEASURED_FLOPS = 7.63e14
"""This project's measured bf16 matmul peak on one H200 (bench/gpu_check.sh, the row's peak_flops_per_s)."""
NF4_DOUBLE_QUANT_BITS = 4 + 8 / 64 + 32 / (64 * 256)
"""Bits per weight of bitsandbytes NF4 with double quantization: 4-bit codes, an 8-bit absmax per 64 weights, an
fp32 absmax per 256 of those (blocksize 64, the QLoRA / transformers default)."""


@dataclass(frozen=True)
class PaperFigure:
    id: str
    claim: str
    """What the study published, in its words."""
    source: str
    """Where in the study (section / table / abstract)."""
    check: Callable[[], dict[str, Any]]
    """-> {implied, bound, unit, arithmetic, verdict}."""


def _verdict(implied: float, bound: float) -> str:
    return "impossible" if implied > bound else "possible"


def _pretrain_tt_1p5b() -> dict[str, Any]:
    n, tt, gpus = 1.5e9, 8.64e-2, 48
    tokens_per_s = tt * n
    flops = 6 * n * tokens_per_s  # 6 FLOPs per parameter per token (forward + backward), attention left out
    bound = gpus * GH200_BF16_DENSE_FLOPS
    return {"implied": flops, "bound": bound, "unit": "FLOP/s",
            "arithmetic": f"TT x N = {tt:g} x {n:.3g} = {tokens_per_s:.3g} tokens/s; x 6N = {flops:.3g} FLOP/s "
                          f"(attention FLOPs would only add); {gpus} GPUs x {GH200_BF16_DENSE_FLOPS:.3g} FLOP/s "
                          f"(datasheet dense bf16) = {bound:.3g}: {flops / bound:.1f}x the peak of the whole cluster "
                          f"({flops / (gpus * H200_BF16_MEASURED_FLOPS):.1f}x at this project's measured H200 peak)",
            "verdict": _verdict(flops, bound)}


def _int4_memory() -> dict[str, Any]:
    best = 16 / NF4_DOUBLE_QUANT_BITS
    claimed = 3.9
    return {"implied": claimed, "bound": best, "unit": "x less memory than bf16",
            "arithmetic": f"NF4 with double quantization holds {NF4_DOUBLE_QUANT_BITS:.3f} bits per quantized weight "
                          f"(4 + 8/64 + 32/16384), so even a model of nothing but quantized linear layers shrinks "
                          f"at most 16 / {NF4_DOUBLE_QUANT_BITS:.3f} = {best:.2f}x; embeddings and norms kept in 16 "
                          "bits lower that (2.41x measured here for SmolLM2-135M), and group-wise int4 with fp16 "
                          "scales (GPTQ / AWQ, 128 per group: 4.125+ bits) cannot do better. 3.9x fits the nominal "
                          "16/4 = 4x, not measured memory",
            "verdict": _verdict(claimed, best)}


FIGURES: tuple[PaperFigure, ...] = (
    PaperFigure("pretrain-tt-1.5b", "pretraining throughput TT = 8.64e-2 tokens / parameter / s at 1.5B parameters, "
                "on 48 GH200", "section 5 (architecture pretraining), quoted in issue #16 of this project",
                _pretrain_tt_1p5b),
    PaperFigure("int4-3.9x", "int4 quantization cuts memory / energy by up to 3.9x (the memory part is checked; "
                "energy has no such bound)", "abstract", _int4_memory),
)
"""The study's figures checked, with their sources."""


def check_all() -> list[dict[str, Any]]:
    """Every figure's check, as rows: id, claim, source, implied, bound, unit, verdict, arithmetic."""
    return [{"id": f.id, "claim": f.claim, "source": f.source, **f.check()} for f in FIGURES]


def render(rows: list[dict[str, Any]]) -> str:
    """The checks as Markdown: one section per figure, the arithmetic in full."""
    out = ["# The study's published figures, checked against physical bounds", ""]
    for r in rows:
        out += [f"## {r['id']}: {r['verdict'].upper()}", "", f"- published: {r['claim']} ({r['source']})",
                f"- implied: {r['implied']:.4g} {r['unit']}; bound: {r['bound']:.4g} {r['unit']}",
                f"- arithmetic: {r['arithmetic']}", ""]
    return "\n".join(out)
