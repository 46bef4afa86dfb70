"""The row schema: write_row validates and writes atomically, and rows read back through DuckDB fully typed.

    python -m pytest tests/test_records.py -q
"""

from __future__ import annotations

import json
import math
from datetime import datetime

import pytest

from efficientllm import records
from efficientllm.report import views


def _minimal(**fields):
    return {"axis": "pretrain", "stage": "pretrain", "cell": "mha", "status": "ok", **fields}


# --- write_row ------------------------------------------------------------------------------------------------


def test_write_row_writes_one_complete_json_line_and_no_temp_files(tmp_path):
    path = records.write_row(tmp_path / "results" / "pretrain" / "mha" / "row.json", _minimal(al_s=0.25))

    assert [p.name for p in path.parent.iterdir()] == ["row.json"]  # no .row.json.*.tmp left behind
    text = path.read_text()
    assert text.count("\n") == 1 and text.endswith("\n")
    row = json.loads(text)
    assert list(row) == list(records.COLUMNS)  # every column, in schema order, missing ones null
    assert row["schema_version"] == records.SCHEMA_VERSION
    assert row["al_s"] == 0.25 and row["quality_value"] is None


def test_write_row_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = records.write_row(tmp_path / "row.json", _minimal(al_s=1.0))

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(records.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        records.write_row(path, _minimal(al_s=2.0))
    assert [p.name for p in tmp_path.iterdir()] == ["row.json"]
    assert json.loads(path.read_text())["al_s"] == 1.0


def test_unknown_column_raises_naming_it(tmp_path):
    with pytest.raises(records.RowError, match="latency_ms"):
        records.write_row(tmp_path / "row.json", _minimal(latency_ms=3.0))
    assert not (tmp_path / "row.json").exists()


def test_nan_and_inf_become_null(tmp_path):
    path = records.write_row(
        tmp_path / "row.json",
        _minimal(
            mfu=float("nan"),
            aec_w=float("inf"),
            energy_j=-math.inf,
            latency_samples_s=[0.1, float("nan"), 0.3],
            extra={"ratio": float("nan"), "nested": [float("inf"), 1.0]},
        ),
    )
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    row = json.loads(text)
    assert row["mfu"] is None and row["aec_w"] is None and row["energy_j"] is None
    assert row["latency_samples_s"] == [0.1, None, 0.3]
    assert row["extra"] == {"ratio": None, "nested": [None, 1.0]}


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("n_params", "many"),  # BIGINT
        ("batch_size", 1.5),  # INTEGER: a non-integral float
        ("trial", True),  # INTEGER: a bool is not a count
        ("al_s", "fast"),  # DOUBLE
        ("latency_samples_s", [0.1, "slow"]),  # DOUBLE[]
        ("extra", [1, 2]),  # JSON must be an object
    ],
)
def test_wrong_type_raises_naming_the_column(tmp_path, column, value):
    with pytest.raises(records.RowError, match=column):
        records.write_row(tmp_path / "row.json", _minimal(**{column: value}))


def test_status_and_axis_are_checked(tmp_path):
    with pytest.raises(records.RowError, match="status"):
        records.make_row(**_minimal(status="crashed"))
    with pytest.raises(records.RowError, match="axis"):
        records.make_row(status="ok")


def test_read_row_names_a_corrupt_file(tmp_path):
    bad = tmp_path / "results" / "pretrain" / "gqa" / "row.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"axis": "pretrain", "status": ')
    with pytest.raises(records.RowError, match="gqa/row.json"):
        records.read_row(bad)


# --- DuckDB round trip ----------------------------------------------------------------------------------------


def test_rows_round_trip_through_duckdb_typed(tmp_path):
    first = records.write_row(
        tmp_path / "a" / "row.json",
        _minimal(
            run_id="r1",
            trial=0,
            n_params=123_456_789_012,  # needs BIGINT
            al_s=0.5,
            latency_samples_s=[0.25, 0.5, 0.75],
            extra={"heads": 8, "note": "x"},
            git_dirty=True,
            timestamp_utc="2025-05-20T14:00:00+02:00",  # 12:00 UTC
        ),
    )
    second = records.write_row(
        tmp_path / "b" / "row.json",
        _minimal(cell="gqa", run_id="r2", status="failed", error="boom", timestamp_utc="2025-05-20T12:30:00Z"),
    )

    con = views.connect([first, second])
    described = {name: sql_type for name, sql_type, *_ in con.execute("DESCRIBE rows").fetchall()}
    # the schema's columns in order, then where each row came from: its revision and its file
    assert list(described) == [*records.COLUMNS, "rev", "row_file"]
    assert described == {**records.duckdb_columns(), "rev": "VARCHAR", "row_file": "VARCHAR"}
    assert con.execute("SELECT rev, row_file FROM rows ORDER BY run_id").fetchall() == [
        ("workspace", str(first)), ("workspace", str(second))
    ]

    # peft_version and mcr_nominal are null in every row, yet keep their types
    assert con.execute("SELECT typeof(peft_version), typeof(mcr_nominal) FROM rows LIMIT 1").fetchone() == (
        "VARCHAR",
        "DOUBLE",
    )
    all_null = con.execute("SELECT count(*) FROM rows WHERE peft_version IS NULL AND mcr_nominal IS NULL").fetchone()
    assert all_null == (2,)

    got = con.execute(
        "SELECT n_params, al_s, list_sum(latency_samples_s), len(latency_samples_s), extra->>'$.note', "
        "CAST(extra->'$.heads' AS INTEGER), git_dirty, timestamp_utc FROM rows WHERE run_id = 'r1'"
    ).fetchone()
    assert got == (123_456_789_012, 0.5, 1.5, 3, "x", 8, True, datetime(2025, 5, 20, 12, 0))

    got = con.execute("SELECT status, error, latency_samples_s, extra, timestamp_utc FROM rows WHERE run_id = 'r2'")
    assert got.fetchone() == ("failed", "boom", None, None, datetime(2025, 5, 20, 12, 30))


def test_zero_row_files_give_an_empty_typed_table(tmp_path):
    con = views.connect(str(tmp_path / "results" / "*" / "*" / "row.json"))
    assert con.execute("SELECT count(*) FROM rows").fetchone() == (0,)
    names = [name for name, *_ in con.execute("DESCRIBE rows").fetchall()]
    assert names == [*records.COLUMNS, "rev", "row_file"]
    for view in ("latest", "measured", "pretrain", "finetune", "quantize", "failures", "scores", "pareto",
                 "leaderboard_pretrain", "leaderboard_finetune", "leaderboard_quantize", "revision_diff"):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchone() == (0,), view


def test_error_field_keeps_the_first_line_and_the_end_of_a_long_detail():
    from efficientllm.records import ERROR_MAX_CHARS, error_field

    text = error_field("CellError: out of memory", "x" * 10_000 + "last line")
    assert text.startswith("CellError: out of memory\n") and text.endswith("last line")
    assert len(text) == ERROR_MAX_CHARS
    assert error_field("short", "tail") == "short\ntail" and error_field("alone") == "alone"
