"""Build the report folder from the metric rows: a Markdown summary plus CSV / Parquet exports.

`build_report` reads the rows through the same DuckDB views users query (`report.views`), so the numbers
in `index.md` are exactly what `efficientllm sql "SELECT * FROM leaderboard_pretrain"` returns. It writes

- `index.md`: what was measured, the pretraining leaderboard, the failed / skipped cells, a metric legend;
- `leaderboard_pretrain.csv`: the leaderboard view, full precision;
- `rows.csv`: every row (all runs, not only the latest), without the raw latency samples;
- `rows.parquet`: every row with every column, typed.

Each file is written to a temp file in `out_dir` and renamed into place. The report holds no wall-clock
time (it says how new its newest row is), so the same rows always build the same files.

    python -c "from efficientllm.report.build import build_report as b; print(b('results/*/*/row.json', 'reports'))"
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from efficientllm import records
from efficientllm.report import views

_MIB = 1024.0**2


def _number(value: float | None) -> str:
    """About three significant digits, plain notation from 0.001 to millions, scientific outside."""
    if value is None or not math.isfinite(value):
        return "—"
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 1e7 or magnitude < 1e-3:
        return f"{value:.2e}"
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _scaled(divisor: float) -> Callable[[Any], str]:
    return lambda v: _number(None if v is None else v / divisor)


def _percent(value: float | None) -> str:
    return "—" if value is None else _number(100.0 * value)


def _ratio(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.2f}×"


def _text(value: Any) -> str:
    return "—" if value is None or value == "" else str(value)


# (leaderboard_pretrain column, Markdown header with its unit, formatter); the quality header is set per report.
LEADERBOARD_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("rank", "rank", _text),
    ("cell", "cell", _text),
    ("n_trials", "trials", _text),
    ("n_params", "params (M)", _scaled(1e6)),
    ("quality_value", "quality", _number),
    ("amu_bytes", "AMU (MiB)", _scaled(_MIB)),
    ("amu_ratio", "AMU (%)", _percent),
    ("pcu_ratio", "PCU (%)", _percent),
    ("mfu", "MFU (%)", _percent),
    ("al_s", "AL (ms/step)", _scaled(1e-3)),
    ("latency_s_p50", "p50 (ms)", _scaled(1e-3)),
    ("latency_s_p90", "p90 (ms)", _scaled(1e-3)),
    ("latency_s_p99", "p99 (ms)", _scaled(1e-3)),
    ("tt_tokens_per_param_s", "TT (tok/param/s)", _number),
    ("tokens_per_s", "throughput (tok/s)", _number),
    ("aec_w", "AEC (W)", _number),
    ("energy_source", "energy source", _text),
    ("peak_mem_bytes", "peak mem (MiB)", _scaled(_MIB)),
    ("kv_cache_bytes_per_token", "KV cache (KiB/tok)", _scaled(1024.0)),
    ("amu_bytes_vs_mha", "AMU ÷ mha", _ratio),
    ("al_s_vs_mha", "AL ÷ mha", _ratio),
    ("tokens_per_s_vs_mha", "throughput ÷ mha", _ratio),
    ("tokens_per_j_vs_mha", "tok/J ÷ mha", _ratio),
)

LEGEND = """\
- **quality**: validation perplexity of the pretrained model (lower is better); the leaderboard is ranked by it.
- **AMU**: average memory utilisation, the mean memory in use over the measured window, as bytes and as a share
  of the device's memory (paper §5.1).
- **PCU**: peak compute utilisation, the mean device utilisation over the window (NVML on GPU, CPU time / wall
  time / threads on CPU). **MFU**: achieved FLOP/s ÷ the device's measured peak FLOP/s, the honest compute figure.
- **AL**: average latency, mean seconds per training step; **p50 / p90 / p99** are percentiles of the step times.
- **TT**: training throughput, tokens ÷ parameters ÷ seconds (paper §5.1); **throughput** is plain tokens/s.
- **AEC**: average energy consumption, joules ÷ seconds over the window, i.e. mean power in watts; **energy
  source** says where the joules came from (`nvml`, `rapl`, or `estimate`).
- **peak mem**: highest memory in the window; **KV cache**: cache bytes per token over all layers at the model
  dtype (what the attention variant saves at inference).
- **÷ mha**: the cell's value divided by the `mha` (multi-head attention) baseline: below 1 for AMU and AL is
  better, above 1 for throughput and tokens per joule is better.
