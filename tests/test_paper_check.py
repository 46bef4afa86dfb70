"""`efficientllm paper-check`: the study's figures against physical bounds, with the arithmetic (golden values
computed by hand in the comments)."""

from __future__ import annotations

import json

import pytest

from efficientllm import cli
from efficientllm.report import paper_check as pc


def test_the_published_pretraining_throughput_is_physically_impossible():
    got = pc._pretrain_tt_1p5b()
    # 8.64e-2 x 1.5e9 = 1.296e8 tokens/s; x 6 x 1.5e9 = 1.1664e18 FLOP/s; 48 x 989e12 = 4.7472e16 FLOP/s
    assert got["implied"] == pytest.approx(1.1664e18) and got["bound"] == pytest.approx(4.7472e16)
    assert got["verdict"] == "impossible" and "24.6x the peak of the whole cluster" in got["arithmetic"]


def test_int4_cannot_cut_bf16_memory_3_9x():
    got = pc._int4_memory()
    # NF4 + double quant: 4 + 0.125 + 0.00195 = 4.127 bits; 16 / 4.127 = 3.877 < 3.9
    assert got["bound"] == pytest.approx(3.877, abs=1e-3) and got["verdict"] == "impossible"


def test_cli_table_and_json(capsys):
    assert cli.main(["paper-check"]) == 0
    md = capsys.readouterr().out
    assert "## pretrain-tt-1.5b: IMPOSSIBLE" in md and "- arithmetic: TT x N = 0.0864 x 1.5e+09" in md
    assert cli.main(["paper-check", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [f.id for f in pc.FIGURES]
    assert all(r["verdict"] in ("possible", "impossible") for r in rows)
