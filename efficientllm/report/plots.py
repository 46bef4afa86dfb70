"""The report's figures (matplotlib, Agg, PNG), drawn from the same views as its tables.

Per board (stage, model size, dataset) of each axis:

- `pareto_*.png`: quality against peak memory, latency (AL) and energy per token, the Pareto front in red
  (view `pareto`), the baseline starred;
- `radar_*.png`: radars of the paper's normalised scores per technique (view `scores`, radar metrics of
  `metric_catalog`; 1 = best of the board, 0.1 = worst), a few techniques per radar, the baseline dashed;
- `latency_*.png`: box plots of the raw latency samples of every cell (rows' latency_samples_s, all trials);
- `loss_*.png`: training-loss curves from the `loss.csv` next to each row file, where a stage wrote one;
- `samples_*.png`: the generated-image grids (`samples/grid.png` next to each row file: the vision axis).

Every axis is labelled with its unit. `draw_figures(con, out_dir)` writes them and returns what it drew.

    python -m stages.report   # writes reports/figures/*.png (and the rest of the report)
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from efficientllm.report import tables

FIGURE_DIR = "figures"
"""Sub-folder of the report folder that holds the PNGs (the DVC plots config points at it)."""

DPI = 100
FRONT = "#c0392b"
POINT = "#2e6f9e"
BASELINE = "#555555"

X_METRICS: tuple[tuple[str, str], ...] = (
    ("peak_mem_bytes", "peak memory"),
    ("al_s", "AL"),
    ("energy_j_per_token", "energy per token"),
)


@dataclass(frozen=True)
class FigureFile:
    kind: str
    """pareto | radar | latency | loss."""
    axis: str
    stage: str
    board: str
    path: Path
    title: str


def slug(*parts: str | None) -> str:
    """A file-name-safe slug of the non-empty parts: 'finetune', 'models/pretrain/mha · arith' -> ..."""
    text = "-".join(p for p in parts if p)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "all"


def _board_title(axis: str, stage: str, board: str) -> str:
    return " · ".join(p for p in (axis, stage if stage != axis else "", board) if p)


def _latency_word(axis: str) -> str:
    return "request" if axis == "quantize" else "training step"


def _quality_label(metric: str | None, higher: bool | None) -> str:
    name = metric or "quality"
    return f"{name} ({'higher' if higher else 'lower'} is better)"


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    # Fixed margins rather than a layout engine: constrained layout re-measures every text several times and
    # made the report stage half again slower; the margins below fit the labels these figures draw.
    return Figure(figsize=(width, height), dpi=DPI)


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})  # no version stamp: same rows, same bytes


def _boards(con: duckdb.DuckDBPyConnection, rev: str) -> list[dict[str, Any]]:
    return tables.records(con, "SELECT DISTINCT axis, stage, board FROM scores WHERE rev = ? "
                               "ORDER BY axis, stage, board", [rev])


def pareto_figure(con: duckdb.DuckDBPyConnection, rev: str, axis: str, stage: str, board: str,
                  path: Path) -> bool:
    """Quality vs memory / latency / energy, one panel each, the Pareto front marked (with several trials, error
    bars of the 95% CIs); False if nothing to draw."""
    from matplotlib.ticker import MaxNLocator

    points = tables.records(con, "SELECT * FROM pareto WHERE rev = ? AND stage = ? AND board = ?",
                            [rev, stage, board])
    if not points:
        return False
    sources = {r["energy_source"] for r in tables.records(
        con, "SELECT DISTINCT energy_source FROM measured WHERE rev = ? AND stage = ? AND board = ? AND status = 'ok'",
        [rev, stage, board])}
    fig = _new_figure(15, 5.0)
    panels = fig.subplots(1, len(X_METRICS))
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.2, top=0.88, wspace=0.25)
    first = points[0]
    y_label = _quality_label(first["quality_metric"], first["quality_higher_is_better"])
    for ax, (x_metric, name) in zip(panels, X_METRICS, strict=True):
        mine = [p for p in points if p["x_metric"] == x_metric]
        # the unit the metric catalog gives (via the pareto view); a panel with no points names no unit
        shown, divisor = tables.display_unit(mine[0]["x_unit"]) if mine else ("", 1.0)
        unit_text = f" ({shown})" if shown else ""
        x_label = f"{name}{unit_text} — lower is better"
        if x_metric == "al_s":
            x_label = f"AL: mean time per {_latency_word(axis)}{unit_text} — lower is better"
        if x_metric == "energy_j_per_token" and "estimate" in sources:
            x_label += "\n(energy is an ESTIMATE: no hardware counter)"
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(True, alpha=0.3)
        if not mine:
            ax.text(0.5, 0.5, f"no {name} measured", ha="center", va="center", transform=ax.transAxes)
            continue
        xs = [p["x_value"] / divisor for p in mine]
        ys = [p["quality"] for p in mine]
        ax.scatter(xs, ys, s=28, color=POINT, zorder=2, label="cell")
        if any(p["x_ci95"] or p["quality_ci95"] for p in mine):  # several trials: 95% CI of both means
            ax.errorbar(xs, ys, xerr=[(p["x_ci95"] or 0) / divisor for p in mine],
                        yerr=[p["quality_ci95"] or 0 for p in mine], fmt="none", ecolor=POINT, alpha=0.5,
                        elinewidth=1, capsize=2, zorder=1, label="95% CI (trials)")
        front = sorted((p for p in mine if p["on_front"]), key=lambda p: (p["x_value"], p["quality"]))
        ax.plot([p["x_value"] / divisor for p in front], [p["quality"] for p in front], "-o", color=FRONT,
                markersize=7, zorder=3, label="Pareto front")
        for p in mine:
            if p["is_baseline"]:
                ax.scatter([p["x_value"] / divisor], [p["quality"]], marker="*", s=180, color=BASELINE, zorder=4,
                           label="baseline")
            ax.annotate(p["cell"], (p["x_value"] / divisor, p["quality"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
        ax.margins(x=0.12, y=0.1)  # room for the cell labels at the edges
        positive = [x for x in xs if x > 0]
        if positive and max(positive) / min(positive) > 30:
            ax.set_xscale("log")
        else:  # few, plain tick labels: a narrow range (e.g. 400.15-400.35 MiB) must not print as overlapping
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            ax.ticklabel_format(axis="x", style="plain", useOffset=False)
        if not first["quality_higher_is_better"]:
            ax.invert_yaxis()  # better quality is up in every panel
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{_board_title(axis, stage, board)}: quality against memory, latency and energy "
                 "(better is up and to the left; Pareto front in red)")
    _save(fig, path)
    return True


RADAR_GROUP = 5
"""Techniques per radar (besides the dashed baseline): the paper overlays a handful per chart."""


def radar_figure(con: duckdb.DuckDBPyConnection, rev: str, axis: str, stage: str, board: str, path: Path) -> bool:
    """Radars of the normalised scores of the radar metrics, up to `RADAR_GROUP` techniques overlaid per radar
    (in quality-rank order) with the baseline dashed in each; False if nothing to draw."""
    catalog = tables.records(con, "SELECT metric, label FROM metric_catalog WHERE axis = ? AND radar "
                                  "ORDER BY position", [axis])
    scores = tables.records(con, "SELECT cell, is_baseline, metric, quality_metric, normalized_score, rank "
                                 "FROM scores WHERE rev = ? AND stage = ? AND board = ? AND radar",
                            [rev, stage, board])
    if not scores or not catalog:
        return False
    quality = {s["cell"]: s["rank"] for s in scores if s["metric"] == "quality"}
    value = {(s["cell"], s["metric"]): s["normalized_score"] for s in scores}
    baseline = next((s["cell"] for s in scores if s["is_baseline"]), None)
    cells = sorted({s["cell"] for s in scores} - {baseline}, key=lambda c: (quality.get(c) or 10**6, c))
    groups = [cells[i:i + RADAR_GROUP] for i in range(0, len(cells), RADAR_GROUP)] or [[]]
    quality_metric = next((s["quality_metric"] for s in scores if s["metric"] == "quality"), None)
    labels = [quality_metric or "quality" if c["metric"] == "quality" else c["label"] for c in catalog]
    angles = [2 * math.pi * i / len(catalog) for i in range(len(catalog))]
    closed = [*angles, angles[0]]
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    width, height = max(8.0, 4.8 * ncols), 4.0 * nrows + 0.7
    fig = _new_figure(width, height)
    fig.subplots_adjust(left=0.6 / width, right=1 - 1.6 / width, bottom=0.3 / height, top=1 - 0.9 / height,
                        wspace=0.65, hspace=0.45)
    colors = ["#2e6f9e", "#e67e22", "#27ae60", "#8e44ad", "#c0392b"]
    for i, group in enumerate(groups):
        ax = fig.add_subplot(nrows, ncols, i + 1, projection="polar")
        if baseline is not None:
            ref = [value.get((baseline, c["metric"])) or 0.0 for c in catalog]
            ax.plot(closed, [*ref, ref[0]], "--", color=BASELINE, linewidth=1.2, label=f"{baseline} (baseline)")
        for color, cell in zip(colors, group, strict=False):
            vals = [value.get((cell, c["metric"])) or 0.0 for c in catalog]  # not measured: drawn at the centre
            ax.plot(closed, [*vals, vals[0]], color=color, linewidth=1.5, label=cell)
            ax.fill(closed, [*vals, vals[0]], color=color, alpha=0.08)
        ax.set_ylim(0, 1)
        ax.set_yticks([0.1, 0.55, 1.0])
        ax.set_yticklabels(["0.1", "0.55", "1"], fontsize=6)
        ax.set_xticks(angles)
        ax.set_xticklabels(labels, fontsize=8)
        ranks = [quality.get(c) for c in group if quality.get(c)]
        ax.set_title(f"quality ranks {min(ranks)}-{max(ranks)}" if ranks else "", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.12))
    fig.suptitle(f"{_board_title(axis, stage, board)}: normalised scores\n(paper eqs. 10-11: 1 = best of the board, "
                 "0.1 = worst; a metric not measured sits at the centre)", fontsize=10)
    _save(fig, path)
    return True


def latency_figure(con: duckdb.DuckDBPyConnection, rev: str, axis: str, stage: str, board: str,
                   path: Path) -> bool:
    """Box plots of every cell's raw latency samples (all trials pooled); False if no cell kept samples."""
    rows = tables.records(con, "SELECT cell, latency_samples_s FROM measured WHERE rev = ? AND stage = ? "
                               "AND board = ? AND status = 'ok' AND len(latency_samples_s) > 0", [rev, stage, board])
    samples: dict[str, list[float]] = {}
    for r in rows:
        samples.setdefault(r["cell"], []).extend(v * 1e3 for v in r["latency_samples_s"] if v is not None)
    samples = {c: v for c, v in samples.items() if v}
    if not samples:
        return False
    order = sorted(samples, key=lambda c: (sorted(samples[c])[len(samples[c]) // 2], c))
    height = max(3.2, 1.4 + 0.38 * len(order))
    fig = _new_figure(9, height)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.2, right=0.98, bottom=0.75 / height, top=1 - 0.7 / height)
    ax.boxplot([samples[c] for c in order], orientation="horizontal",
               tick_labels=[f"{c} (n={len(samples[c])})" for c in order], showfliers=True, flierprops={"markersize": 3})
    ax.set_xlabel(f"time per {_latency_word(axis)} (ms)")
    ax.set_ylabel("cell")
    ax.invert_yaxis()
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(f"{_board_title(axis, stage, board)}: latency of every measured {_latency_word(axis)}\n"
                 "(box: quartiles, whiskers: 1.5 IQR; n = samples over all trials; fastest median at the top)",
                 fontsize=9)
    _save(fig, path)
    return True


def _read_curve(path: Path) -> tuple[list[float], list[float]]:
    steps, losses = [], []
    with path.open(newline="", encoding="utf-8") as f:
        for record in csv.DictReader(f):
            try:
                steps.append(float(record["step"]))
                losses.append(float(record["loss"]))
            except (KeyError, TypeError, ValueError):
                continue  # a curve without step / loss columns, or a blank value: skip the point
    return steps, losses


def loss_figure(con: duckdb.DuckDBPyConnection, rev: str, axis: str, stage: str, board: str, path: Path) -> bool:
    """Training-loss curves from the loss.csv beside each ok row file (trial 0); False if none exists."""
    rows = tables.records(con, "SELECT DISTINCT cell, row_file FROM measured WHERE rev = ? AND stage = ? "
                               "AND board = ? AND status = 'ok' AND coalesce(trial, 0) = 0 ORDER BY cell",
                          [rev, stage, board])
    curves = {}
    for r in rows:
        file = Path(r["row_file"]).with_name("loss.csv")
        if file.is_file():
            steps, losses = _read_curve(file)
            if steps:
                curves[r["cell"]] = (steps, losses)
    if not curves:
        return False
    fig = _new_figure(9, 5)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.11, top=0.92)
    for cell, (steps, losses) in curves.items():
        ax.plot(steps, losses, linewidth=1.2, label=cell)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (cross-entropy, nats/token)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncols=2 if len(curves) > 8 else 1, loc="upper right")
    ax.set_title(f"{_board_title(axis, stage, board)}: training loss per cell", fontsize=10)
    _save(fig, path)
    return True