"""


_TEXT_COLUMNS = frozenset({"cell", "energy_source"})


def _markdown_table(headers: list[str], body: list[list[str]], left: list[bool]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    align = [":---" if is_left else "---:" for is_left in left]
    return "\n".join([line(headers), "|" + "|".join(align) + "|", *(line(r) for r in body)])


def _records(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


def _summary(con: duckdb.DuckDBPyConnection, n_files: int) -> list[str]:
    n_rows, newest = con.execute("SELECT count(*), max(timestamp_utc) FROM rows").fetchone()
    counts = dict(con.execute("SELECT status, count(*) FROM latest GROUP BY status ORDER BY status").fetchall())
    axes = [a for (a,) in con.execute("SELECT DISTINCT axis FROM latest ORDER BY axis").fetchall()]
    devices = [d for (d,) in con.execute("SELECT DISTINCT device_name FROM latest WHERE device_name IS NOT NULL "
                                         "ORDER BY 1").fetchall()]
    shas = [s for (s,) in con.execute("SELECT DISTINCT git_sha FROM latest WHERE git_sha IS NOT NULL "
                                      "ORDER BY 1").fetchall()]
    n_cells = sum(counts.values())
    status_text = ", ".join(f"{counts[s]} {s}" for s in records.STATUSES if s in counts)
    if not n_rows:
        return ["No rows yet: no measured cell has written a row file."]
    lines = [
        f"Built from {n_files} row file{'s' if n_files != 1 else ''} holding {n_rows} row{'s' if n_rows != 1 else ''}"
        f" of {n_cells} measured cell{'s' if n_cells != 1 else ''}; latest row of each cell: {status_text}.",
    ]
    if axes:
        lines.append(f"Axes: {', '.join(axes)}.")
    if isinstance(newest, datetime):
        lines.append(f"Newest row: {newest.isoformat(sep=' ', timespec='seconds')} UTC.")
    if devices:
        lines.append(f"Devices: {', '.join(devices)}.")
    if shas:
        lines.append(f"Code: git {', '.join(s[:12] for s in shas)}.")
    return lines


def _leaderboard_section(con: duckdb.DuckDBPyConnection) -> list[str]:
    board = _records(con, "SELECT * FROM leaderboard_pretrain")
    out = ["## Pretraining leaderboard", ""]
    if not board:
        out += ["No successful pretraining cells yet.", ""]
        return out
    metrics = sorted({r["quality_metric"] for r in board if r["quality_metric"]})
    quality_header = f"quality ({', '.join(metrics)})" if metrics else "quality"
    stages = sorted({r["stage"] or "" for r in board})
    has_baseline = any(r["cell"] == "mha" for r in board)
    out.append(
        "Cells ranked by validation quality (lower perplexity is better); trials of a cell are averaged. "
        + ("Ratios are to the `mha` baseline of the same stage." if has_baseline
           else "No `mha` baseline cell succeeded, so the ratio columns are empty.")
    )
    out.append("")
    for stage in stages:
        if len(stages) > 1:
            out += [f"### Stage `{stage or '(none)'}`", ""]
        headers = [quality_header if col == "quality_value" else header for col, header, _ in LEADERBOARD_COLUMNS]
        body = [
            [fmt(r[col]) for col, _, fmt in LEADERBOARD_COLUMNS]
            for r in board
            if (r["stage"] or "") == stage
        ]
        left = [col in _TEXT_COLUMNS for col, _, _ in LEADERBOARD_COLUMNS]
        out += [_markdown_table(headers, body, left), ""]
    return out


def _failures_section(con: duckdb.DuckDBPyConnection) -> list[str]:
    failures = _records(con, "SELECT * FROM failures")
    out = ["## Failures", ""]
    if not failures:
        return out + ["No failed or skipped cells.", ""]
    for f in failures:
        where = "/".join(x for x in (f["stage"] or f["axis"], f["cell"]) if x)
        trial = f" (trial {f['trial']})" if f["trial"] else ""
        reason = (f["error_summary"] or "no error recorded").replace("`", "'")
        out.append(f"- **{where}**{trial}: {f['status']}: `{reason}`")
    out += ["", "Full errors: `efficientllm sql \"SELECT stage, cell, error FROM failures\"`.", ""]
    return out


def render_markdown(con: duckdb.DuckDBPyConnection, n_files: int, title: str = "efficientllm report") -> str:
    """The text of index.md for the rows and views held by `con`."""
    lines = [f"# {title}", ""]
    lines += _summary(con, n_files)
    lines += [
        "",
        'Every number below is a row in DuckDB: `efficientllm sql "SELECT * FROM leaderboard_pretrain"`. '
        "Next to this file: `leaderboard_pretrain.csv`, `rows.csv` (every row, no latency samples), "
        "`rows.parquet` (every row and column).",
        "",
    ]
    lines += _leaderboard_section(con)
    lines += _failures_section(con)
    lines += ["## What the metrics mean", "", LEGEND]
    return "\n".join(lines).rstrip() + "\n"


def _copy_atomic(con: duckdb.DuckDBPyConnection, select_sql: str, path: Path, options: str) -> None:
    """DuckDB COPY of a query into a temp file next to `path`, then a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        target = tmp.replace("'", "''")
        con.execute(f"COPY ({select_sql}) TO '{target}' ({options})")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_ROW_ORDER = "ORDER BY axis, stage, cell, trial, timestamp_utc, run_id"


def build_report(row_files: views.RowFiles, out_dir: str | os.PathLike,
                 title: str = "efficientllm report") -> dict[str, Path]:
    """Write index.md, leaderboard_pretrain.csv, rows.csv and rows.parquet into `out_dir`; returns their paths.

    `row_files` is a list of row files or a glob pattern, as for `views.connect`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = views.find_row_files(row_files)
    paths = {
        "index": out / "index.md",
        "leaderboard_pretrain": out / "leaderboard_pretrain.csv",
        "rows_csv": out / "rows.csv",
        "rows_parquet": out / "rows.parquet",
    }
    con = views.connect(files, read_only=False)  # COPY needs file access; no user SQL runs here
    try:
        _copy_atomic(con, "SELECT * FROM leaderboard_pretrain", paths["leaderboard_pretrain"], "FORMAT csv, HEADER")
        _copy_atomic(con, f"SELECT * EXCLUDE (latency_samples_s) FROM rows {_ROW_ORDER}", paths["rows_csv"],
                     "FORMAT csv, HEADER")
        _copy_atomic(con, f"SELECT * FROM rows {_ROW_ORDER}", paths["rows_parquet"], "FORMAT parquet")
        records.atomic_write_text(paths["index"], render_markdown(con, len(files), title))
    finally:
        con.close()
    return paths
