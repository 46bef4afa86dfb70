"""A Markdown diff of two revisions: every metric of every cell, its relative change and whether it got better.

The rows of both revisions are loaded into one database (`efficientllm.pipeline.revisions.connect_revisions`);
the view `revision_diff` pairs each cell-metric at the first revision (A) with the second (B). `compare_markdown`
renders it: a summary line, then one table per board with A, B, the relative change and the verdict
(better / worse in the metric's direction, within noise when both sides have overlapping 95% CIs, same,
added, removed).

    efficientllm compare HEAD~1 workspace --min-change 0.05
    efficientllm compare --cells pretrain@mha pretrain@mqa     # two cells of one revision, every metric, tested

`compare_cells` compares two cells of one revision instead: the paired difference of every metric they share,
each with its test, CI and p (efficientllm.report.evidence).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from efficientllm.report import tables

VERDICTS = ("worse", "better", "within noise", "same", "added", "removed")


def _revision_line(con: duckdb.DuckDBPyConnection) -> list[str]:
    revs = tables.records(con, "SELECT rev, commit, n_rows FROM revisions ORDER BY rev_order")
    lines = []
    for i, r in enumerate(revs):
        name = "A" if i == 0 else ("B" if len(revs) == 2 else f"B{i}")
        commit = f" (commit {r['commit'][:12]})" if r["commit"] else ""
        lines.append(f"- **{name}** = `{r['rev']}`{commit}: {r['n_rows']} row{'s' if r['n_rows'] != 1 else ''}")
    return lines


def compare_markdown(con: duckdb.DuckDBPyConnection, metrics: Sequence[str] | None = None,
                     min_change: float = 0.0, title: str = "Comparison") -> str:
    """Markdown of `revision_diff` on `con`: one table per (rev, axis, stage, board).

    `metrics` keeps those metrics only (names as in `metric_catalog`); `min_change` hides cell-metrics whose
    |relative change| is below it (added and removed ones are always shown).
    """
    rows = tables.records(con, "SELECT * FROM revision_diff")
    if metrics:
        rows = [r for r in rows if r["metric"] in set(metrics)]
    rows = [r for r in rows if r["verdict"] in ("added", "removed")
            or (r["relative_change"] is not None and abs(r["relative_change"]) >= min_change)
            or (r["relative_change"] is None and min_change == 0.0)]
    lines = [f"# {title}", "", *_revision_line(con), ""]
    if not rows:
        revs = con.execute("SELECT count(*) FROM revisions").fetchone()[0]
        reason = "only one revision loaded" if revs < 2 else "no cell-metric matches (or none changed enough)"
        return "\n".join([*lines, f"Nothing to compare: {reason}."]) + "\n"
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    lines += ["Changes of B against A: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + ". "
              "Relative change = (B − A) / |A|; 'better' / 'worse' follow each metric's direction; 'within noise': "
              "both sides have 95% CIs over trials and they overlap.", ""]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["rev"], r["axis"], r["stage"], r["board"]), []).append(r)
    for (rev, axis, stage, board), group in groups.items():
        title_parts = [axis, stage if stage != axis else "", board, f"B = {rev}" if len(groups) > 1 else ""]
        lines += [f"## {' · '.join(p for p in title_parts if p)}", ""]
        body = []
        for r in group:
            label = r["quality_metric"] if r["metric"] == "quality" and r["quality_metric"] else r["label"]
            body.append([r["cell"], tables.header(label, r["unit"] or ""),
                         tables.mean_ci(r["mean_a"], r["ci95_a"], r["unit"] or ""),
                         tables.mean_ci(r["mean_b"], r["ci95_b"], r["unit"] or ""),
                         tables.percent_change(r["relative_change"]), r["verdict"]])
        lines += [tables.markdown_table(["cell", "metric", "A", "B", "change", "verdict"], body,
                                        [True, True, False, False, False, True]), ""]
    return "\n".join(lines).rstrip() + "\n"


# --- two cells of one revision ----------------------------------------------------------------------------------------


def resolve_cell(con: duckdb.DuckDBPyConnection, name: str, rev: str) -> tuple[str, str, str]:
    """(axis, stage, cell) of `stage@cell` or a plain cell name (unique among the ok rows of `rev`); ValueError
    naming the cells there otherwise."""
    stage, _, cell = name.rpartition("@")
    found = tables.records(con, "SELECT DISTINCT axis, stage, cell FROM measured WHERE rev = ? AND status = 'ok' "
                                "AND cell = ? AND (? = '' OR stage = ?)", [rev, cell, stage, stage])
    if len(found) == 1:
        return found[0]["axis"], found[0]["stage"], found[0]["cell"]
    known = [f"{r['stage']}@{r['cell']}" for r in tables.records(
        con, "SELECT DISTINCT stage, cell FROM measured WHERE rev = ? AND status = 'ok' ORDER BY ALL", [rev])]
    why = "is ambiguous: name its stage as stage@cell" if found else "has no ok row"
    raise ValueError(f"--cells: {name!r} {why} (ok cells: {', '.join(known) or 'none'})")


def compare_cells(con: duckdb.DuckDBPyConnection, a: str, b: str, rev: str = "workspace") -> list[dict[str, Any]]:
    """The paired difference (a - b) of every metric the two cells share, each with its test (efficientllm.report
    .evidence): metric, unit, a, b, diff, 95 % CI, p, the test, n, and the verdict for a in the metric's direction
    (better / worse, or not distinguishable at p >= 0.05; no Holm correction: one comparison per metric)."""
    from efficientllm.report.evidence import Evidence

    (axis_a, stage_a, cell_a), (axis_b, stage_b, cell_b) = resolve_cell(con, a, rev), resolve_cell(con, b, rev)
    if (axis_a, stage_a) != (axis_b, stage_b):
        raise ValueError(f"--cells: {a} ({stage_a}) and {b} ({stage_b}) are not cells of one stage")
    ev = Evidence(con)
    catalog = tables.records(con, "SELECT metric, label, unit, higher_is_better FROM metric_catalog WHERE axis = ? "
                                  "ORDER BY position", [axis_a])
    out = []
    for m in catalog:
        c = ev.compare(rev, stage_a, cell_a, cell_b, m["metric"])
        if c.diff is None:
            continue
        higher = m["higher_is_better"]
        if m["metric"] == "quality":
            higher = tables.records(con, "SELECT bool_and(quality_higher_is_better) AS h FROM measured WHERE rev = ? "
                                         "AND stage = ? AND cell = ?", [rev, stage_a, cell_a])[0]["h"]
        verdict = "not distinguishable"
        if c.significant and c.diff != 0:
            verdict = "better" if (c.diff > 0) == bool(higher) else "worse"
        out.append({"metric": m["metric"], "label": m["label"], "unit": m["unit"], "a": c.a, "b": c.b,
                    "diff": c.diff, "ci95_low": c.ci_low, "ci95_high": c.ci_high, "p": c.p, "test": c.method,
                    "n": c.n, "note": c.note, "verdict": verdict})
    return out


def cells_markdown(rows: list[dict[str, Any]], a: str, b: str) -> str:
    """The comparison of two cells as a Markdown table."""
    def num(v: float | None) -> str:
        return "—" if v is None else f"{v:.4g}"

    body = [[r["label"], num(r["a"]), num(r["b"]), num(r["diff"]),
             "—" if r["ci95_low"] is None else f"[{num(r['ci95_low'])}, {num(r['ci95_high'])}]",
             "—" if r["p"] is None else ("<0.001" if r["p"] < 0.001 else f"{r['p']:.3f}"), f"{r['test']} ({r['n']})",
             r["verdict"]] for r in rows]
    head = [f"# {a} vs {b}", "",
            f"Difference = {a} - {b} per metric, with the test that fits it: a paired bootstrap over the examples "
            "both were scored on (quality), Welch's t-test over trials, the machine's noise floor for a one-trial "
            "timing or energy figure, exact for counted bytes. The verdict is for the first cell, in the metric's "
            "direction, at p < 0.05.", ""]
    table = tables.markdown_table(["metric", a, b, "difference", "95% CI", "p", "test (n)", "verdict"], body,
                                  [True] + [False] * 5 + [True, True])
    return "\n".join([*head, table, ""])