def samples_figure(con: duckdb.DuckDBPyConnection, rev: str, axis: str, stage: str, board: str, path: Path) -> bool:
    """The generated-image grids (samples/grid.png beside each ok row file, trial 0: the vision axis) side by side,
    titled with the cell and its quality; False when no cell of the board saved one."""
    rows = tables.records(con, "SELECT DISTINCT cell, row_file, quality_metric, quality_value, "
                               "TRY_CAST(extra ->> '$.sample_accuracy' AS DOUBLE) AS accuracy FROM measured "
                               "WHERE rev = ? AND stage = ? AND board = ? AND status = 'ok' AND coalesce(trial, 0) = 0 "
                               "ORDER BY quality_value, cell", [rev, stage, board])
    grids = [(r, Path(r["row_file"]).with_name("samples") / "grid.png") for r in rows]
    grids = [(r, g) for r, g in grids if g.is_file()]
    if not grids:
        return False
    from matplotlib.image import imread

    cols = min(4, len(grids))
    n_rows = -(-len(grids) // cols)
    fig = _new_figure(3.2 * cols, 3.4 * n_rows + 0.4)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.5 / (3.4 * n_rows + 0.4), wspace=0.1, hspace=0.3)
    axes = fig.subplots(n_rows, cols, squeeze=False).flatten()
    for ax, (r, grid) in zip(axes, grids, strict=False):
        ax.imshow(imread(grid), interpolation="nearest")
        acc = "" if r["accuracy"] is None else f", acc {r['accuracy']:.2f}"
        ax.set_title(f"{r['cell']}: {r['quality_metric']} {tables.number(r['quality_value'])}{acc}", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"{_board_title(axis, stage, board)}: samples (one row per class; best quality first)", fontsize=9)
    _save(fig, path)
    return True


