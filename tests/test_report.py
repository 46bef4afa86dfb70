"""Report views, build_report and the `efficientllm sql` command, over hand-built rows with hand-computed answers.

    python -m pytest tests/test_report.py -q
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from efficientllm import cli, records
from efficientllm.report import build, tables, views

GIB = 1024**3
TRACEBACK = (
    'Traceback (most recent call last):\n  File "stages/pretrain.py", line 9, in main\nValueError: out of memory\n'
)


def _write(root: Path, folder: str, **fields) -> Path:
    row = {"axis": "pretrain", "stage": "pretrain", "status": "ok", "trial": 0, "quality_metric": "val_ppl", **fields}
    return records.write_row(root / folder / "row.json", row)


def _make_rows(tmp_path: Path) -> Path:
    """Pretraining rows: mha (re-run), gqa (two trials), mqa, moe (failed, then ok), nsa failed, mla skipped."""
    _write(tmp_path, "archive/pretrain/mha", cell="mha", technique="mha", quality_value=30.0, al_s=0.5,
           tokens_per_s=400.0, timestamp_utc="2025-05-19T10:00:00Z")  # older: `latest` must ignore it
    _write(tmp_path, "results/pretrain/mha", cell="mha", technique="mha", n_params=1_000_000, quality_value=20.0,
           al_s=0.20, tokens_per_s=1000.0, amu_bytes=4 * GIB, peak_mem_bytes=5 * GIB, aec_w=100.0,
           energy_source="rapl", latency_samples_s=[0.19, 0.2, 0.21], timestamp_utc="2025-05-20T10:00:00Z",
           extra={"heads": 8})
    _write(tmp_path, "results/pretrain/gqa", cell="gqa", technique="gqa", trial=0, quality_value=21.0, al_s=0.14,
           tokens_per_s=1300.0, amu_bytes=3 * GIB, aec_w=90.0, energy_source="rapl",
           timestamp_utc="2025-05-20T10:05:00Z")
    _write(tmp_path, "results/pretrain/gqa-t1", cell="gqa", technique="gqa", trial=1, quality_value=23.0, al_s=0.16,
           tokens_per_s=1300.0, amu_bytes=3 * GIB, aec_w=90.0, energy_source="estimate",
           timestamp_utc="2025-05-20T10:06:00Z")
    _write(tmp_path, "results/pretrain/mqa", cell="mqa", technique="mqa", quality_value=19.5, al_s=0.10,
           tokens_per_s=2000.0, amu_bytes=2 * GIB, aec_w=80.0, tokens_per_j=30.0, energy_source="rapl",
           timestamp_utc="2025-05-20T10:10:00Z")
    _write(tmp_path, "archive/pretrain/moe", cell="moe", technique="moe", status="failed", error="OOM",
           timestamp_utc="2025-05-20T09:00:00Z")  # failed first ...
    _write(tmp_path, "results/pretrain/moe", cell="moe", technique="moe", quality_value=25.0, al_s=0.30,
           tokens_per_s=800.0, amu_bytes=6 * GIB, aec_w=120.0, energy_source="rapl",
           timestamp_utc="2025-05-20T11:00:00Z")  # ... then succeeded: not a failure any more
    _write(tmp_path, "results/pretrain/nsa", cell="nsa", technique="nsa", status="failed", error=TRACEBACK,
           timestamp_utc="2025-05-20T10:20:00Z")
    _write(tmp_path, "results/pretrain/mla", cell="mla", technique="mla", status="skipped",
           error="needs CUDA\n(no GPU on this host)", timestamp_utc="2025-05-20T10:30:00Z")
    _write(tmp_path, "results/finetune/lora-openo1", axis="finetune", stage="finetune", cell="lora-openo1",
           technique="lora", quality_metric="eval_loss", quality_value=1.2, timestamp_utc="2025-05-20T12:00:00Z")
    return tmp_path


@pytest.fixture
def rows_root(tmp_path: Path) -> Path:
    return _make_rows(tmp_path)


@pytest.fixture(scope="module")
def module_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same rows, once per module (for tests that only read them)."""
    return _make_rows(tmp_path_factory.mktemp("rows"))


@pytest.fixture(scope="module")
def read_only_con(module_root: Path):
    con = views.connect(_glob(module_root))
    yield con
    con.close()


def _glob(root: Path) -> str:
    return str(root / "*" / "*" / "*" / "row.json")  # results/ and archive/


