"""The noise floor of a machine: how much one cell's timing and energy move between identical runs.

A one-trial difference between two cells means something only beyond the run-to-run spread of the machine
that measured them. `noise_floor` repeats one measured cell (same params, same seed) and returns the
coefficient of variation (sample sd / mean) of each timing, throughput, memory and energy column; the
`noise_floor` stage stores them as a row (axis `noise`), and the report's tests (efficientllm.report.stats)
compare one-trial differences against them. `bench/stability.py` prints the same figures.

    python -m stages.noise_floor        # the pipeline's stage: 5 runs of the mha recipe on this machine
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

NOISE_COLUMNS = ("al_s", "latency_s_p50", "tokens_per_s", "tt_tokens_per_param_s", "aec_w", "energy_j",
                 "peak_mem_bytes", "amu_bytes", "pcu_ratio")
"""The row columns whose run-to-run spread a noise floor measures."""


def coefficient_of_variation(values: Sequence[float]) -> float | None:
    """Sample standard deviation / |mean|; None with fewer than two values or a zero mean."""
    if len(values) < 2 or not statistics.fmean(values):
        return None
    return statistics.stdev(values) / abs(statistics.fmean(values))


def noise_floor(run_once: Callable[[], dict[str, Any]], runs: int,
                progress: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run `run_once` (one measured cell, returning its row) `runs` times; the spread of every NOISE_COLUMNS
    column: {"runs", "cv": {column: CV}, "values": {column: [...]}, "quality_identical": bool}."""
    if runs < 2:
        raise ValueError(f"a noise floor needs at least 2 runs, got {runs}")
    rows = []
    for i in range(runs):
        rows.append(run_once())
        if progress is not None:
            progress(i, rows[-1])
    values = {c: [float(r[c]) for r in rows if r.get(c) is not None] for c in NOISE_COLUMNS}
    return {"runs": runs, "cv": {c: coefficient_of_variation(v) for c, v in values.items()}, "values": values,
            "quality_identical": len({r.get("quality_value") for r in rows}) == 1, "rows": rows}
