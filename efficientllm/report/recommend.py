"""`efficientllm recommend`: which techniques to use under your constraints, and the numbers behind the choice.

From the measured cells (means over trials, `scores`, read by report/sql/recommend/cells.sql), keep those that
satisfy every constraint given (peak memory, mean latency AL, quality drop against the axis baseline: mha / full /
bf16), then return the Pareto-optimal ones of each board: no other satisfying cell of the board is at least as good
on quality, peak memory, latency and energy per token and strictly better on one. Cells that fail a constraint are
listed with the reason, so a user sees what the constraint cost.

    efficientllm recommend --axis quantize --max-memory-bytes 2e9 --max-quality-drop 0.02
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb

from efficientllm.report import tables, views

AXES = ("pretrain", "finetune", "quantize")

OBJECTIVES: tuple[tuple[str, bool], ...] = (
    ("peak_mem_bytes", False),
    ("al_s", False),
    ("energy_j_per_token", False),
)
"""(column, higher is better) of the Pareto objectives besides quality (whose direction comes from its metric)."""

@dataclass(frozen=True)
class Constraints:
    axis: str | None = None
    """pretrain | finetune | quantize; None: every axis."""
    max_memory_bytes: float | None = None
    """Peak memory of the cell (peak_mem_bytes) at most this."""
    max_latency_s: float | None = None
    """Mean latency AL (seconds per step or per request) at most this."""
    max_quality_drop: float | None = None
    """Relative quality loss against the board's baseline cell at most this (0.02 = 2%; lower-is-better metrics
    such as perplexity count a rise as a drop)."""

    def __post_init__(self) -> None:
        if self.axis is not None and self.axis not in AXES:
            raise ValueError(f"axis {self.axis!r} is not one of {', '.join(AXES)}")
        for name in ("max_memory_bytes", "max_latency_s", "max_quality_drop"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")


@dataclass
class Board:
    """The recommendation for one (rev, axis, stage, board)."""

    rev: str
    axis: str
    stage: str
    board: str
    chosen: list[dict[str, Any]] = field(default_factory=list)
    """Pareto-optimal cells satisfying the constraints, best quality first."""
    dominated: list[dict[str, Any]] = field(default_factory=list)
    """Cells satisfying the constraints that another satisfying cell beats on every objective ('dominated_by')."""
    rejected: list[dict[str, Any]] = field(default_factory=list)
    """Cells failing a constraint ('reason')."""


def quality_drop(quality: float | None, baseline: float | None, higher_is_better: bool | None) -> float | None:
    """Relative quality loss against the baseline: positive = worse (a perplexity rise, an accuracy fall)."""
    if quality is None or baseline is None or baseline == 0:
        return None
    change = (quality - baseline) / abs(baseline)
    return -change if higher_is_better else change


def _violations(cell: dict[str, Any], c: Constraints) -> list[str]:
    reasons = []
    for column, limit, label, unit in (("peak_mem_bytes", c.max_memory_bytes, "peak memory", "bytes"),
                                       ("al_s", c.max_latency_s, "AL", "s")):
        if limit is None:
            continue
        if cell[column] is None:
            reasons.append(f"no {label} measured")
        elif cell[column] > limit:
            shown, _ = tables.display_unit(unit)
            measured, allowed = tables.scaled(cell[column], unit), tables.scaled(limit, unit)
            reasons.append(f"{label} {measured} {shown} > {allowed} {shown}")
    if c.max_quality_drop is not None:
        if cell["quality_drop"] is None:
            reasons.append("no quality or baseline quality to compare")
        elif cell["quality_drop"] > c.max_quality_drop + 1e-12:  # 1.1 / 1.0 - 1 is 0.10000000000000009
            reasons.append(f"quality drop {cell['quality_drop']:.1%} > {c.max_quality_drop:.1%}")
    return reasons


def _objectives(cell: dict[str, Any], used: list[tuple[str, bool]]) -> list[float]:
    """Objective values oriented so that lower is better."""
    return [-cell[name] if higher else cell[name] for name, higher in used]


def dominates(a: list[float], b: list[float]) -> bool:
    """a is at least as good as b everywhere and strictly better somewhere (lower is better)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def pareto_front(cells: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(front, dominated) of `cells` over quality and `OBJECTIVES`; an objective missing for any cell is left
    out for all (each cell records the objectives used in 'objectives')."""
    if not cells:
        return [], []
    quality_high = bool(cells[0]["quality_higher_is_better"])
    candidates = [("quality", quality_high), *OBJECTIVES]
    used = [(name, high) for name, high in candidates if all(c[name] is not None for c in cells)]
    front, dominated = [], []
    for cell in cells:
        cell["objectives"] = [name for name, _ in used]
        mine = _objectives(cell, used)
        beaten_by = [o["cell"] for o in cells if o is not cell and dominates(_objectives(o, used), mine)]
        if beaten_by:
            dominated.append({**cell, "dominated_by": beaten_by})
        else:
            front.append(cell)
    return front, dominated


def recommend(con: duckdb.DuckDBPyConnection, constraints: Constraints, rev: str = "workspace") -> list[Board]:
    """The recommendation per board of `rev` (one board per stage, model size and dataset)."""
    rows = tables.records(con, views.query("recommend/cells"), {"rev": rev, "axis": constraints.axis})
    boards: dict[tuple[str, str, str, str], Board] = {}
    passing: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for cell in rows:
        cell["quality_drop"] = quality_drop(cell["quality"], cell["baseline_quality"], cell["quality_higher_is_better"])
        key = (cell["rev"], cell["axis"], cell["stage"], cell["board"])
        board = boards.setdefault(key, Board(*key))
        reasons = _violations(cell, constraints)
        if cell["quality"] is None:
            reasons.append("no quality measured")
        if reasons:
            board.rejected.append({**cell, "reason": "; ".join(reasons)})
        else:
            passing.setdefault(key, []).append(cell)
    for key, cells in passing.items():
        front, dominated = pareto_front(cells)
        high = bool(cells[0]["quality_higher_is_better"])
        boards[key].chosen = sorted(front, key=lambda c: (-c["quality"] if high else c["quality"], c["cell"]))
        boards[key].dominated = dominated
    return list(boards.values())


def render(boards: list[Board], constraints: Constraints) -> str:
    """The recommendation as Markdown: per board, the chosen cells with their numbers, then what was left out."""
    given = [text for text, value in (
        (f"peak memory ≤ {tables.number(constraints.max_memory_bytes)} bytes", constraints.max_memory_bytes),
        (f"AL ≤ {tables.number(constraints.max_latency_s)} s", constraints.max_latency_s),
        (f"quality drop vs baseline ≤ {(constraints.max_quality_drop or 0):.1%}", constraints.max_quality_drop),
    ) if value is not None]
    lines = ["# Recommendation", "",
             f"Constraints: {', '.join(given) if given else 'none'}"
             f"{f'; axis {constraints.axis}' if constraints.axis else ''}. Chosen: the Pareto-optimal cells over "
             "quality, peak memory, latency (AL) and energy per token among those meeting every constraint.", ""]
    if not boards:
        return "\n".join([*lines, "No measured cells match (check --axis and --rows / --rev)."]) + "\n"
    headers = ["cell", "trials", "quality", "quality drop vs baseline (+ = worse)", "peak memory (MiB)", "AL (ms)",
               "energy (mJ/token)", "cost (USD/Mtoken, assumed)", "CO2 (g/Mtoken, assumed)"]
    for b in boards:
        title = " · ".join(x for x in (b.axis, b.stage if b.stage != b.axis else "", b.board) if x)
        lines += [f"## {title}" + (f" (rev {b.rev})" if b.rev != "workspace" else ""), ""]
        if b.chosen:
            metric = b.chosen[0]["quality_metric"] or "quality"
            body = [[c["cell"] + (" (baseline)" if c["is_baseline"] else ""), tables.text(c["n_trials"]),
                     f"{tables.number(c['quality'])} {metric}",
                     tables.percent_change(c["quality_drop"]), tables.scaled(c["peak_mem_bytes"], "bytes"),
                     tables.scaled(c["al_s"], "s"), tables.scaled(c["energy_j_per_token"], "J/token"),
                     tables.number(c["cost_usd_per_mtok"]), tables.number(c["co2_g_per_mtok"])] for c in b.chosen]
            lines += [tables.markdown_table(headers, body), ""]
            used = b.chosen[0].get("objectives") or []
            if len(used) < 1 + len(OBJECTIVES):
                lines += [f"Compared on: {', '.join(used)} (the other objectives are missing for some cells).", ""]
        else:
            lines += ["No cell meets every constraint.", ""]
        for c in b.dominated:
            verb = "is" if len(c["dominated_by"]) == 1 else "are each"
            lines.append(f"- {c['cell']}: meets the constraints, but {', '.join(c['dominated_by'])} {verb} as good "
                         "or better on every objective")
        for c in b.rejected:
            lines.append(f"- {c['cell']}: left out: {c['reason']}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
