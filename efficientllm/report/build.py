"""Build the report folder from the metric rows: index.md, one page per axis, figures, CSV / Parquet exports.

`build_report` reads the rows through the same DuckDB views users query (`report.views`), so every number in
the Markdown is what `efficientllm sql` returns. It writes, into `out_dir`:

- `index.md`: what was measured; the paper's claims checked against our numbers (`report.claims`); per axis
  and board a compact leaderboard (mean ± 95% CI, ratios to the baseline, ≈ where the test of the cell
  against the baseline finds no significant difference: `_with_evidence`) and its Pareto plot; failed /
  skipped cells; the cost and CO2 assumptions;
  what the metrics mean;
- `pretrain.md`, `finetune.md`, `quantize.md` (axes with rows): every metric with its rank, the paper's
  normalised scores and the ratios to the baseline, and every figure of the axis;
- `figures/*.png` (`report.plots`): Pareto fronts, radars, latency box plots, loss curves;
- `leaderboard_<axis>.csv` (the views), `scores.csv` (the long form), `claims.csv`, `rows.csv` (every row,
  all runs, without the raw latency samples) and `rows.parquet` (every row and column, typed).

Each file is written to a temp file in `out_dir` and renamed into place. The report holds no wall-clock
time (it says how new its newest row is) and the figures carry no version stamp, so the same rows always
build the same files.

    python -m stages.report   # what `dvc repro report` runs
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from efficientllm import records
from efficientllm.report import claims, evidence, plots, tables, views

AXES: tuple[tuple[str, str], ...] = (
    ("pretrain", "Architecture pretraining"),
    ("finetune", "Fine-tuning"),
    ("quantize", "Quantization / inference"),
    ("pretrain_vision", "Vision: DiT pretraining (attention and FFN variants)"),
    ("finetune_vision", "Vision: PEFT on the DiT (held-out classes) and VLMs"),
)

INDEX_METRICS: dict[str, tuple[str, ...]] = {
    "pretrain": ("quality", "peak_mem_bytes", "al_s", "tt_tokens_per_param_s", "aec_w", "energy_j_per_token",
                 "cost_usd_per_mtok", "co2_g_per_mtok"),
    "finetune": ("quality", "peak_mem_bytes", "al_s", "st_samples_per_param_s", "aec_w", "energy_j_per_token",
                 "cost_usd_per_mtok", "co2_g_per_mtok"),
    "quantize": ("quality", "model_size_bytes", "peak_mem_bytes", "al_s", "it_tokens_per_s", "tpot_s_p50",
                 "mcr_nominal", "energy_j_per_token", "cost_usd_per_mtok", "co2_g_per_mtok"),
    # the vision axis: a token is an image patch (images/s and J per image are in the rows' extra)
    "pretrain_vision": ("quality", "peak_mem_bytes", "al_s", "tt_tokens_per_param_s", "kv_cache_bytes_per_token",
                        "aec_w", "energy_j_per_token"),
    "finetune_vision": ("quality", "peak_mem_bytes", "al_s", "st_samples_per_param_s", "aec_w", "energy_j_per_token"),
}
"""The metrics of each axis's compact leaderboard in index.md (axis pages show every metric of the catalog)."""

RATIO_METRICS = ("quality", "peak_mem_bytes", "al_s")
"""Ratios to the baseline shown in index.md."""

BASELINES = {axis: board.baseline for axis, board in views.LEADERBOARDS.items()}

VERDICT_TEXT = {claims.AGREES: "**agrees**", claims.DISAGREES: "**disagrees**",
                claims.NOT_DISTINGUISHABLE: "not distinguishable",
                claims.NOT_MEASURABLE: "not measurable at this scale"}