N_FILES = 10


# --- views ----------------------------------------------------------------------------------------------------


def test_sql_files_are_all_loaded_one_view_each():
    # one file per view, named after it, except the templated ones: the leaderboards, and the per-axis views
    leaderboards = [f"leaderboard_{axis}" for axis in views.LEADERBOARDS]
    assert [v for v in views.VIEWS if v.startswith("leaderboard_")] == leaderboards
    templated = {*leaderboards, *views.AXIS_VIEWS}
    assert set(views.AXIS_VIEWS) <= set(views.VIEWS)
    assert sorted(p.stem for p in views.SQL_DIR.glob("*.sql")) == sorted(set(views.view_names()) - templated)
    assert {views.view_file(v) for v in leaderboards} == {views.SQL_DIR / views.LEADERBOARD_TEMPLATE}
    assert {views.view_file(v) for v in views.AXIS_VIEWS} == {views.SQL_DIR / views.AXIS_TEMPLATE}
    con = views.connect([])
    for view in views.VIEWS:
        text = views.view_file(view).read_text()
        assert text.startswith("-- "), f"{views.view_file(view)} needs a header comment"
        assert text.upper().count("CREATE VIEW") == 1
        made = views.view_sql(con, view)
        assert made.startswith(f"-- {view}: ") and f"CREATE VIEW {view} AS" in made
    created = {v for (v,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert created == set(views.VIEWS)


# `DESCRIBE leaderboard_<axis>` before the three views came from one template (commit b75d930): a user's SELECT *
# reads these columns in this order.
LEADERBOARD_COLUMNS = {
    "pretrain": """
        rank rev stage board cell technique attention positional mlp family n_params n_active_params n_trials
        quality_metric energy_source quality_value quality_ci95 amu_bytes pcu_ratio mfu al_s latency_s_p50
        latency_s_p99 time_to_target_s tt_tokens_per_param_s tokens_per_s aec_w energy_j_per_token
        energy_to_target_j peak_mem_bytes
        kv_cache_bytes_per_token model_mem_bytes cost_usd_per_mtok co2_g_per_mtok al_s_ci95 quality_score amu_bytes_rank
        amu_bytes_score pcu_ratio_rank pcu_ratio_score al_s_rank al_s_score tt_tokens_per_param_s_rank
        tt_tokens_per_param_s_score aec_w_rank aec_w_score quality_vs_mha amu_bytes_vs_mha peak_mem_bytes_vs_mha
        al_s_vs_mha tokens_per_s_vs_mha aec_w_vs_mha energy_j_per_token_vs_mha kv_cache_bytes_per_token_vs_mha
        quality_within_noise_of_mha al_s_within_noise_of_mha""".split(),
    "finetune": """
        rank rev stage board cell method task n_params n_trainable_params n_trials quality_metric energy_source
        quality_value quality_ci95 amu_bytes pcu_ratio mfu al_s latency_s_p50 latency_s_p99 st_samples_per_param_s
        tokens_per_s aec_w energy_j_per_token peak_mem_bytes model_mem_bytes cost_usd_per_mtok co2_g_per_mtok al_s_ci95
        quality_score amu_bytes_rank amu_bytes_score pcu_ratio_rank pcu_ratio_score al_s_rank al_s_score
        st_samples_per_param_s_rank st_samples_per_param_s_score aec_w_rank aec_w_score quality_vs_full
        amu_bytes_vs_full peak_mem_bytes_vs_full al_s_vs_full st_samples_per_param_s_vs_full tokens_per_s_vs_full
        aec_w_vs_full energy_j_per_token_vs_full quality_within_noise_of_full al_s_within_noise_of_full""".split(),
    "quantize": """
        rank rev stage board cell precision model n_params nominal_bits n_trials quality_metric energy_source
        quality_value quality_ci95 amu_bytes pcu_ratio al_s latency_s_p50 latency_s_p99 it_tokens_per_s ttft_s_p50
        tpot_s_p50 aec_w energy_j_per_token peak_mem_bytes model_size_bytes model_mem_bytes mcr_nominal mcr_measured
        cost_usd_per_mtok co2_g_per_mtok al_s_ci95 quality_score amu_bytes_rank amu_bytes_score pcu_ratio_rank
        pcu_ratio_score al_s_rank al_s_score it_tokens_per_s_rank it_tokens_per_s_score aec_w_rank aec_w_score
        mcr_nominal_rank mcr_nominal_score quality_vs_bf16 amu_bytes_vs_bf16 peak_mem_bytes_vs_bf16 al_s_vs_bf16
        it_tokens_per_s_vs_bf16 ttft_s_p50_vs_bf16 tpot_s_p50_vs_bf16 aec_w_vs_bf16 energy_j_per_token_vs_bf16
        model_size_bytes_vs_bf16 quality_within_noise_of_bf16 al_s_within_noise_of_bf16""".split(),
    # the vision axis (efficientllm/vision): TT over patch tokens, K/V bytes per patch; ST over images
    "pretrain_vision": """
        rank rev stage board cell technique attention mlp family n_params n_active_params n_trials quality_metric
        energy_source quality_value quality_ci95 amu_bytes pcu_ratio mfu al_s latency_s_p50 latency_s_p99
        tt_tokens_per_param_s tokens_per_s aec_w energy_j_per_token peak_mem_bytes kv_cache_bytes_per_token
        model_mem_bytes cost_usd_per_mtok co2_g_per_mtok al_s_ci95 quality_score amu_bytes_rank amu_bytes_score
        pcu_ratio_rank pcu_ratio_score al_s_rank al_s_score tt_tokens_per_param_s_rank tt_tokens_per_param_s_score
        aec_w_rank aec_w_score quality_vs_mha amu_bytes_vs_mha peak_mem_bytes_vs_mha al_s_vs_mha tokens_per_s_vs_mha
        aec_w_vs_mha energy_j_per_token_vs_mha kv_cache_bytes_per_token_vs_mha quality_within_noise_of_mha
        al_s_within_noise_of_mha""".split(),
    "finetune_vision": """
        rank rev stage board cell method model n_params n_trainable_params n_trials quality_metric energy_source
        quality_value quality_ci95 amu_bytes pcu_ratio mfu al_s latency_s_p50 latency_s_p99 st_samples_per_param_s
        tokens_per_s aec_w energy_j_per_token peak_mem_bytes model_mem_bytes cost_usd_per_mtok co2_g_per_mtok
        al_s_ci95 quality_score amu_bytes_rank amu_bytes_score pcu_ratio_rank pcu_ratio_score al_s_rank al_s_score
        st_samples_per_param_s_rank st_samples_per_param_s_score aec_w_rank aec_w_score quality_vs_full
        amu_bytes_vs_full peak_mem_bytes_vs_full al_s_vs_full st_samples_per_param_s_vs_full tokens_per_s_vs_full
        aec_w_vs_full energy_j_per_token_vs_full quality_within_noise_of_full al_s_within_noise_of_full""".split(),
}


def test_leaderboards_are_one_layout_over_the_metric_catalog():
    con = views.connect([])
    catalog = tables.records(con, "SELECT * FROM metric_catalog")
    for axis, board in views.LEADERBOARDS.items():
        columns = [name for name, *_ in con.execute(f"DESCRIBE leaderboard_{axis}").fetchall()]
        assert columns == LEADERBOARD_COLUMNS[axis], axis
        # the same layout on every axis, each part listing the axis's catalog entries in the catalog's order
        metrics = [m for m in catalog if m["axis"] == axis and m["metric"] != "quality"]
        means = [m["metric"] for m in sorted(metrics, key=lambda m: m["leaderboard_position"])]
        radar = [m["metric"] for m in sorted(metrics, key=lambda m: m["position"]) if m["radar"]]
        ratios = [m["metric"] for m in catalog if m["axis"] == axis and m["vs_baseline_position"] is not None]
        ratios.sort(key=lambda name: next(m["vs_baseline_position"] for m in catalog
                                          if m["axis"] == axis and m["metric"] == name))
        b = board.baseline
        assert columns == [
            "rank", "rev", "stage", "board", "cell", *board.cell_columns, "n_trials", "quality_metric",
            "energy_source", "quality_value", "quality_ci95", *means, "al_s_ci95", "quality_score",
            *(f"{m}_{part}" for m in radar for part in ("rank", "score")), *(f"{m}_vs_{b}" for m in ratios),
            f"quality_within_noise_of_{b}", f"al_s_within_noise_of_{b}",
        ], axis
        for key in ("position", "leaderboard_position"):
            assert len({m[key] for m in metrics}) == len(metrics), f"{axis}: two metrics share a {key}"


def test_leaderboard_baselines_are_the_measured_baselines(tmp_path):
    for axis in views.LEADERBOARDS:
        _write(tmp_path, axis, axis=axis, stage=axis, cell=f"x-{axis}", quality_value=1.0)
    con = views.connect(str(tmp_path / "*" / "row.json"))
    assert dict(con.execute("SELECT axis, baseline FROM measured").fetchall()) == {
        axis: board.baseline for axis, board in views.LEADERBOARDS.items()}


def test_latest_picks_the_newest_row_per_cell(read_only_con):
    con = read_only_con
    assert con.execute("SELECT count(*) FROM rows").fetchone() == (N_FILES,)
    got = dict(con.execute("SELECT cell || '#' || trial, quality_value FROM latest WHERE axis = 'pretrain'").fetchall())
    # mha: the 2025-05-20 row (ppl 20) beats the 2025-05-19 one (ppl 30); moe: the ok row beats the failed one
    assert got == {"mha#0": 20.0, "gqa#0": 21.0, "gqa#1": 23.0, "mqa#0": 19.5, "moe#0": 25.0, "nsa#0": None,
                   "mla#0": None}


def test_latest_compares_times_in_utc(tmp_path):
    # 12:00+02:00 is 10:00 UTC, so the 11:00Z row is the newer one even though its clock reads earlier
    _write(tmp_path, "a", cell="mha", quality_value=1.0, timestamp_utc="2025-05-20T12:00:00+02:00")
    _write(tmp_path, "b", cell="mha", quality_value=2.0, timestamp_utc="2025-05-20T11:00:00Z")
    con = views.connect(str(tmp_path / "*" / "row.json"))
    assert con.execute("SELECT quality_value, timestamp_utc FROM latest").fetchall() == [
        (2.0, datetime(2025, 5, 20, 11, 0))
    ]


def test_pretrain_view_keeps_only_the_pretrain_axis(read_only_con):
    con = read_only_con
    cells = [c for (c,) in con.execute("SELECT DISTINCT cell FROM pretrain ORDER BY cell").fetchall()]
    assert cells == ["gqa", "mha", "mla", "moe", "mqa", "nsa"]
    columns = {name for name, *_ in con.execute("DESCRIBE pretrain").fetchall()}
    assert {"cell", "technique", "status", "n_params", "quality_value", "amu_bytes", "amu_ratio", "pcu_ratio", "mfu",
            "al_s", "latency_s_p50", "latency_s_p90", "latency_s_p99", "tt_tokens_per_param_s", "tokens_per_s",
            "aec_w", "energy_j", "energy_source", "peak_mem_bytes", "kv_cache_bytes_per_token"} <= columns


def test_leaderboard_ranks_by_quality_with_ratios_to_mha(read_only_con):
    con = read_only_con
    cursor = con.execute("SELECT * FROM leaderboard_pretrain")
    names = [d[0] for d in cursor.description]
    board = {r["cell"]: r for r in (dict(zip(names, row, strict=True)) for row in cursor.fetchall())}

    # ok cells only (nsa failed, mla skipped), ranked by perplexity: mqa 19.5 < mha 20 < gqa (21+23)/2=22 < moe 25
    assert [(c, r["rank"]) for c, r in board.items()] == [("mqa", 1), ("mha", 2), ("gqa", 3), ("moe", 4)]
    gqa, mqa, moe, mha = board["gqa"], board["mqa"], board["moe"], board["mha"]
    assert gqa["n_trials"] == 2 and gqa["quality_value"] == pytest.approx(22.0)
    assert gqa["al_s"] == pytest.approx(0.15)  # (0.14 + 0.16) / 2
    assert gqa["energy_source"] == "estimate,rapl"  # the trials disagree: both shown

    # baseline mha: al 0.20 s, 1000 tok/s, 4 GiB AMU, 100 W, ppl 20; energy per token = 100 W / 1000 tok/s = 0.1 J
    assert mha["al_s_vs_mha"] == 1.0 and mha["tokens_per_s_vs_mha"] == 1.0 and mha["energy_j_per_token_vs_mha"] == 1.0
    assert gqa["al_s_vs_mha"] == pytest.approx(0.15 / 0.20)  # 0.75
    assert gqa["tokens_per_s_vs_mha"] == pytest.approx(1300 / 1000)  # 1.3
    assert gqa["amu_bytes_vs_mha"] == pytest.approx(3 / 4)
    assert gqa["aec_w_vs_mha"] == pytest.approx(90 / 100)
    assert gqa["energy_j_per_token_vs_mha"] == pytest.approx((90 / 1300) / 0.1)  # aec_w / tokens_per_s
    assert gqa["quality_vs_mha"] == pytest.approx(22 / 20)
    assert mqa["al_s_vs_mha"] == pytest.approx(0.5)  # 0.10 / 0.20
    assert mqa["tokens_per_s_vs_mha"] == pytest.approx(2.0)
    assert mqa["energy_j_per_token_vs_mha"] == pytest.approx((1 / 30) / 0.1)  # mqa's own tokens_per_j = 30
    assert moe["amu_bytes_vs_mha"] == pytest.approx(1.5)  # 6 GiB / 4 GiB
    assert moe["energy_j_per_token_vs_mha"] == pytest.approx((120 / 800) / 0.1)
    assert mha["peak_mem_bytes_vs_mha"] == 1.0 and gqa["peak_mem_bytes_vs_mha"] is None  # gqa has no peak memory
    # quality rank is `rank`; the radar metrics carry their own rank and the paper's normalised score: AL is
    # lowest for mqa (0.10 s) -> 1, highest for moe (0.30 s) -> 0.1, mha 0.20 s -> 0.1 + 0.9 (0.30 - 0.20) / 0.20
    assert (mqa["al_s_rank"], mqa["al_s_score"]) == (1, 1.0)
    assert (moe["al_s_rank"], moe["al_s_score"]) == (4, pytest.approx(0.1))
    assert mha["al_s_score"] == pytest.approx(0.55)
    assert gqa["quality_ci95"] == pytest.approx(12.706 * 2 ** 0.5 / 2 ** 0.5)  # sd of (21, 23) = sqrt(2), n = 2
    assert mha["quality_ci95"] is None  # one trial: no interval


def test_leaderboard_without_mha_has_null_ratios(tmp_path):
    _write(tmp_path, "gqa", cell="gqa", quality_value=21.0, al_s=0.1)
    _write(tmp_path, "mqa", cell="mqa", quality_value=20.0, al_s=0.2)
    con = views.connect(str(tmp_path / "*" / "row.json"))
    assert con.execute("SELECT cell, rank, al_s_vs_mha FROM leaderboard_pretrain").fetchall() == [
        ("mqa", 1, None),
        ("gqa", 2, None),
    ]


def test_failures_lists_cells_whose_latest_row_did_not_succeed(read_only_con):
    con = read_only_con
    got = con.execute("SELECT cell, status, error_summary FROM failures").fetchall()
    # a traceback is summarised by its last line (the exception), other errors by their first line;
    # moe failed once but its latest row is ok, so it is not listed
    assert got == [("mla", "skipped", "needs CUDA"), ("nsa", "failed", "ValueError: out of memory")]
    assert con.execute("SELECT error FROM failures WHERE cell = 'nsa'").fetchone() == (TRACEBACK,)


def test_read_only_connection_has_no_file_access(rows_root, tmp_path):
    con = views.connect(_glob(rows_root))
    target = tmp_path / "leak.csv"
    with pytest.raises(duckdb.Error):
        con.execute(f"COPY rows TO '{target}'")  # refused by the engine itself, not only by execute_read
    with pytest.raises(duckdb.Error):
        con.execute("SET enable_external_access = true")
    assert not target.exists()


# --- build_report ---------------------------------------------------------------------------------------------


def test_build_report_writes_every_file(rows_root, tmp_path):
    out = tmp_path / "reports"
    paths = build.build_report(_glob(rows_root), out, assumptions=views.Assumptions(2.0, 500.0, "test"))

    tables_written = {"index", "pretrain_page", "finetune_page", "leaderboard_pretrain", "leaderboard_finetune",
                      "leaderboard_quantize", "leaderboard_pretrain_vision", "leaderboard_finetune_vision", "scores",
                      "claims", "rows_csv", "rows_parquet"}
    figures = {"pareto_pretrain.png", "radar_pretrain.png", "latency_pretrain.png", "radar_finetune.png"}
    assert set(paths) == tables_written | {f"figure:{name}" for name in figures}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.md", "pretrain.md", "finetune.md", "leaderboard_pretrain.csv", "leaderboard_finetune.csv",
         "leaderboard_quantize.csv", "leaderboard_pretrain_vision.csv", "leaderboard_finetune_vision.csv",
         "scores.csv", "claims.csv", "rows.csv", "rows.parquet", "figures"]
    )  # no temp files left
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(figures)

    md = paths["index"].read_text()
    assert md.startswith("# efficientllm report\n")
    assert f"Built from {N_FILES} row files holding {N_FILES} rows of 8 measured cells" in md
    assert "latest row of each: 6 ok, 1 failed, 1 skipped." in md
    assert "Newest row: 2025-05-20 12:00:00 UTC." in md
    assert "| rank | cell | trials | quality (val_ppl) | peak memory (MiB) | AL (ms) |" in md
    assert "quality ÷ mha | peak memory ÷ mha | AL ÷ mha |" in md
    section = md[md.index("## Architecture pretraining"):md.index("## Fine-tuning")]
    table = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert [line.split(" | ")[1] for line in table] == ["mqa", "mha", "gqa", "moe"]
    mqa, gqa = table[0].split(" | "), table[2].split(" | ")
    # mqa: ppl 19.5; no peak memory; AL 0.10 s -> "100" ms; AL ÷ mha 0.5 -> "0.50×", "?": one trial each and no
    # noise-floor row, so no test of the difference
    assert mqa[3] == "19.5" and mqa[4] == "—" and mqa[5] == "100" and mqa[-1] == "0.50× ? |"
    # gqa: two trials, ppl (21, 23) -> 22.0 ± 12.706 x sqrt(2) / sqrt(2) = 12.7; AL 150 ± 12.706 x 0.0141 / 1.41 ms
    assert gqa[2] == "2" and gqa[3] == "22.0 ± 12.7" and gqa[5] == "150 ± 127"
    assert "![quality vs memory, latency, energy (Pareto front)](figures/pareto_pretrain.png)" in md
    assert "[latency distributions](figures/latency_pretrain.png)" in md
    assert "## The paper's claims, checked" in md and "| MQA has the lowest memory and latency" in md
    assert "- **pretrain/nsa**: failed: `ValueError: out of memory`" in md
    assert "- **pretrain/mla**: skipped: `needs CUDA`" in md
    assert "moe**" not in md
    assert "USER-SET, not measured (test): price per device-hour 2.00 USD; grid carbon intensity 500 gCO2/kWh" in md
    assert "## What the metrics mean" in md and "**AMU**" in md
    for link in ("pretrain.md", "finetune.md"):
        assert f"]({link})" in md
    page = paths["pretrain_page"].read_text()
    assert page.startswith("# Architecture pretraining\n") and "### Normalised scores" in page
    assert "![latency distributions](figures/latency_pretrain.png)" in page

    with paths["leaderboard_pretrain"].open() as f:
        board = list(csv.DictReader(f))
    assert [r["cell"] for r in board] == ["mqa", "mha", "gqa", "moe"]
    assert float(board[2]["al_s_vs_mha"]) == pytest.approx(0.75)

    with paths["claims"].open() as f:
        claim_rows = list(csv.DictReader(f))
    assert [r["claim_id"] for r in claim_rows][:2] == ["mqa-memory-latency", "mla-perplexity"]
    # mla was skipped: its claim is not measurable, and says why
    mla = next(r for r in claim_rows if r["claim_id"] == "mla-perplexity")
    assert mla["verdict"] == "not measurable at this scale" and "mla skipped: needs CUDA" in mla["why"]

    with paths["rows_csv"].open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == [c for c in records.COLUMNS if c != "latency_samples_s"]
    assert len(rows) == N_FILES  # every row, the superseded ones too
    assert {r["error"] for r in rows if r["cell"] == "nsa"} == {TRACEBACK}

    parquet = str(paths["rows_parquet"])
    query = f"SELECT count(*), max(len(latency_samples_s)) FROM read_parquet('{parquet}')"
    got = duckdb.connect().execute(query).fetchone()
    assert got == (N_FILES, 3)


