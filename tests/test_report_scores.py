"""The comparison views over hand-built rows: means ± CI, ranks, normalised scores, baseline ratios, noise marks,
Pareto sets, cost / CO2, MCR and the quality gate, all against values computed by hand (in the comments).

    python -m pytest tests/test_report_scores.py -q
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from efficientllm import records
from efficientllm.report import views

GIB = 1024**3
T2 = 4.303  # t(0.975, df=2): three trials
SQRT3 = 3**0.5


def _write(root: Path, name: str, **fields) -> None:
    row = {"status": "ok", "trial": 0, "timestamp_utc": "2025-06-01T00:00:00Z", **fields}
    records.write_row(root / name / "row.json", row)


def _pretrain(root: Path, cell: str, trial: int, **fields) -> None:
    _write(root, f"pretrain-{cell}-{trial}", axis="pretrain", stage="pretrain", cell=cell, technique=cell,
           trial=trial, quality_metric="val_ppl", **fields)


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    root = tmp_path_factory.mktemp("scores")
    # pretrain: mha and mqa three trials each, gqa one, nsa failed
    for trial, (ppl, al) in enumerate([(20, 0.20), (21, 0.21), (22, 0.22)]):
        _pretrain(root, "mha", trial, quality_value=ppl, al_s=al, peak_mem_bytes=4 * GIB, tokens_per_s=1000.0,
                  aec_w=100.0, device_count=2, energy_source="nvml")
    for trial, (ppl, al) in enumerate([(22, 0.10), (24, 0.11), (26, 0.12)]):
        _pretrain(root, "mqa", trial, quality_value=ppl, al_s=al, peak_mem_bytes=2 * GIB, tokens_per_s=2000.0,
                  tokens_per_j=40.0, energy_source="nvml")
    _pretrain(root, "gqa", 0, quality_value=18.0, al_s=0.30, peak_mem_bytes=3 * GIB, energy_source="estimate")
    _pretrain(root, "nsa", 0, status="failed", error="boom")
    # finetune: two datasets, each with its own `full` baseline
    for dataset, full, lora in (("arith", 1.0, 1.1), ("medical", 2.0, 1.9)):
        for method, loss in (("full", full), ("lora", lora)):
            _write(root, f"ft-{method}-{dataset}", axis="finetune", stage="finetune", cell=f"{method}-{dataset}",
                   technique=method, dataset=dataset, model="models/pretrain/mha", quality_metric="eval_loss",
                   quality_value=loss)
    # quantize: a task score (higher is better) ...
    for precision, size, score, extra in (
        ("bf16", 1000.0, 0.50, {}),
        ("int8", 600.0, 0.49, {}),
        ("int4", 400.0, 0.45, {"nominal_bits": 4.5}),  # nf4 + its block scales
    ):
        _write(root, f"q-{precision}", axis="quantize", stage="quantize", cell=f"base-{precision}",
               technique=precision, model="pretrain/mha", quality_metric="acc", quality_value=score,
               model_size_bytes=size, extra={"precision": precision, "quality_gate_ratio": 0.95, **extra})
    # ... and a perplexity (lower is better), on another stage
    for precision, ppl in (("bf16", 10.0), ("int4", 12.5)):
        _write(root, f"qp-{precision}", axis="quantize", stage="quantize_ppl", cell=f"base-{precision}",
               technique=precision, model="pretrain/mha", quality_metric="val_ppl", quality_value=ppl,
               model_size_bytes=1000.0 if precision == "bf16" else 300.0, extra={"precision": precision})
    connection = views.connect(str(root / "*" / "row.json"), assumptions=views.Assumptions(3.6, 360.0, "test"))
    yield connection
    connection.close()


def _score(con, cell: str, metric: str) -> dict:
    cursor = con.execute("SELECT * FROM scores WHERE cell = ? AND metric = ?", [cell, metric])
    names = [d[0] for d in cursor.description]
    rows = cursor.fetchall()
    assert len(rows) == 1, (cell, metric, rows)
    return dict(zip(names, rows[0], strict=True))


def test_mean_and_t_confidence_interval(con):
    mha = _score(con, "mha", "quality")
    # (20, 21, 22): mean 21, sample sd 1, half-width t(0.975, 2) x 1 / sqrt(3) = 4.303 / 1.732 = 2.4843
    assert (mha["n"], mha["mean"], mha["sd"]) == (3, pytest.approx(21.0), pytest.approx(1.0))
    assert mha["ci95"] == pytest.approx(T2 / SQRT3)
    assert (mha["ci95_low"], mha["ci95_high"]) == (pytest.approx(21 - T2 / SQRT3), pytest.approx(21 + T2 / SQRT3))
    gqa = _score(con, "gqa", "quality")
    assert gqa["n"] == 1 and gqa["ci95"] is None  # one trial: no interval


def test_ranks_and_normalised_scores(con):
    # perplexity, lower is better: gqa 18 (1), mha 21 (2), mqa 24 (3); min 18, max 24:
    # gqa 1.0, mha 0.1 + 0.9 (24 - 21) / 6 = 0.55, mqa 0.1 (eqs. 10-11, flipped for lower-is-better)
    got = {c: (_score(con, c, "quality")["rank"], _score(con, c, "quality")["normalized_score"])
           for c in ("gqa", "mha", "mqa")}
    assert got == {"gqa": (1, pytest.approx(1.0)), "mha": (2, pytest.approx(0.55)), "mqa": (3, pytest.approx(0.1))}
    # AL, lower is better: mqa 0.11 (1) -> 1.0; mha 0.21 (2) -> 0.1 + 0.9 (0.30 - 0.21) / 0.19 = 0.52632; gqa 0.1
    assert _score(con, "mha", "al_s")["normalized_score"] == pytest.approx(0.1 + 0.9 * 0.09 / 0.19)
    assert _score(con, "mqa", "al_s")["rank"] == 1
    # throughput, higher is better: mqa 2000 tok/s -> 1.0 (rank 1), mha 1000 -> 0.1 (gqa has none)
    assert (_score(con, "mqa", "tokens_per_s")["rank"], _score(con, "mha", "tokens_per_s")["normalized_score"]) == (
        1, pytest.approx(0.1))
    # the failed nsa cell is not ranked
    assert con.execute("SELECT count(*) FROM scores WHERE cell = 'nsa'").fetchone() == (0,)


def test_ratios_to_baseline_and_noise(con):
    mqa_q, mqa_al, gqa_q = _score(con, "mqa", "quality"), _score(con, "mqa", "al_s"), _score(con, "gqa", "quality")
    assert mqa_q["vs_baseline"] == pytest.approx(24 / 21)
    assert gqa_q["vs_baseline"] == pytest.approx(18 / 21)
    # mqa ppl (22, 24, 26): mean 24 ± 4.303 x 2 / sqrt(3) = [19.03, 28.97] overlaps mha's [18.52, 23.48]: noise
    assert mqa_q["within_noise_of_baseline"] is True
    # mqa AL 0.11 ± 0.0248 = [0.085, 0.135] vs mha 0.21 ± 0.0248 = [0.185, 0.235]: a real difference
    assert mqa_al["within_noise_of_baseline"] is False
    assert gqa_q["within_noise_of_baseline"] is None  # one trial: cannot tell
    assert _score(con, "mha", "quality")["within_noise_of_baseline"] is None  # the baseline itself
    # best quality is gqa (18, no CI): mha cannot be compared (None); gqa itself is the best
    assert gqa_q["best_cell"] == "gqa" and gqa_q["within_noise_of_best"] is True
    assert _score(con, "mha", "quality")["within_noise_of_best"] is None


def test_finetune_boards_compare_with_their_own_full_baseline(con):
    rows = con.execute("SELECT board, cell, rank, vs_baseline FROM scores WHERE axis = 'finetune' AND "
                       "metric = 'quality' ORDER BY board, rank").fetchall()
    # arith: full 1.0 < lora 1.1 (ratio 1.1); medical: lora 1.9 < full 2.0 (ratio 0.95)
    assert rows == [
        ("models/pretrain/mha · arith", "full-arith", 1, pytest.approx(1.0)),
        ("models/pretrain/mha · arith", "lora-arith", 2, pytest.approx(1.1)),
        ("models/pretrain/mha · medical", "lora-medical", 1, pytest.approx(0.95)),
        ("models/pretrain/mha · medical", "full-medical", 2, pytest.approx(1.0)),
    ]
    board = con.execute("SELECT cell, quality_vs_full FROM leaderboard_finetune WHERE task = 'medical' "
                        "ORDER BY rank").fetchall()
    assert board == [("lora-medical", pytest.approx(0.95)), ("full-medical", pytest.approx(1.0))]


def test_pareto_fronts(con):
    def front(x_metric: str) -> set[str]:
        return {c for (c,) in con.execute("SELECT cell FROM pareto WHERE axis = 'pretrain' AND x_metric = ? AND "
                                          "on_front", [x_metric]).fetchall()}

    # (ppl, peak GiB): mha (21, 4), mqa (24, 2), gqa (18, 3): gqa beats mha on both; mqa has the least memory
    assert front("peak_mem_bytes") == {"gqa", "mqa"}
    # (ppl, AL s): mha (21, 0.21), mqa (24, 0.11), gqa (18, 0.30): each is best somewhere or in between -> all
    assert front("al_s") == {"gqa", "mha", "mqa"}
    # energy per token: mha 100 W / 1000 tok/s = 0.1 J, mqa 1 / 40 = 0.025 J, gqa none -> both on the front
    assert front("energy_j_per_token") == {"mha", "mqa"}
    # the error bars of the Pareto plot: 95% CI half-widths of both means (mha: ppl 20, 21, 22 -> sd 1), none for
    # gqa's single trial
    ci = dict(con.execute("SELECT cell, quality_ci95 FROM pareto WHERE x_metric = 'al_s'").fetchall())
    assert ci["mha"] == pytest.approx(T2 / 3 ** 0.5) and ci["gqa"] is None
    (x_ci,) = con.execute("SELECT x_ci95 FROM pareto WHERE x_metric = 'al_s' AND cell = 'mha'").fetchone()
    assert x_ci == pytest.approx(T2 * 0.01 / 3 ** 0.5)


def test_cost_and_co2_from_the_assumptions(con):
    got = con.execute("SELECT cost_usd_per_mtok, co2_g_per_mtok, energy_j_per_token, usd_per_device_hour, "
                      "energy_source FROM measured WHERE cell = 'mha' AND trial = 0").fetchone()
    # cost = 3.6 USD/h x 2 devices / 3600 s x 1e6 tokens / 1000 tok/s = 2.0 USD per million tokens
    # CO2 = 0.1 J/token x 1e6 / 3.6e6 J/kWh x 360 g/kWh = 10 g per million tokens
    assert got == (pytest.approx(2.0), pytest.approx(10.0), pytest.approx(0.1), 3.6, "nvml")
    mqa = con.execute("SELECT cost_usd_per_mtok, co2_g_per_mtok FROM leaderboard_pretrain WHERE cell = 'mqa'")
    # 3.6 / 3600 x 1e6 / 2000 = 0.5 USD; 1/40 J x 1e6 / 3.6e6 x 360 = 2.5 g
    assert mqa.fetchone() == (pytest.approx(0.5), pytest.approx(2.5))
    none = views.connect([])  # no assumptions: no cost columns, and no error
    assert none.execute("SELECT * FROM assumptions").fetchone()[:2] == (None, None)


def test_mcr_and_quality_gate_against_bf16(con):
    rows = {r[0]: r[1:] for r in con.execute(
        "SELECT cell, nominal_bits, mcr_nominal, mcr_measured, quality_vs_bf16, passes_quality_gate FROM quantize "
        "WHERE stage = 'quantize'").fetchall()}
    # int4: 16 / 4.5 bits x 0.45 / 0.50 = 3.2; 1000 / 400 bytes x 0.9 = 2.25; 0.9 < gate 0.95
    assert rows["base-int4"] == (4.5, pytest.approx(3.2), pytest.approx(2.25), pytest.approx(0.9), False)
    # int8: bits from the slug (8): 16 / 8 x 0.98 = 1.96; 1000 / 600 x 0.98 = 1.6333; 0.98 >= 0.95
    assert rows["base-int8"] == (8.0, pytest.approx(1.96), pytest.approx(1000 / 600 * 0.98), pytest.approx(0.98), True)
    assert rows["base-bf16"] == (16.0, pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0), True)  # itself
    # perplexity 10 -> 12.5 is worse: the ratio flips to 10 / 12.5 = 0.8; MCR nominal 16 / 4 x 0.8 = 3.2
    ppl = con.execute("SELECT quality_vs_bf16, mcr_nominal, mcr_measured FROM quantize WHERE stage = 'quantize_ppl' "
                      "AND cell = 'base-int4'").fetchone()
    assert ppl == (pytest.approx(0.8), pytest.approx(3.2), pytest.approx(1000 / 300 * 0.8))
    lb = con.execute("SELECT cell, rank, mcr_nominal_rank FROM leaderboard_quantize WHERE stage = 'quantize' "
                     "ORDER BY rank").fetchall()
    # accuracy, higher is better: bf16 0.50, int8 0.49, int4 0.45; MCR: int4 3.2 > int8 1.96 > bf16 1
    assert lb == [("base-bf16", 1, 3), ("base-int8", 2, 2), ("base-int4", 3, 1)]


def test_t_table_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    con = views.connect([])
    for df, t975 in con.execute("SELECT df, t975 FROM t_critical WHERE df < 1000").fetchall():
        assert t975 == pytest.approx(stats.t.ppf(0.975, df), abs=5e-4), df


def test_view_files_load_in_any_order_and_new_files_are_picked_up(tmp_path, monkeypatch):
    sql_dir = tmp_path / "sql"
    shutil.copytree(views.SQL_DIR, sql_dir)
    # a new view that sorts first but reads `scores`, which is created late: loaded once its inputs exist
    (sql_dir / "aaa_cells.sql").write_text("-- aaa_cells: test\nCREATE VIEW aaa_cells AS SELECT DISTINCT cell FROM "
                                           "scores;\n")
    monkeypatch.setattr(views, "SQL_DIR", sql_dir)
    monkeypatch.setattr(views, "VIEWS", tuple(reversed(views.VIEWS)))
    con = views.connect([])
    assert con.execute("SELECT count(*) FROM aaa_cells").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM leaderboard_quantize").fetchone() == (0,)  # made before the catalog
    (sql_dir / "zzz_broken.sql").write_text("CREATE VIEW zzz_broken AS SELECT * FROM no_such_view;\n")
    with pytest.raises(RuntimeError, match="zzz_broken.sql"):
        views.connect([])
