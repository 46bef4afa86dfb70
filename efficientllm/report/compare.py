"""A Markdown diff of two revisions: every metric of every cell, its relative change and whether it got better.

The rows of both revisions are loaded into one database (`efficientllm.pipeline.revisions.connect_revisions`);
the view `revision_diff` pairs each cell-metric at the first revision (A) with the second (B). `compare_markdown`
renders it: a summary line, then one table per board with A, B, the relative change and the verdict
(better / worse in the metric's direction, within noise when both sides have overlapping 95% CIs, same,
added, removed).

    efficientllm compare HEAD~1 workspace --min-change 0.05
"""

from __future__ import annotations

from collections.abc import Sequence

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