def test_build_report_is_deterministic(module_root, tmp_path):
    # the same rows give the same bytes (figures are checked in test_report_plots.py)
    first = build.build_report(_glob(module_root), tmp_path / "a", figures=False)
    second = build.build_report(_glob(module_root), tmp_path / "b", figures=False)
    assert set(first) == set(second) and not any(name.startswith("figure:") for name in first)
    for name, path in first.items():
        assert path.read_bytes() == second[name].read_bytes(), name


def test_build_report_with_no_rows(tmp_path):
    paths = build.build_report(str(tmp_path / "results" / "*" / "*" / "row.json"), tmp_path / "reports")
    md = paths["index"].read_text()
    assert "No rows yet" in md and "No successful cells yet." in md and "No failed or skipped cells." in md
    assert not any(name.startswith("figure:") for name in paths)
    assert paths["rows_csv"].read_text().splitlines()[0].split(",") == [
        c for c in records.COLUMNS if c != "latency_samples_s"
    ]


def test_number_formatting():
    assert tables.number(None) == "—"
    assert tables.number(1234.4) == "1,234"
    assert tables.number(19.54) == "19.5"
    assert tables.number(0.012345) == "0.0123"
    assert tables.number(2.5e-5) == "2.50e-05"
    assert tables.ratio(0.75) == "0.75×"
    assert tables.mean_ci(0.15, 0.0127, "s") == "150 ± 12.7"  # seconds shown in ms
    assert tables.mean_ci(3 * 1024**2, None, "bytes") == "3.00"  # bytes in MiB, no CI for one trial
    assert tables.percent_change(-0.125) == "-12.5%"


