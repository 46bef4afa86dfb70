"""Sanity checks on rows (efficientllm.measure.sanity): each bound with a planted violation, and the calibration."""

from __future__ import annotations

import pytest
import torch

from efficientllm.measure import sanity
from efficientllm.measure.sanity import Ceilings, check_row

CEIL = Ceilings(peak_flops_per_s=1e11, bandwidth_bytes_per_s=2e10, power_limit_w=700.0)
GOOD = {"achieved_flops_per_s": 5e10, "mfu": 0.5, "pcu_ratio": 0.9, "aec_w": 300.0}


def test_a_sane_row_passes():
    got = check_row(GOOD, CEIL)
    assert got["ok"] and got["violations"] == [] and set(got["checks"]) == {"flops", "mfu", "utilisation", "power"}


@pytest.mark.parametrize("planted, name", [
    ({"achieved_flops_per_s": 2e11}, "flops"),   # twice the measured peak
    ({"mfu": 1.2}, "mfu"),
    ({"pcu_ratio": 2.5}, "utilisation"),          # more CPU time than threads x wall: a wrong denominator
    ({"aec_w": 900.0}, "power"),                  # above the enforced power limit
])
def test_each_bound_catches_a_planted_violation(planted, name):
    got = check_row({**GOOD, **planted}, CEIL)
    assert not got["ok"] and [v.split(":")[0] for v in got["violations"]] == [name]


def test_decode_bandwidth_bound():
    # 1 GiB of weights read per decode step in 10 ms = 107 GB/s, far beyond a 20 GB/s memory: impossible
    row = {"model_size_bytes": 2**30, "kv_cache_bytes_per_token": 0.0, "seq_len": 128, "batch_size": 1,
           "tpot_s_p50": 0.01, "extra": {"max_new_tokens": 32}}
    got = check_row(row, CEIL)
    assert not got["ok"] and got["violations"][0].startswith("bandwidth: 1.074e+11 > 2e+10")
    # 2 MiB fit in the caches: reported, not bounded
    small = check_row({**row, "model_size_bytes": 2 * 2**20}, CEIL)
    assert small["ok"] and "stay in the caches" in small["checks"]["bandwidth"]["note"]
    # the KV cache of every sequence is read too: 4 sequences x (128 + 16) positions x 1 MiB
    read = sanity.decode_read_bytes({**row, "kv_cache_bytes_per_token": 2**20, "batch_size": 4})
    assert read == 2**30 + 4 * 144 * 2**20


def test_unknown_ceilings_are_not_checked():
    got = check_row({**GOOD, "achieved_flops_per_s": 1e20}, Ceilings())
    assert got["ok"] and "flops" not in got["checks"]


def test_bandwidth_calibration_is_measured_and_cached(tmp_path, monkeypatch):
    monkeypatch.setitem(sanity.COPY_BYTES, "cpu", 8 * 2**20)
    first = sanity.measure_bandwidth(torch.device("cpu"), cache_path=tmp_path / "bw.json", repeats=2)
    again = sanity.measure_bandwidth(torch.device("cpu"), cache_path=tmp_path / "bw.json")
    assert first["bandwidth_bytes_per_s"] > 1e8 and not first["cached"] and again["cached"]
    assert again["bandwidth_bytes_per_s"] == first["bandwidth_bytes_per_s"]