ANATOMY_PARTS = (("mem_weights_bytes", "weights"), ("mem_grads_bytes", "gradients"),
                 ("mem_optimizer_bytes", "optimizer state"), ("mem_activations_bytes", "saved activations"),
                 ("mem_kv_cache_bytes", "KV cache"), ("mem_other_bytes", "rest (measured peak - counted)"))
"""The memory anatomy's parts (efficientllm.measure.anatomy), bottom to top of each bar."""


def memory_figure(con: duckdb.DuckDBPyConnection, rev: str, axis: str, stage: str, board: str, path: Path) -> bool:
    """A stacked bar per cell: where its bytes go (weights, gradients, optimizer state, activations, KV cache, and
    the rest of the measured peak); mean over trials. False when no cell has an anatomy."""
    columns = ", ".join(f"avg({c}) AS {c}" for c, _ in ANATOMY_PARTS)
    rows = tables.records(con, f"SELECT cell, {columns}, any_value(peak_mem_source) AS source FROM measured "
                               "WHERE rev = ? AND stage = ? AND board = ? AND status = 'ok' "
                               "AND mem_weights_bytes IS NOT NULL GROUP BY cell ORDER BY cell", [rev, stage, board])
    if not rows:
        return False
    height = max(3.2, 1.4 + 0.38 * len(rows))
    fig = _new_figure(9, height)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.2, right=0.7, bottom=0.75 / height, top=1 - 0.7 / height)
    left = [0.0] * len(rows)
    for column, label in ANATOMY_PARTS:
        widths = [max(0.0, r[column] or 0.0) / 2**20 for r in rows]  # a negative rest (CPU) is drawn as none
        if any(widths):
            ax.barh([r["cell"] for r in rows], widths, left=left, label=label)
            left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_xlabel("MiB")
    ax.invert_yaxis()
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    source = sorted({r["source"] or "?" for r in rows})
    ax.set_title(f"{_board_title(axis, stage, board)}: memory anatomy (counted tensors; rest = peak "
                 f"[{', '.join(source)}] - counted)", fontsize=9)
    _save(fig, path)
    return True