# --- CLI --------------------------------------------------------------------------------------------------------


def _sql(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["sql", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_help_lists_the_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "sql" in out and "Query the metric rows" in out
    assert cli.main(["no-such-command"]) == 2
    assert cli.main(["sql", "--help"]) == 0
    assert "--format" in capsys.readouterr().out


def test_cli_sql_table(module_root, capsys):
    code, out, err = _sql(capsys, "SELECT rank, cell, quality_value FROM leaderboard_pretrain", "--rows",
                          _glob(module_root))
    assert code == 0, err
    assert out.index("mqa") < out.index("mha") < out.index("gqa") < out.index("moe")
    assert "quality_value" in out and "19.5" in out and "(4 rows)" in out


def test_cli_sql_csv(module_root, capsys):
    code, out, err = _sql(capsys, "SELECT rank, cell, al_s_vs_mha, energy_source FROM leaderboard_pretrain",
                          "--rows", _glob(module_root), "--format", "csv")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["rank", "cell", "al_s_vs_mha", "energy_source"]
    assert [r[1] for r in rows[1:]] == ["mqa", "mha", "gqa", "moe"]
    assert float(rows[3][2]) == pytest.approx(0.75)


def test_cli_sql_json(module_root, capsys):
    query = ("SELECT cell, n_params, al_s, timestamp_utc, latency_samples_s, extra, error FROM latest "
             "WHERE cell IN ('mha', 'nsa') ORDER BY cell")
    code, out, err = _sql(capsys, query, "--rows", _glob(module_root), "--format", "json")
    assert code == 0, err
    mha, nsa = json.loads(out)
    assert mha == {"cell": "mha", "n_params": 1_000_000, "al_s": 0.2, "timestamp_utc": "2025-05-20T10:00:00",
                   "latency_samples_s": [0.19, 0.2, 0.21], "extra": {"heads": 8}, "error": None}
    assert nsa["al_s"] is None and nsa["error"] == TRACEBACK


def test_cli_sql_default_rows_glob_is_relative_to_cwd(module_root, capsys, monkeypatch):
    monkeypatch.chdir(module_root)
    code, out, err = _sql(capsys, "SELECT count(*) AS n FROM rows", "--format", "json")
    assert code == 0, err
    assert json.loads(out) == [{"n": 8}]  # results/**/row.json only, not archive/


@pytest.mark.parametrize(
    "query",
    [
        "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
        "FROM failures",
        "DESCRIBE rows",
        "SHOW TABLES",
        "SUMMARIZE pretrain",
        "PRAGMA table_info('rows')",
        "EXPLAIN SELECT * FROM latest",
    ],
)
def test_sql_allows_reads(read_only_con, query):
    views.execute_read(read_only_con, query).fetchall()


def test_cli_sql_allows_a_read(rows_root, capsys):
    code, out, err = _sql(capsys, "SHOW TABLES", "--rows", _glob(rows_root), "--format", "csv")
    assert code == 0, err
    assert {"rows", "revisions", "assumptions", "scores", "leaderboard_quantize"} <= set(out.split())


@pytest.mark.parametrize(
    "query",
    [
        "COPY (SELECT * FROM rows) TO '{tmp}/out.csv'",
        "CREATE TABLE t AS SELECT 1 AS a",
        "INSERT INTO rows (axis, status) VALUES ('pretrain', 'ok')",
        "ATTACH '{tmp}/other.db' AS other",
        "INSTALL httpfs",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1 AS a",  # ANALYZE runs the statement
        "SELECT 1; DROP VIEW latest",
        "SET threads = 1",
        "PRAGMA threads = 1",
        "EXPORT DATABASE '{tmp}/dump'",
    ],
)
def test_sql_refuses_writes(read_only_con, module_root, query):
    before = sorted(module_root.rglob("*"))
    with pytest.raises(views.ReadOnlyError, match="^read-only database: refusing"):
        views.execute_read(read_only_con, query.format(tmp=module_root))
    assert sorted(module_root.rglob("*")) == before  # no file created
    assert read_only_con.execute("SELECT count(*) FROM latest").fetchone() == (8,)  # still there, unchanged


def test_cli_sql_refuses_a_write_in_one_line(rows_root, capsys):
    before = sorted(rows_root.rglob("*"))
    code, out, err = _sql(capsys, f"COPY (SELECT * FROM rows) TO '{rows_root}/out.csv'", "--rows", _glob(rows_root))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("efficientllm sql: error: read-only database: refusing")
    assert sorted(rows_root.rglob("*")) == before  # no file created


def test_cli_sql_bad_sql_is_one_line(module_root, capsys):
    code, out, err = _sql(capsys, "SELEC cell FROM rows", "--rows", _glob(module_root))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Parser Error" in err and "Traceback" not in err
    code, out, err = _sql(capsys, "SELECT no_such_column FROM rows", "--rows", _glob(module_root))
    assert code == 2 and err.count("\n") == 1 and "no_such_column" in err


def test_cli_sql_names_a_corrupt_row_file(rows_root, capsys):
    bad = rows_root / "results" / "pretrain" / "broken" / "row.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"axis": "pretrain", "status": "ok", "al_s": ')
    code, out, err = _sql(capsys, "SELECT 1", "--rows", _glob(rows_root))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err

    bad.write_text('{"axis": "pretrain", "status": "ok", "n_params": "many"}')
    code, _, err = _sql(capsys, "SELECT 1", "--rows", _glob(rows_root))
    assert code == 2 and str(bad) in err and "n_params" in err


def test_estimated_energy_is_marked_next_to_the_number(tmp_path):
    """An energy estimate (no NVML / RAPL) is marked `est.` in the tables; a meter reading is not."""
    rows = tmp_path / "rows"
    _write(rows, "results/pretrain/mha", cell="mha", technique="mha", quality_value=20.0, al_s=0.2, aec_w=8.0,
           energy_source="estimate")
    _write(rows, "results/pretrain/mqa", cell="mqa", technique="mqa", quality_value=21.0, al_s=0.2, aec_w=7.0,
           energy_source="rapl")
    md = build.build_report(_glob(rows), tmp_path / "reports")["index"].read_text()
    table = {line.split(" | ")[1]: line for line in md.splitlines() if line.startswith("| ") and " | m" in line}
    assert "8.00 est." in table["mha"] and "est." not in table["mqa"], table


def test_rows_that_break_a_sanity_bound_are_listed_and_marked(tmp_path):
    rows = tmp_path / "rows"
    bad = {"ok": False, "violations": ["mfu: 1.2 > 1"], "checks": {"mfu": {"value": 1.2, "bound": 1.0, "ok": False}}}
    _write(rows, "results/pretrain/mha", cell="mha", technique="mha", quality_value=20.0, al_s=0.2, mfu=1.2,
           extra={"sanity": bad})
    _write(rows, "results/pretrain/mqa", cell="mqa", technique="mqa", quality_value=21.0, al_s=0.2,
           extra={"sanity": {"ok": True, "violations": [], "checks": {}}})
    md = build.build_report(_glob(rows), tmp_path / "reports")["index"].read_text()
    assert "- **pretrain/mha**: mfu: 1.2 > 1" in md
    table = [line for line in md.splitlines() if line.startswith("| ") and " | m" in line]
    assert any("| mha ⚠ |" in line for line in table) and not any("| mqa ⚠ |" in line for line in table)