LEGEND = """\
- **quality**: validation perplexity (pretraining, lower is better), held-out eval loss (fine-tuning, lower is
  better), or the quantized model's task score (higher is better) / perplexity; the leaderboards rank by it.
- **AMU**: average memory utilisation, the mean memory in use over the measured window (paper §5.1); **peak
  memory**: the highest memory in the window (what must fit on the device).
- **PCU**: mean compute utilisation over the window (NVML on GPU, CPU time / wall time / threads on CPU);
  **MFU**: achieved FLOP/s ÷ the device's measured peak FLOP/s.
- **AL**: average latency, mean seconds per training step (pretraining, fine-tuning) or per generate request
  (inference); p50 / p99 are percentiles of the same samples, whose box plots are in the figures.
- **TT / ST / IT**: the paper's throughputs: tokens / parameter / s (pretraining), samples / parameter / s
  (fine-tuning), generated tokens / s (inference). **TPOT**: median time per output token.
- **AEC**: average energy consumption, joules ÷ seconds over the window (mean power, W); **energy per token**:
  joules per processed token. The energy source of each cell (`nvml`, `rapl` or `estimate`) is in the CSVs;
  an estimate (CPU time × watts per core: a rescaled PCU, not a measurement) is marked `est.` next to the number
  and in every figure, and no energy claim is judged on it.
- **model memory**: what the memory claims compare: the allocator's peak on a GPU, the counted tensors on a CPU
  (weights + gradients + optimizer state + saved activations + KV cache: the memory anatomy), whose process
  RSS is mostly the runtime's libraries. **peak memory** on a CPU is the RSS above the process before the model
  was built (`rss_delta`).
- **MCR**: model compression rate = (size of bf16 ÷ size) × (quality ÷ quality of bf16), from nominal bits per
  weight; the measured-bytes MCR is on the quantize page.
- **cost / CO2 per million tokens**: from the USER-SET price per device-hour and grid intensity (see
  Assumptions), not measured.
- **mean ± x**: mean ± the half-width of its 95% confidence interval: Student's t over trials; with one trial, a
  bootstrap over the cell's evaluated examples (quality) or over blocks of its step times (AL); no interval where
  none of these exists. **≈** after a ratio: the test of the cell against the baseline (paired bootstrap over the
  shared examples, Welch over trials, or, with one trial, the difference against this machine's measured noise
  floor; `efficientllm compare --cells`) finds no significant difference at 95 %; **?**: no test is possible (e.g.
  one trial and no noise floor); no mark: the difference is significant.
- **normalised score** (axis pages, radars): the paper's min-max score (appendix eqs. 10-11) into [0.1, 1] per
  metric within a board, 1 = best, flipped for lower-is-better metrics.
"""


# --- formatting -----------------------------------------------------------------------------------------------


def _quality_header(cells: list[dict[str, Any]]) -> str:
    names = sorted({c["quality_metric"] for c in cells if c.get("quality_metric")})
    return f"quality ({', '.join(names)})" if names else "quality"


def _metric_header(row: dict[str, Any]) -> str:
    return tables.header(row["label"], row["unit"] or "")


def _value(row: dict[str, Any] | None, with_rank: bool = False) -> str:
    if row is None or row["mean"] is None:
        return "—"
    text = tables.mean_ci(row["mean"], row["ci95"], row["unit"] or "")
    if row.get("energy_estimated") and row["metric"] in claims.ENERGY_METRICS:
        text += " est."  # an estimate, not a meter reading: marked next to the number
    return f"{text} ({row['rank']})" if with_rank and row["rank"] is not None else text