FIGURES = {
    "pareto": (pareto_figure, "quality vs memory, latency, energy (Pareto front)"),
    "radar": (radar_figure, "normalised scores per technique"),
    "latency": (latency_figure, "latency distributions"),
    "memory": (memory_figure, "memory anatomy"),
    "loss": (loss_figure, "training loss curves"),
    "samples": (samples_figure, "generated samples per cell (vision axis)"),
}
"""Figure kind -> (drawing function, title); each function returns False when it has nothing to draw."""


def draw_figures(con: duckdb.DuckDBPyConnection, out_dir: str | Path, rev: str = "workspace") -> list[FigureFile]:
    """Every figure of every board of `rev` into `out_dir`/figures/; returns those drawn, in report order."""
    folder = Path(out_dir) / FIGURE_DIR
    drawn = []
    for b in _boards(con, rev):
        for kind, (draw, title) in FIGURES.items():
            path = folder / f"{kind}_{slug(b['stage'], b['board'])}.png"
            if draw(con, rev, b["axis"], b["stage"], b["board"], path):
                drawn.append(FigureFile(kind, b["axis"], b["stage"], b["board"], path, title))
    return drawn + draw_sweep_figures(con, folder, rev)


# --- scaling maps (view `sweep`, efficientllm/sweep.py) -----------------------------------------------------------

