"""bench/latency_agreement.py, the parts that run offline in milliseconds: de-duplicating optimum-benchmark 0.6.0's
per-token list, reading its report, the pair order and the ratio summary. (The measurers themselves need the real
model and a venv of their own: run the script.)"""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location("latency_agreement", REPO / "bench" / "latency_agreement.py")
la = importlib.util.module_from_spec(spec)
spec.loader.exec_module(la)


def tracker_per_token(calls_per_generate: list[list[float]]) -> list[float]:
    """What optimum-benchmark 0.6.0's PerTokenLatencySessionTrackerLogitsProcessor reports as per_token values:
    after each generate, `track()` extends the lists with the pairs of *every* call of the session so far."""
    events: list[float] = []
    values: list[float] = []
    for calls in calls_per_generate:
        events.extend(calls)  # __call__: one event per generated token, never reset between generates
        values.extend(b - a for a, b in zip(events[:-1], events[1:], strict=True))  # track(): [:-1] -> [1:]
    return values


# Three generates of 4 tokens; the logits-processor call times (s) of each. Decode steps: 1 2 3 | 4 5 6 | 7 8 9 (ms);
# between generates 500 ms pass (return + next call + prefill).
CALLS = [[0.0, 0.001, 0.003, 0.006], [0.506, 0.510, 0.515, 0.521], [1.021, 1.028, 1.036, 1.045]]
STEPS = [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009]


def test_dedup_recovers_each_decode_step_once():
    values = tracker_per_token(CALLS)
    assert len(values) == 3 + 7 + 11  # sum_j (j n - 1) for n=4, k=3; 1,750 for n=32, k=10
    assert la.dedup_per_token(values, new_tokens=4, generates=3) == pytest.approx(STEPS)
    assert len(tracker_per_token([[0.0] * 32] * 10)) == 1750


def test_dedup_refuses_another_layout():
    steps = [b - a for calls in CALLS for a, b in zip(calls[:-1], calls[1:], strict=True)]  # a fixed tracker
    with pytest.raises(ValueError, match="layout"):
        la.dedup_per_token(steps, new_tokens=4, generates=3)
    values = tracker_per_token(CALLS)
    values[0] += 1.0  # right count, but block 1 is not a prefix of the last block
    with pytest.raises(ValueError, match="prefix"):
        la.dedup_per_token(values, new_tokens=4, generates=3)


def test_optimum_figures_from_a_report_dict():
    values = tracker_per_token(CALLS)
    report = {"prefill": {"latency": {"values": [0.30, 0.32, 0.31]}},
              "per_token": {"latency": {"values": values, "p50": sorted(values)[len(values) // 2]}},
              "generate": {"latency": {"p50": 0.33}}}
    fig = la.optimum_figures(report, new_tokens=4)
    assert fig["ttft_s"] == pytest.approx(0.31)
    assert fig["tpot_s"] == pytest.approx(0.005)  # the median of 1..9 ms
    assert (fig["requests"], fig["per_token_reported"], fig["per_token_unique"]) == (3, 21, 9)


def test_pairs_rotate_the_order():
    assert [la.rotated(["stage", "plain", "optimum"], i) for i in range(4)] == [
        ["stage", "plain", "optimum"], ["plain", "optimum", "stage"], ["optimum", "stage", "plain"],
        ["stage", "plain", "optimum"]]


def test_summary_takes_medians_of_per_pair_ratios_and_skips_failures():
    pairs = [
        {"stage": {"ttft_s": 0.30, "tpot_s": 0.060}, "plain": {"ttft_s": 0.30, "tpot_s": 0.050},
         "optimum": {"ttft_s": 0.25, "tpot_s": 0.061}},
        {"stage": {"ttft_s": 0.40, "tpot_s": 0.080}, "plain": {"ttft_s": 0.39, "tpot_s": 0.070},
         "optimum": {"error": "exit 1: boom"}},
        {"stage": {"ttft_s": 0.50, "tpot_s": 0.100}, "plain": {"ttft_s": 0.50, "tpot_s": 0.090},
         "optimum": {"ttft_s": 0.45, "tpot_s": 0.099}},
    ]
    s = la.summarize_pairs(pairs, ["stage", "plain", "optimum"], tolerance=0.05)
    assert s["medians"]["stage"] == {"ttft_s": 0.40, "tpot_s": 0.080, "n": 3}
    assert s["medians"]["optimum"]["n"] == 2
    r = s["ratios"]
    assert r["ttft_stage_over_plain"]["median"] == pytest.approx(1.0)  # 1.0, 1.0256, 1.0
    assert r["ttft_stage_over_plain"]["within"] is True
    assert r["tpot_stage_over_plain"]["median"] == pytest.approx(0.08 / 0.07)
    assert r["tpot_stage_over_plain"]["within"] is False
    assert r["ttft_stage_over_optimum"]["n"] == 2  # the failed pair is left out
    assert r["ttft_stage_over_optimum"]["median"] == pytest.approx((1.2 + 0.5 / 0.45) / 2)
    assert r["tpot_stage_over_optimum"]["within"] is True
    table = la.format_summary(s)
    assert "tpot_stage_over_plain" in table and " no" in table and " yes" in table


def test_summary_with_no_result_for_a_measurer():
    s = la.summarize_pairs([{"stage": {"ttft_s": 0.3, "tpot_s": 0.06}, "optimum": {"error": "x"}}],
                           ["stage", "optimum"])
    assert s["medians"]["optimum"]["ttft_s"] is None
    assert s["ratios"]["tpot_stage_over_optimum"] == {"median": None, "per_pair": [], "n": 0, "within": None}
    assert "-" in la.format_summary(s)


def test_mean_step_ratio_is_taken_for_measurers_with_per_step_times():
    pairs = [{"stage": {"ttft_s": 0.3, "tpot_s": 0.060, "tpot_mean_s": 0.063},
              "plain": {"ttft_s": 0.3, "tpot_s": 0.070},
              "optimum": {"ttft_s": 0.3, "tpot_s": 0.061, "tpot_mean_s": 0.0665}},
             {"stage": {"ttft_s": 0.3, "tpot_s": 0.060, "tpot_mean_s": 0.066}, "plain": {"error": "x"},
              "optimum": {"error": "y"}}]
    assert la.mean_step_ratios(pairs, ["stage", "plain", "optimum"]) == pytest.approx({"stage": 0.9, "optimum": 0.95})
