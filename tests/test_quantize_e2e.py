"""End to end: `dvc repro quantize` on the tiny profile (prepare -> pretrain@mha -> cloze -> quantize@bf16, @int4),
then the rows, the raw samples, and MCR / the quality gate through the report's `quantize` view.

Slow (about a minute): marked `slow`; CI runs it through `make test`.
"""

from __future__ import annotations

import json

import pytest
from conftest import BIN, run

from efficientllm.records import COLUMNS
from efficientllm.report.views import connect

pytestmark = pytest.mark.slow


def test_dvc_repro_quantize_matrix(tiny_repo):
    repo = tiny_repo
    run([str(BIN / "dvc"), "repro", "quantize"], repo)

    meta = json.loads((repo / "data/cloze/meta.json").read_text())
    assert meta["items"] > 0 and meta["chance_acc"] == 0.25
    rows = {}
    for precision in ("bf16", "int4"):
        cell_dir = repo / "results/quantize" / f"base-{precision}"
        row = json.loads((cell_dir / "row.json").read_text())
        assert list(row) == list(COLUMNS)
        assert row["status"] == "ok", row["error"]
        assert row["axis"] == "quantize" and row["stage"] == "quantize" and row["technique"] == precision
        assert row["model"] == "pretrain/mha" and row["batch_size"] == 2 and row["seq_len"] == 8
        assert row["quality_metric"] == "efficientllm_cloze.acc_mutual_info" and 0 <= row["quality_value"] <= 1
        assert row["extra"]["eval"]["batch_size"] == 8 and row["extra"]["task_docs"]["efficientllm_cloze"] == 8
        for col in ("al_s", "latency_s_p50", "latency_s_p99", "ttft_s_p50", "tpot_s_p50", "it_tokens_per_s",
                    "amu_bytes", "pcu_ratio", "peak_mem_bytes", "energy_j", "aec_w", "tokens_per_j",
                    "kv_cache_bytes_per_token", "model_size_bytes", "eval_loss"):
            assert row[col] is not None and row[col] > 0, col
        assert row["steps"] >= 2 and len(row["latency_samples_s"]) == row["steps"]
        samples = json.loads((cell_dir / "samples.json").read_text())
        assert len(samples["requests"]) == row["steps"]
        assert all(len(r["decode_s"]) == 4 - 1 for r in samples["requests"])  # max_new_tokens - 1 decode steps
        assert row["extra"]["max_batch"] >= 1 and "max_batch_fits" in row["extra"]
        rows[precision] = row
    assert rows["bf16"]["dtype"] == "bfloat16" and rows["int4"]["dtype"] == "nf4"
    assert rows["int4"]["model_size_bytes"] < rows["bf16"]["model_size_bytes"]
    assert rows["bf16"]["mcr_nominal"] == 1.0 and rows["int4"]["mcr_nominal"] is None  # the SQL view fills it

    con = connect(sorted((repo / "results").glob("*/*/row.json")))
    got = dict(con.execute("SELECT precision, mcr_nominal FROM quantize WHERE status = 'ok'").fetchall())
    ratio = rows["int4"]["quality_value"] / rows["bf16"]["quality_value"] if rows["bf16"]["quality_value"] else None
    if ratio is not None:
        assert got["int4"] == pytest.approx(16 / 4 * ratio)
    assert got["bf16"] == pytest.approx(1.0)

    p = run([str(BIN / "dvc"), "status", "quantize"], repo)
    assert "up to date" in p.stdout or "changed" not in p.stdout, p.stdout