def _ratio(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    text = tables.ratio(row["vs_baseline"])
    if row["vs_baseline"] is None or row.get("is_baseline"):
        return text
    tested = row.get("baseline_test")  # `_with_evidence`: True significant, False not, None no test
    return text + (" ≈" if tested is False else " ?" if tested is None else "")


def _with_evidence(con: duckdb.DuckDBPyConnection, boards: dict) -> None:
    """Put the evidence behind the shown numbers into the score rows of `boards` (in place): a cell's own 95 %
    interval where its trials give none (`Evidence.cell_interval`: the bootstrap over its examples for quality, over
    blocks of its step samples for AL; shown as the larger half-width), and `baseline_test`, whether the test of the
    cell against its board's baseline cell (`Evidence.compare`) is significant at 95 % (None: no test possible)."""
    ev = evidence.Evidence(con)
    for (_axis, stage, _board), cells in boards.items():
        base = next((c for c, metrics in cells.items() if any(r.get("is_baseline") for r in metrics.values())), None)
        for cell, metrics in cells.items():
            for metric, row in metrics.items():
                if row["mean"] is None:
                    continue
                if row["ci95"] is None:
                    interval = ev.cell_interval(row["rev"], stage, cell, metric)
                    if interval is not None:
                        row["ci95"] = max(row["mean"] - interval[0], interval[1] - row["mean"], 0.0)
                if base is not None and cell != base:
                    test = ev.compare(row["rev"], stage, cell, base, metric)
                    row["baseline_test"] = None if test.p is None else test.significant


def _board_heading(level: str, axis: str, stage: str, board: str) -> str:
    parts = [stage if stage != axis else "", board]
    label = " · ".join(p for p in parts if p)
    return f"{level} {label}" if label else ""


# --- sections -------------------------------------------------------------------------------------------------


def _summary(con: duckdb.DuckDBPyConnection, n_files: int) -> list[str]:
    n_rows, newest = con.execute("SELECT count(*), max(timestamp_utc) FROM rows").fetchone()
    if not n_rows:
        return ["No rows yet: no measured cell has written a row file."]
    counts = dict(con.execute("SELECT status, count(*) FROM latest GROUP BY status ORDER BY status").fetchall())
    axes = [a for (a,) in con.execute("SELECT DISTINCT axis FROM latest ORDER BY axis").fetchall()]
    devices = [d for (d,) in con.execute("SELECT DISTINCT device_name FROM latest WHERE device_name IS NOT NULL "
                                         "ORDER BY 1").fetchall()]
    shas = [s for (s,) in con.execute("SELECT DISTINCT git_sha FROM latest WHERE git_sha IS NOT NULL "
                                      "ORDER BY 1").fetchall()]
    n_cells = sum(counts.values())
    status_text = ", ".join(f"{counts[s]} {s}" for s in records.STATUSES if s in counts)
    lines = [
        f"Built from {n_files} row file{'s' if n_files != 1 else ''} holding {n_rows} row{'s' if n_rows != 1 else ''}"
        f" of {n_cells} measured cell{'s' if n_cells != 1 else ''} (cell × trial); latest row of each: "
        f"{status_text}.",
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


def _claims_section(results: Sequence[claims.ClaimResult]) -> list[str]:
    out = ["## The paper's claims, checked", "",
           "Each finding of the EfficientLLM study (arXiv 2505.13840) that this benchmark can test, our numbers, and "
           "a verdict. *agrees* / *disagrees*: the measured order matches / contradicts the paper's, and the "
           "difference it rests on is significant at 95% after Holm's correction over this report's tested claims "
           "(a paired bootstrap over the examples for quality, Welch's test over trials, the machine's noise floor "
           "for a one-trial timing, exact for counted bytes); *not distinguishable*: it is not; *not measurable at "
           "this scale*: a cell is missing or failed, or the quantity cannot be measured here. The evidence column "
           "gives the test, n, the difference with its 95% CI and p. The checks are data: a rule each in "
           "`efficientllm/report/claims.py`, over a query in `efficientllm/report/sql/claims/`. Full table: "
           "`claims.csv`.", ""]
    body = []
    for r in results:
        where = " · ".join(p for p in (r.stage if r.stage != r.axis else "", r.board) if p)
        body.append([r.finding + (f" ({where})" if where else ""), r.measured, VERDICT_TEXT.get(r.verdict, r.verdict),
                     r.why, r.evidence.replace("|", "/") + (f" (Holm p={r.p_holm:.3f})" if r.p_holm is not None
                                                           else "")])
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICT_TEXT}
    out += [tables.markdown_table(["finding (paper)", "measured here", "verdict", "why", "evidence"], body,
                                  [True, True, True, True, True]), "",
            "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".", ""]
    return out


def _group(score_rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, dict[str, dict[str, Any]]]]:
    """(axis, stage, board) -> cell -> metric -> scores row."""
    out: dict[tuple[str, str, str], dict[str, dict[str, dict[str, Any]]]] = {}
    for r in score_rows:
        out.setdefault((r["axis"], r["stage"], r["board"]), {}).setdefault(r["cell"], {})[r["metric"]] = r
    return out


def _by_quality(cells: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    def key(cell: str) -> tuple:
        quality = cells[cell].get("quality")
        return (quality["rank"] if quality else 10**6, cell)

    return sorted(cells, key=key)


def _catalog(con: duckdb.DuckDBPyConnection) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in tables.records(con, "SELECT * FROM metric_catalog ORDER BY axis, position"):
        out.setdefault(row["axis"], []).append(row)
    return out


def _figure_links(figures: list[plots.FigureFile], key: tuple[str, str, str], out_dir: Path,
                  skip: tuple[str, ...] = ()) -> str:
    mine = [f for f in figures if (f.axis, f.stage, f.board) == key and f.kind not in skip]
    return " · ".join(f"[{f.title}]({f.path.relative_to(out_dir).as_posix()})" for f in mine)


def _figure(figures: list[plots.FigureFile], key: tuple[str, str, str], kind: str, out_dir: Path) -> list[str]:
    for f in figures:
        if (f.axis, f.stage, f.board) == key and f.kind == kind:
            return [f"![{f.title}]({f.path.relative_to(out_dir).as_posix()})", ""]
    return []


def _index_axis_section(axis: str, title: str, boards: dict, catalog: dict, figures: list[plots.FigureFile],
                        out_dir: Path, failed_only: bool) -> list[str]:
    out = [f"## {title}", ""]
    if failed_only:
        return out + ["No successful cells on this axis yet (see Failures).", ""]
    baseline = BASELINES[axis]
    metric_rows = {m["metric"]: m for m in catalog.get(axis, [])}
    for key, cells in sorted(boards.items()):
        heading = _board_heading("###", *key)
        if heading:
            out += [heading, ""]
        order = _by_quality(cells)
        all_rows = [r for c in cells.values() for r in c.values()]
        quality_rows = [r for r in all_rows if r["metric"] == "quality"]
        headers = ["rank", "cell", "trials"]
        for m in INDEX_METRICS[axis]:
            headers.append(_quality_header(quality_rows) if m == "quality" else _metric_header(metric_rows[m]))
        headers += [f"{'quality' if m == 'quality' else metric_rows[m]['label']} ÷ {baseline}" for m in RATIO_METRICS]
        body = []
        for cell in order:
            metrics = cells[cell]
            quality = metrics.get("quality")
            n = max((r["n"] for r in metrics.values()), default=0)
            flag = " ⚠" if any(r.get("insane") for r in metrics.values()) else ""  # a sanity bound broken
            body.append([tables.text(quality["rank"] if quality else None), cell + flag, str(n),
                         *(_value(metrics.get(m)) for m in INDEX_METRICS[axis]),
                         *(_ratio(metrics.get(m)) for m in RATIO_METRICS)])
        out += [tables.markdown_table(headers, body, [False, True] + [False] * (len(headers) - 2)), ""]
        if not any(cells[c].get("quality", {}).get("is_baseline") for c in cells if "quality" in cells[c]):
            out += [f"No ok `{baseline}` baseline cell on this board: the ratio columns are empty.", ""]
        out += _figure(figures, key, "pareto", out_dir) + _figure(figures, key, "samples", out_dir)
        links = _figure_links(figures, key, out_dir, skip=("pareto", "samples"))
        if links:
            out += [f"More figures: {links}.", ""]
    out += [f"Every metric with its rank, normalised score and ratio: [{axis}.md]({axis}.md) · "
            f"`leaderboard_{axis}.csv` · `efficientllm sql \"SELECT * FROM leaderboard_{axis}\"`.", ""]
    return out


def _axis_page(axis: str, title: str, boards: dict, catalog: dict, figures: list[plots.FigureFile],
               out_dir: Path) -> str:
    baseline = BASELINES[axis]
    metrics = catalog.get(axis, [])
    radar = [m for m in metrics if m["radar"]]
    out = [f"# {title}", "", "[← report](index.md)", "",
           "Means over trials ± 95% CI (rank within the board in brackets; 1 = best), the paper's normalised "
           f"scores (eqs. 10-11: 1 = best of the board, 0.1 = worst) and ratios to the `{baseline}` baseline "
           "(≈: no significant difference from it at 95 %; ?: no test possible; see the legend of the report). "
           "Same numbers: `efficientllm sql \"SELECT * FROM scores WHERE axis = "
           f"'{axis}'\"`.", ""]
    for key, cells in sorted(boards.items()):
        heading = _board_heading("##", *key)
        if heading:
            out += [heading, ""]
        order = _by_quality(cells)
        quality_rows = [c["quality"] for c in cells.values() if "quality" in c]
        present = [m for m in metrics if any(m["metric"] in cells[c] for c in cells)]

        def head(m: dict[str, Any], rows: list[dict[str, Any]] = quality_rows, unit: bool = True) -> str:
            if m["metric"] == "quality":
                return _quality_header(rows)
            return _metric_header(m) if unit else m["label"]  # scores and ratios have no unit

        out += ["### Measured", ""]
        body = [[cell, *(_value(cells[cell].get(m["metric"]), with_rank=True) for m in present)] for cell in order]
        out += [tables.markdown_table(["cell", *(head(m) for m in present)], body), ""]
        out += ["### Normalised scores", ""]
        body = [[cell, *(tables.number((cells[cell].get(m["metric"]) or {}).get("normalized_score"))
                         for m in radar)] for cell in order]
        out += [tables.markdown_table(["cell", *(head(m, unit=False) for m in radar)], body), ""]
        out += [f"### ÷ {baseline}", ""]
        body = [[cell, *(_ratio(cells[cell].get(m["metric"])) for m in present)] for cell in order]
        out += [tables.markdown_table(["cell", *(head(m, unit=False) for m in present)], body), ""]
        for kind in plots.FIGURES:
            out += _figure(figures, key, kind, out_dir)
    return "\n".join(out).rstrip() + "\n"


def _failures_section(con: duckdb.DuckDBPyConnection) -> list[str]:
    failures = tables.records(con, "SELECT * FROM failures WHERE rev = 'workspace'")
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


def _sanity_section(con: duckdb.DuckDBPyConnection) -> list[str]:
    broken = tables.records(con, "SELECT stage, cell, trial, violations FROM sanity WHERE rev = 'workspace' AND NOT ok "
                                 "ORDER BY stage, cell, trial")
    out = ["## Sanity checks", "",
           "Every row's implied FLOP/s, MFU, PCU, decode bandwidth and power are checked against this machine's "
           "measured ceilings (efficientllm/measure/sanity.py)."]
    if not broken:
        return out + [" No row breaks a bound.", ""]
    out = [out[0], "", out[2] + " These rows break one (their cells carry ⚠ in the tables):", ""]
    for b in broken:
        trial = f" (trial {b['trial']})" if b["trial"] else ""
        out.append(f"- **{b['stage']}/{b['cell']}**{trial}: {'; '.join(json.loads(b['violations'] or '[]'))}")
    return out + [""]


def _assumptions_section(con: duckdb.DuckDBPyConnection) -> list[str]:
    a = tables.records(con, "SELECT * FROM assumptions")[0]
    sources = tables.records(con, "SELECT coalesce(energy_source, 'none') AS source, count(*) AS n FROM measured "
                                  "WHERE status = 'ok' GROUP BY 1 ORDER BY 1")
    price = "not set" if a["usd_per_device_hour"] is None else f"{tables.number(a['usd_per_device_hour'])} USD"
    grid = "not set" if a["grid_g_co2_per_kwh"] is None else f"{tables.number(a['grid_g_co2_per_kwh'])} gCO2/kWh"
    energy = ", ".join(f"{s['n']} {s['source']}" for s in sources) or "no ok rows"
    return ["## Assumptions behind cost and CO2", "",
            f"USER-SET, not measured ({a['source']}): price per device-hour {price}; grid carbon intensity {grid}. "
            "Cost per million tokens = price × devices ÷ 3600 × 10⁶ ÷ tokens per second; CO2 per million tokens = "
            "joules per token × 10⁶ ÷ 3.6·10⁶ (kWh) × grid intensity. Energy of the ok rows by source: "
            f"{energy}; `estimate` means no hardware energy counter was readable, so the CO2 figures built on it "
            "are estimates of estimates.", ""]


SWEEP_X_AXIS = {"attention": "context", "precision": "batch_size"}
"""The crossovers each map's report lines read: attention variants along context length (the KV cache grows with
it), precisions along batch size (decode turns from memory- to compute-bound); the rest are in `sweep_crossovers`."""


def _crossover_line(r: dict[str, Any]) -> str:
    """One report line for a row of `sweep_crossovers`."""
    x_name = "context" if r["x_axis"] == "context" else "batch"
    at = f"{'batch' if r['fixed_axis'] == 'batch_size' else 'context'} {r['fixed_value']}"
    ends = (f"TPOT {tables.ratio(r['tpot_ratio_at_x_min'])} the reference's at {x_name} {r['x_min']}, "
            f"{tables.ratio(r['tpot_ratio_at_x_max'])} at {r['x_max']}")
    ref, span = r["reference"], f"{x_name} ({r['x_min']}–{r['x_max']})"
    what = {
        "crosses": f"decodes faster than {ref} beyond {x_name} {r['last_slower_x']}: from {r['crossover_x']} on",
        "faster everywhere measured": f"decodes faster than {ref} at every measured {span}",
        "slower everywhere measured": f"decodes no faster than {ref} at any measured {span}: no crossover in range",
        "crosses back": f"decodes faster than {ref} up to {x_name} {r['faster_until_x']}, not at {r['x_max']}: the "
                        "crossing runs the other way",
    }.get(r["verdict"], f"no consistent crossover with {ref} (faster only between the ends of the measured {span})")
    return f"- **{r['map']} · {r['line']}** ({at}): {what}; {ends}."


def _sweep_table(con: duckdb.DuckDBPyConnection, map_name: str) -> list[str]:
    """A map's lines: TPOT at every context of the smallest batch, the KV cache per token (counted, and counted /
    analytic) and the largest batch in the budget at the longest context."""
    rows = tables.records(con, "SELECT line, context, batch_size, avg(tpot_s_p50) AS tpot, avg(ttft_s_p50) AS ttft, "
                               "avg(kv_cache_bytes_per_token) AS kv, avg(kv_cache_measured_vs_analytic) AS kv_ratio, "
                               "min(max_batch_in_budget) AS max_batch FROM sweep WHERE rev = 'workspace' AND map = ? "
                               "AND point_status = 'ok' GROUP BY ALL ORDER BY line, context, batch_size", [map_name])
    if not rows:
        return []
    batch = min(r["batch_size"] for r in rows)
    contexts = sorted({r["context"] for r in rows if r["batch_size"] == batch})
    headers = ["line", *(f"TPOT at {c} (ms)" for c in contexts), f"TTFT at {contexts[-1]} (ms)",
               "KV cache (KiB/token)", "counted ÷ analytic", f"largest batch in budget at {contexts[-1]}"]
    body = []
    for line in sorted({r["line"] for r in rows}):
        mine = {r["context"]: r for r in rows if r["line"] == line and r["batch_size"] == batch}
        last = mine.get(contexts[-1]) or {}
        body.append([line, *(tables.scaled((mine.get(c) or {}).get("tpot"), "s") for c in contexts),
                     tables.scaled(last.get("ttft"), "s"), tables.scaled(last.get("kv"), "bytes/token"),
                     tables.number(last.get("kv_ratio")), tables.text(last.get("max_batch"))])
    return [f"At batch {batch} (medians; mean over trials):", "", tables.markdown_table(headers, body), ""]


def _sweep_section(con: duckdb.DuckDBPyConnection, figures: list[plots.FigureFile], out_dir: Path) -> list[str]:
    """The scaling maps: the crossovers as lines, a table and the figures of each map; nothing without sweep rows."""
    maps = [m for (m,) in con.execute("SELECT DISTINCT map FROM sweep WHERE rev = 'workspace' ORDER BY 1").fetchall()]
    if not maps:
        return []
    out = ["## Scaling maps: latency and memory against context length and batch size", "",
           "Each line of a map is one cell (`sweep_attention@<variant>`: our decoder at one shape, random weights; "
           "`sweep_precision@<precision>`: one model at that precision) measured at every (context, batch) point of "
           "its grid: TTFT (prefill), TPOT (median decode step, a synchronising logits processor per token), prefill "
           "tokens/s, the KV cache counted from its tensors (and ÷ the analytic count) and the largest batch whose "
           "weights + KV cache fit the memory budget. A crossover is the smallest measured x from which a line "
           "decodes faster than the reference (mha; bf16) at every larger x; one-trial medians closer than the "
           "machine's noise floor are not a real difference. Every point: `sweep.csv` · `efficientllm sql \"SELECT * "
           "FROM sweep\"`; every crossover: `sweep_crossovers.csv`.", "", "### Crossovers", ""]
    rows = tables.records(con, "SELECT * FROM sweep_crossovers WHERE rev = 'workspace' "
                               "ORDER BY map, fixed_value, line")
    shown = [r for r in rows if SWEEP_X_AXIS.get(r["map"]) == r["x_axis"]]
    out += [_crossover_line(r) for r in shown] or ["No line was measured at two points beside its reference."]
    out.append("")
    for map_name in maps:
        out += [f"### {map_name} map", "", *_sweep_table(con, map_name)]
        for f in figures:
            if f.kind == "sweep" and f.stage == f"sweep_{map_name}":
                out += [f"![{f.title}]({f.path.relative_to(out_dir).as_posix()})", ""]
    return out


def render_index(con: duckdb.DuckDBPyConnection, n_files: int, title: str, claim_results: Sequence,
                 figures: list[plots.FigureFile], out_dir: Path, *, boards: dict, catalog: dict,
                 axes_with_rows: set[str]) -> str:
    """The text of index.md, from the boards (`_group` of `scores`), catalog and axes the axis pages used."""
    lines = [f"# {title}", "", *_summary(con, n_files), ""]
    pages = [f"[{axis}]({axis}.md)" for axis, _ in AXES if axis in axes_with_rows]
    lines += ['Every number below is a row in DuckDB (`efficientllm sql "SELECT * FROM scores"`). Axis pages: '
              + (" · ".join(pages) or "none yet") + ". Next to this file: `leaderboard_<axis>.csv`, `scores.csv`, "
              "`claims.csv`, `rows.csv` (every row, no latency samples), `rows.parquet` (every row and column), "
              "`figures/`.", ""]
    lines += _claims_section(claim_results)
    for axis, axis_title in AXES:
        if axis not in axes_with_rows:
            continue
        mine = {k: v for k, v in boards.items() if k[0] == axis}
        lines += _index_axis_section(axis, axis_title, mine, catalog, figures, out_dir, failed_only=not mine)
    if not axes_with_rows:
        lines += ["No successful cells yet.", ""]
    lines += _sweep_section(con, figures, out_dir)
    lines += _failures_section(con)
    lines += _sanity_section(con)
    lines += _assumptions_section(con)
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


def _claims_csv(results: Sequence[claims.ClaimResult]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["claim_id", "axis", "finding", "rev", "stage", "board", "verdict", "measured", "why", "evidence",
                     "p", "p_holm"])
    for r in results:
        writer.writerow([r.claim_id, r.axis, r.finding, r.rev, r.stage, r.board, r.verdict, r.measured, r.why,
                         r.evidence, r.p, r.p_holm])
    return buf.getvalue()


_ROW_ORDER = "ORDER BY axis, stage, cell, trial, timestamp_utc, run_id"


def build_report(row_files: views.RowFiles, out_dir: str | os.PathLike, title: str = "efficientllm report",
                 assumptions: views.Assumptions | None = None, figures: bool = True) -> dict[str, Path]:
    """Write the report into `out_dir` (see the module docstring); returns the paths written by name
    (index, <axis>_page, leaderboard_<axis>, scores, claims, rows_csv, rows_parquet, figure:<file name>).

    `row_files` is a list of row files or a glob pattern, as for `views.connect`; `assumptions` sets the price
    and grid intensity of the cost and CO2 columns; `figures=False` skips the PNGs (and matplotlib).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = views.find_row_files(row_files)
    con = views.connect(files, read_only=False, assumptions=assumptions)  # COPY needs file access; no user SQL
    try:
        paths: dict[str, Path] = {}
        for axis, _ in AXES:
            paths[f"leaderboard_{axis}"] = out / f"leaderboard_{axis}.csv"
            _copy_atomic(con, f"SELECT * FROM leaderboard_{axis}", paths[f"leaderboard_{axis}"], "FORMAT csv, HEADER")
        paths["scores"] = out / "scores.csv"
        _copy_atomic(con, "SELECT * FROM scores", paths["scores"], "FORMAT csv, HEADER")
        has_maps = con.execute("SELECT count(*) > 0 FROM sweep").fetchone()[0]
        for view in ("sweep", "sweep_crossovers") if has_maps else ():  # the scaling maps: every point, crossover
            paths[view] = out / f"{view}.csv"
            _copy_atomic(con, f"SELECT * FROM {view}", paths[view], "FORMAT csv, HEADER")
        paths["rows_csv"] = out / "rows.csv"
        _copy_atomic(con, f"SELECT * EXCLUDE (latency_samples_s, rev, row_file) FROM rows {_ROW_ORDER}",
                     paths["rows_csv"], "FORMAT csv, HEADER")
        paths["rows_parquet"] = out / "rows.parquet"
        _copy_atomic(con, f"SELECT * EXCLUDE (rev, row_file) FROM rows {_ROW_ORDER}", paths["rows_parquet"],
                     "FORMAT parquet")

        results = claims.check_claims(con, rev=views.WORKSPACE)
        paths["claims"] = out / "claims.csv"
        records.atomic_write_text(paths["claims"], _claims_csv(results))

        drawn = plots.draw_figures(con, out, rev=views.WORKSPACE) if figures else []
        for f in drawn:
            paths[f"figure:{f.path.name}"] = f.path

        axes_with_rows = {a for (a,) in con.execute("SELECT DISTINCT axis FROM latest").fetchall()}
        boards = _group(tables.records(con, views.query("report/scores_shown")))
        _with_evidence(con, boards)
        catalog = _catalog(con)
        for axis, axis_title in AXES:
            if axis in axes_with_rows:
                paths[f"{axis}_page"] = out / f"{axis}.md"
                mine = {k: v for k, v in boards.items() if k[0] == axis}
                page = _axis_page(axis, axis_title, mine, catalog, drawn, out) if mine else (
                    f"# {axis_title}\n\n[← report](index.md)\n\nNo successful cells on this axis yet.\n")
                records.atomic_write_text(paths[f"{axis}_page"], page)
        paths["index"] = out / "index.md"
        records.atomic_write_text(paths["index"], render_index(
            con, len(files), title, results, drawn, out, boards=boards, catalog=catalog,
            axes_with_rows=axes_with_rows))
    finally:
        con.close()
    return paths