SWEEP_CONTEXT_PANELS: tuple[tuple[str, str, str], ...] = (
    ("ttft_s_p50", "TTFT p50 (prefill)", "s"),
    ("tpot_s_p50", "TPOT p50 (decode step)", "s"),
    ("prefill_tokens_per_s", "prefill throughput", "tokens/s"),
    ("kv_cache_bytes", "KV cache, counted from its tensors", "bytes"),
    ("max_batch_in_budget", "largest batch in the memory budget", "sequences"),
)
"""Metric (a column of `sweep`), title and unit of each panel of a map's context-length figure."""
SWEEP_BATCH_PANELS: tuple[tuple[str, str, str], ...] = (
    ("tpot_s_p50", "TPOT p50 (decode step)", "s"),
    ("decode_tokens_per_s", "decode throughput", "tokens/s"),
)
"""The same for a map's batch-size figure."""


def _sweep_lines(con: duckdb.DuckDBPyConnection, rev: str, map_name: str, fixed: str, value: int,
                 x: str) -> dict[str, list[dict[str, Any]]]:
    """line -> its points along `x` at `fixed` = value (means over the ok trials), reference line first."""
    metrics = {m for m, _, _ in (*SWEEP_CONTEXT_PANELS, *SWEEP_BATCH_PANELS)}
    rows = tables.records(con, f"SELECT line, is_reference, {x} AS x, {', '.join(f'avg({m}) AS {m}' for m in metrics)} "
                               f"FROM sweep WHERE rev = ? AND map = ? AND {fixed} = ? AND point_status = 'ok' "
                               "GROUP BY line, is_reference, x ORDER BY NOT is_reference, line, x",
                          [rev, map_name, value])
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["line"], []).append(r)
    return out


