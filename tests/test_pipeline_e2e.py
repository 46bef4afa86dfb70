"""End to end: `dvc repro` of the real pipeline on a tiny params profile, then the rows through SQL.

Slow (a minute or two): marked `slow`; CI runs it through `make test`.
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import BIN, energy_source_here, run

from efficientllm.records import COLUMNS

pytestmark = pytest.mark.slow


def test_dvc_repro_produces_rows_report_and_noop(tiny_repo):
    repo = tiny_repo
    run([str(BIN / "dvc"), "repro"], repo)

    stats = json.loads((repo / "data/prepared/stats.json").read_text())
    assert stats["vocab_size"] <= 320 and stats["block_len"] == 32
    for f in ("train.npy", "val.npy", "tokenizer/tokenizer.json"):
        assert (repo / "data/prepared" / f).exists(), f

    model_dir = repo / "models/pretrain/mha"
    assert (model_dir / "model.safetensors").exists()
    assert not list(model_dir.glob("*.bin")), "weights must be safetensors only"

    row = json.loads((repo / "results/pretrain/mha/row.json").read_text())
    assert list(row) == list(COLUMNS)
    assert row["status"] == "ok" and row["axis"] == "pretrain" and row["cell"] == "mha"
    assert row["quality_metric"] == "val_ppl" and 1 < row["quality_value"] < 320 * 2
    assert row["steps"] == 4 and len(row["latency_samples_s"]) == 4  # 6 steps - 2 warm-up
    assert row["latency_s_p50"] <= row["latency_s_p99"]
    for col in ("amu_bytes", "amu_ratio", "pcu_ratio", "mfu", "al_s", "tt_tokens_per_param_s", "aec_w",
                "energy_j", "peak_mem_bytes", "kv_cache_bytes_per_token", "peak_flops_per_s"):
        assert row[col] is not None and row[col] > 0, col
    assert row["energy_source"] == energy_source_here("cpu")  # rapl where readable, else the estimate
    assert row["n_params"] > 0 and row["git_sha"]

    curve = (repo / "results/pretrain/mha/loss.csv").read_text().splitlines()
    assert curve[0].startswith("step,loss") and len(curve) == 1 + 6

    index = (repo / "reports/index.md").read_text()
    assert "mha" in index
    assert (repo / "reports/rows.csv").exists()

    # Nothing changed: DVC must do nothing, quickly.
    t0 = time.perf_counter()
    p = run([str(BIN / "dvc"), "repro"], repo)
    assert time.perf_counter() - t0 < 10
    assert "up to date" in p.stdout, p.stdout

    # The rows through the SQL command.
    p = run([str(BIN / "efficientllm"), "sql", "--format", "json",
             "SELECT cell, status, quality_value FROM rows WHERE axis = 'pretrain'"], repo)
    rows = json.loads(p.stdout)
    assert rows == [{"cell": "mha", "status": "ok", "quality_value": row["quality_value"]}]
