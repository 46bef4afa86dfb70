"""Numbers and Markdown tables for people: the formatting shared by the report, `compare` and `recommend`.

Every value is shown with about three significant digits in the unit a reader expects (MiB, ms, mJ), a
missing value as an em dash, and a mean over several trials as `mean ± half-width of its 95% CI`.

    python -c "from efficientllm.report.tables import number; print(number(1234.5), number(2.5e-5))"
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import duckdb

MIB = 1024.0**2

DISPLAY_UNITS: dict[str, tuple[str, float]] = {
    "bytes": ("MiB", MIB),
    "bytes/token": ("KiB/token", 1024.0),
    "s": ("ms", 1e-3),
    "J/token": ("mJ/token", 1e-3),
    "ratio": ("%", 0.01),
    "x": ("×", 1.0),
}
"""Catalog unit -> (unit shown, divisor): bytes are shown in MiB, seconds in ms, utilisation ratios in percent,
multipliers (MCR) as ×."""


def number(value: float | None) -> str:
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


def ratio(value: float | None) -> str:
    """A ratio to a baseline: `0.75×`."""
    return "—" if value is None or not math.isfinite(value) else f"{value:.2f}×"


def percent_change(value: float | None) -> str:
    """A relative change: `+12.5%`, `-3.0%`."""
    return "—" if value is None or not math.isfinite(value) else f"{100.0 * value:+.1f}%"


def text(value: Any) -> str:
    return "—" if value is None or value == "" else str(value)


def display_unit(unit: str) -> tuple[str, float]:
    """(unit shown, divisor) for a catalog unit; unknown units are shown as they are."""
    return DISPLAY_UNITS.get(unit, (unit, 1.0))


def scaled(value: float | None, unit: str) -> str:
    """`value` in the display unit of `unit` (bytes -> MiB, s -> ms, ...), without the unit."""
    if value is None:
        return "—"
    return number(value / display_unit(unit)[1])


def mean_ci(mean: float | None, ci95: float | None, unit: str) -> str:
    """`mean ± ci` in the display unit (just the mean when there is no CI, i.e. one trial)."""
    if mean is None:
        return "—"
    shown = scaled(mean, unit)
    return shown if ci95 is None else f"{shown} ± {scaled(ci95, unit)}"


def header(label: str, unit: str) -> str:
    """A column header with its display unit: `AL (ms)`; no unit in brackets when there is none."""
    shown = display_unit(unit)[0]
    return f"{label} ({shown})" if shown else label


def markdown_table(headers: Sequence[str], body: Sequence[Sequence[str]], left: Sequence[bool] | None = None) -> str:
    """A GitHub Markdown table; `left` marks left-aligned (text) columns, the rest are right-aligned."""
    left = list(left) if left is not None else [i == 0 for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    align = [":---" if is_left else "---:" for is_left in left]
    return "\n".join([line(headers), "|" + "|".join(align) + "|", *(line(r) for r in body)])


def records(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """The result of `sql` as a list of dicts (column name -> value)."""
    cursor = con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]