def sweep_figure(con: duckdb.DuckDBPyConnection, rev: str, map_name: str, x: str, fixed: str, value: int,
                 path: Path) -> bool:
    """One map's metrics against `x` (context or batch_size) at `fixed` = value, one line per line of the map (the
    reference dashed); False when fewer than two x values were measured."""
    lines = _sweep_lines(con, rev, map_name, fixed, value, x)
    if not lines or max(len(points) for points in lines.values()) < 2:
        return False
    panels = SWEEP_CONTEXT_PANELS if x == "context" else SWEEP_BATCH_PANELS
    fig = _new_figure(4.2 * len(panels), 4.4)
    axes = fig.subplots(1, len(panels))
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.83, wspace=0.32)
    ticks = sorted({p["x"] for points in lines.values() for p in points})
    for ax, (metric, title, unit) in zip(axes, panels, strict=True):
        shown, divisor = tables.display_unit(unit)
        for line, points in lines.items():
            xs = [p["x"] for p in points if p[metric] is not None]
            ys = [p[metric] / divisor for p in points if p[metric] is not None]
            ax.plot(xs, ys, "--" if points[0]["is_reference"] else "-", marker="o", markersize=3, label=line)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("context length (prompt tokens)" if x == "context" else "batch size (sequences)")
        ax.set_ylabel(shown)
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fixed_text = f"batch {value}" if fixed == "batch_size" else f"context {value}"
    fig.suptitle(f"scaling map · {map_name}: against {'context length' if x == 'context' else 'batch size'} at "
                 f"{fixed_text} (one line per {'variant' if map_name == 'attention' else 'precision'}; reference "
                 "dashed; medians, mean over trials)", fontsize=10)
    _save(fig, path)
    return True


def draw_sweep_figures(con: duckdb.DuckDBPyConnection, folder: Path, rev: str = "workspace") -> list[FigureFile]:
    """Every map's context-length figure at each batch measured at two contexts or more, and its batch figure at the
    context with the most batches measured (the longest of those); kind 'sweep', axis 'sweep'."""
    drawn = []
    for (map_name,) in con.execute("SELECT DISTINCT map FROM sweep WHERE rev = ? ORDER BY 1", [rev]).fetchall():
        batches = con.execute("SELECT batch_size FROM sweep WHERE rev = ? AND map = ? AND point_status = 'ok' "
                              "GROUP BY 1 HAVING count(DISTINCT context) > 1 ORDER BY 1", [rev, map_name]).fetchall()
        contexts = con.execute("SELECT context FROM sweep WHERE rev = ? AND map = ? AND point_status = 'ok' GROUP BY 1 "
                               "HAVING count(DISTINCT batch_size) > 1 ORDER BY count(DISTINCT batch_size) DESC, 1 DESC "
                               "LIMIT 1", [rev, map_name]).fetchall()
        plan = [("context", "batch_size", b) for (b,) in batches] + [("batch_size", "context", c) for (c,) in contexts]
        for x, fixed, value in plan:
            board = f"{x} · {fixed} {value}"
            path = folder / f"sweep_{slug(map_name, 'by', x, 'at', fixed, str(value))}.png"
            if sweep_figure(con, rev, map_name, x, fixed, value, path):
                drawn.append(FigureFile("sweep", "sweep", f"sweep_{map_name}", board, path,
                                        f"{map_name} map against {x.replace('_', ' ')} at {fixed.replace('_', ' ')} "
                                        f"{value}"))
    return drawn
