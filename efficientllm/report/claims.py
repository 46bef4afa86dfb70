"""The paper's findings, checked against our rows: each claim is data (a SQL query and a verdict rule).

`CLAIMS` lists the findings of the EfficientLLM study (Yuan et al. 2025, arXiv 2505.13840) that this
benchmark can test. Each `Claim` has the query that fetches the numbers it needs from the report views and
a rule that turns those numbers, one board at a time (rev, stage, board), into a `Verdict`:

- AGREES / DISAGREES: the measured ordering matches / contradicts the paper's;
- NOT_MEASURABLE ("not measurable at this scale"): a cell it needs is missing or failed, or the difference
  is within noise: the 95% CIs of the two means overlap or, with a single trial (no CI), the means differ
  by less than the claim's `tolerance` (2% unless a claim says otherwise).

`check_claims(con)` runs them all; the report prints the result as a table.

    efficientllm sql "SELECT 1"  # the views; the claims table is in reports/index.md after `dvc repro report`
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

from efficientllm.report import tables

AGREES = "agrees"
DISAGREES = "disagrees"
NOT_MEASURABLE = "not measurable at this scale"

TOLERANCE = 0.02
"""Relative difference below which two single-trial means are treated as equal (no CI to tell noise from signal)."""

Row = dict[str, Any]


@dataclass(frozen=True)
class Verdict:
    verdict: str
    """AGREES, DISAGREES or NOT_MEASURABLE."""
    measured: str
    """The numbers behind the verdict, one line."""
    why: str
    """Why this verdict, one line."""
    missing: tuple[str, ...] = ()
    """Techniques the rule needed but found no ok cell for (the report adds why, from `failures`)."""


Rule = Callable[[list[Row]], Verdict]
"""Rows of a claim's query for one (rev, stage, board) -> the verdict."""


@dataclass(frozen=True)
class Claim:
    id: str
    axis: str
    finding: str
    """The paper's finding, in a sentence."""
    sql: str
    """Query over the report views: rows with rev, stage, board, technique_key, metric, n, mean, ci95_low,
    ci95_high (and what the rule needs besides)."""
    rule: Rule
    needs: tuple[str, ...] = field(default=())
    """Techniques the claim compares, named when no row matches at all."""


@dataclass(frozen=True)
class ClaimResult:
    claim_id: str
    axis: str
    finding: str
    rev: str | None
    stage: str | None
    board: str | None
    verdict: str
    measured: str
    why: str


# --- comparing two means ----------------------------------------------------------------------------------------


def _fmt(row: Row) -> str:
    return tables.scaled(row["mean"], row.get("unit") or "")


def _unit(row: Row) -> str:
    shown, _ = tables.display_unit(row.get("unit") or "")
    return f" {shown}" if shown else ""


def _order(a: Row, b: Row, tolerance: float) -> tuple[str, str]:
    """('<', '>' or '~', reason) for a.mean against b.mean; '~' when the difference is within noise."""
    if a.get("ci95_low") is not None and b.get("ci95_low") is not None:
        if a["ci95_low"] <= b["ci95_high"] and b["ci95_low"] <= a["ci95_high"]:
            return "~", "their 95% CIs overlap"
    else:
        scale = max(abs(a["mean"]), abs(b["mean"]))
        gap = abs(a["mean"] - b["mean"]) / scale if scale else 0.0
        if gap < tolerance:
            return "~", f"they differ by {gap:.1%} (< {tolerance:.0%}) with a single trial, so no CI"
    return ("<" if a["mean"] < b["mean"] else ">"), ""


def _by_metric(rows: list[Row], metric: str) -> dict[str, Row]:
    """technique_key -> row of `metric` (the first by cell name when a technique has several cells)."""
    out: dict[str, Row] = {}
    for row in sorted(rows, key=lambda r: str(r["cell"])):
        if row["metric"] == metric and row["mean"] is not None:
            out.setdefault(row["technique_key"], row)
    return out


def extreme(metric: str, targets: Sequence[str], lowest: bool, name: str, tolerance: float = TOLERANCE,
            group: str = "technique") -> Rule:
    """The best of `targets` has the lowest (or highest) mean of `metric` among every technique in the rows
    (`group` names what the others are, for the message when there are none)."""

    def rule(rows: list[Row]) -> Verdict:
        cells = _by_metric(rows, metric)
        present = [t for t in targets if t in cells]
        if not present:
            return Verdict(NOT_MEASURABLE, "—", f"no ok {' / '.join(targets)} cell with {name}", tuple(targets))
        pick = min if lowest else max
        target = pick((cells[t] for t in present), key=lambda r: r["mean"])
        others = [r for t, r in cells.items() if t not in targets]
        if not others:
            return Verdict(NOT_MEASURABLE, f"{name}: {target['technique_key']} {_fmt(target)}{_unit(target)}",
                           f"no other {group} with {name} measured to compare with")
        rival = pick(others, key=lambda r: r["mean"])
        measured = (f"{name}: {target['technique_key']} {_fmt(target)}{_unit(target)}; best other "
                    f"{rival['technique_key']} {_fmt(rival)}{_unit(rival)} (of {len(cells)})")
        order, reason = _order(target, rival, tolerance)
        word = "lowest" if lowest else "highest"
        if order == "~":
            return Verdict(NOT_MEASURABLE, measured, f"{name} within noise: {reason}")
        if (order == "<") == lowest:
            return Verdict(AGREES, measured, f"{target['technique_key']} has the {word} {name}")
        return Verdict(DISAGREES, measured, f"{rival['technique_key']} has a {'lower' if lowest else 'higher'} {name}")

    return rule


def lowest(metric: str, targets: Sequence[str], name: str, group: str = "technique",
           tolerance: float = TOLERANCE) -> Rule:
    return extreme(metric, targets, True, name, tolerance, group)


def highest(metric: str, targets: Sequence[str], name: str, group: str = "technique",
            tolerance: float = TOLERANCE) -> Rule:
    return extreme(metric, targets, False, name, tolerance, group)


def versus(metric: str, target: str, other: str, expect: str, name: str, tolerance: float = TOLERANCE) -> Rule:
    """`target`'s mean of `metric` is `expect` ('lower' / 'higher') than `other`'s."""

    def rule(rows: list[Row]) -> Verdict:
        cells = _by_metric(rows, metric)
        missing = tuple(t for t in (target, other) if t not in cells)
        if missing:
            return Verdict(NOT_MEASURABLE, "—", f"no ok {' / '.join(missing)} cell with {name}", missing)
        a, b = cells[target], cells[other]
        change = (a["mean"] - b["mean"]) / abs(b["mean"]) if b["mean"] else None
        measured = (f"{name}: {target} {_fmt(a)}{_unit(a)} vs {other} {_fmt(b)}{_unit(b)} "
                    f"({tables.percent_change(change)})")
        order, reason = _order(a, b, tolerance)
        if order == "~":
            return Verdict(NOT_MEASURABLE, measured, f"{name} within noise: {reason}")
        if (order == "<") == (expect == "lower"):
            return Verdict(AGREES, measured, f"{target} has {expect} {name} than {other}")
        return Verdict(DISAGREES, measured, f"{target} has {'higher' if expect == 'lower' else 'lower'} {name} "
                                            f"than {other}")

    return rule


def all_of(*rules: Rule) -> Rule:
    """Every part must agree; one disagreeing part disagrees; otherwise not measurable."""

    def rule(rows: list[Row]) -> Verdict:
        parts = [r(rows) for r in rules]
        measured = " · ".join(p.measured for p in parts if p.measured != "—") or "—"
        missing = tuple(dict.fromkeys(m for p in parts for m in p.missing))
        if missing:  # one reason, not one per part
            return Verdict(NOT_MEASURABLE, measured, f"no ok {' / '.join(missing)} cell", missing)
        why = "; ".join(p.why for p in parts)  # every part, so a partial agreement stays visible
        for verdict in (DISAGREES, NOT_MEASURABLE):
            if any(p.verdict == verdict for p in parts):
                return Verdict(verdict, measured, why, missing)
        return Verdict(AGREES, measured, why, missing)

    return rule


def flat_optimum(metric: str, name: str, band: float = 0.05, min_cells: int = 3) -> Rule:
    """A broad optimum: besides the best cell, at least one other lies within `band` (relative) of it, or its
    95% CI overlaps the best one's. Disagrees when the best is clearly ahead of every other shape."""

    def rule(rows: list[Row]) -> Verdict:
        cells = sorted(_by_metric(rows, metric).values(), key=lambda r: r["mean"])
        if len(cells) < min_cells:
            return Verdict(NOT_MEASURABLE, "—", f"{len(cells)} ok depth-width cells with {name}; "
                                                f"needs {min_cells}")
        best = cells[0]
        near = [r for r in cells[1:] if (r["mean"] - best["mean"]) / abs(best["mean"]) <= band
                or _order(r, best, 0.0)[0] == "~"]
        shapes = ", ".join(f"{r['technique_key']} ({r['cell']}) {_fmt(r)}" for r in cells)
        measured = f"{name}: {shapes}"
        if near:
            return Verdict(AGREES, measured, f"{len(near) + 1} of {len(cells)} shapes within {band:.0%} of the best "
                                             f"({best['technique_key']})")
        gap = (cells[1]["mean"] - best["mean"]) / abs(best["mean"])
        return Verdict(DISAGREES, measured, f"{best['technique_key']} is {gap:.1%} better than every other shape "
                                            f"(> {band:.0%})")

    return rule


RSLORA_SCALE_PARAMS = 14e9
"""The paper: RSLoRA surpasses LoRA only beyond ~14B parameters."""


def lora_vs_rslora(rows: list[Row]) -> Verdict:
    """Below ~14B parameters LoRA's eval loss is at least as good as RSLoRA's; above, RSLoRA's is better."""
    cells = _by_metric(rows, "quality")
    missing = tuple(t for t in ("lora", "rslora") if t not in cells)
    if missing:
        return Verdict(NOT_MEASURABLE, "—", f"no ok {' / '.join(missing)} cell", missing)
    lora, rs = cells["lora"], cells["rslora"]
    n_params = max((r.get("n_params") or 0) for r in (lora, rs))
    large = n_params >= RSLORA_SCALE_PARAMS
    measured = (f"{lora.get('quality_metric') or 'quality'}: lora {_fmt(lora)} vs rslora {_fmt(rs)} "
                f"at {tables.number(n_params / 1e6)}M params")
    order, reason = _order(rs, lora, TOLERANCE)
    expected = "rslora better" if large else "lora at least as good"
    if order == "~":
        if large:
            return Verdict(NOT_MEASURABLE, measured, f"within noise: {reason}")
        return Verdict(AGREES, measured, f"below 14B the paper expects {expected}: equal within noise ({reason})")
    rs_better = (order == "<") != bool(lora.get("higher_is_better"))
    if rs_better == large:
        return Verdict(AGREES, measured, f"{expected}, as the paper expects at this size")
    return Verdict(DISAGREES, measured, f"the paper expects {expected} at this size")


def int4_compression(rows: list[Row], nominal: float = 4.0, near: float = 3.0, max_drop: float = 0.05,
                     max_other_share: float = 0.25) -> Verdict:
    """int4 cuts the weights' bytes close to the nominal 4x (>= `near`) at a small quality drop (<= `max_drop`)."""
    by = {r["technique_key"]: r for r in rows}
    missing = tuple(t for t in ("int4", "bf16") if t not in by or by[t]["model_size_bytes"] is None)
    if missing:
        return Verdict(NOT_MEASURABLE, "—", f"no ok {' / '.join(missing)} cell with its model size", missing)
    int4, bf16 = by["int4"], by["bf16"]
    compression = bf16["model_size_bytes"] / int4["model_size_bytes"]
    drop = None if int4["quality_vs_bf16"] is None else 1.0 - int4["quality_vs_bf16"]
    drop_text = "—" if drop is None else (f"{drop:.1%}" if drop >= 0 else f"none ({-drop:.1%} better)")
    measured = (f"bf16 {tables.scaled(bf16['model_size_bytes'], 'bytes')} MiB -> int4 "
                f"{tables.scaled(int4['model_size_bytes'], 'bytes')} MiB = {compression:.2f}× measured "
                f"({nominal:.0f}× nominal); {int4.get('quality_metric') or 'quality'} drop {drop_text}")
    other = int4.get("weight_bytes_other")
    share = other / int4["model_size_bytes"] if other is not None and int4["model_size_bytes"] else None
    if compression < near:
        if share is not None and share > max_other_share:
            return Verdict(NOT_MEASURABLE, measured, f"{share:.0%} of the int4 model's bytes are layers kept in 16 "
                                                     "bits (embeddings, norms, head): a model this small cannot "
                                                     "approach 4×")
        return Verdict(DISAGREES, measured, f"measured compression {compression:.2f}× < {near:.0f}×")
    if drop is None:
        return Verdict(NOT_MEASURABLE, measured, "no quality ratio to bf16")
    if drop > max_drop:
        return Verdict(DISAGREES, measured, f"quality drop {drop:.1%} > {max_drop:.0%}")
    return Verdict(AGREES, measured, f"{compression:.2f}× at a {max(drop, 0.0):.1%} quality drop")


# --- the claims ---------------------------------------------------------------------------------------------------

ATTENTION = ("mha", "mqa", "gqa", "mla", "nsa")
ARCHITECTURES = ("mha", "mamba", "mamba2", "rwkv", "gptneox")


def _scores_sql(axis: str, metrics: Sequence[str], techniques: Sequence[str] | None = None) -> str:
    listed = ", ".join(f"'{m}'" for m in metrics)
    where = f"axis = '{axis}' AND metric IN ({listed})"
    if techniques is not None:
        where += " AND technique_key IN (" + ", ".join(f"'{t}'" for t in techniques) + ")"
    return ("SELECT rev, stage, board, cell, technique_key, metric, quality_metric, unit, higher_is_better, n, mean, "
            f"ci95_low, ci95_high FROM scores WHERE {where}")


# Cells that differ from the `mha` baseline only in their positional encoding (same attention, MLP, family and
# shape, from the rows' `extra`); `technique_key` becomes the encoding, so 'rope' is whichever rope cell exists.
POSITIONAL_SQL = """
WITH arch AS (
    SELECT DISTINCT rev, stage, board, cell,
        extra ->> '$.positional' AS positional,
        concat_ws('/', extra ->> '$.attention', extra ->> '$.mlp', coalesce(extra ->> '$.family', 'efficientlm'),
                  extra ->> '$.hidden_size', extra ->> '$.num_hidden_layers', extra ->> '$.num_attention_heads',
                  extra ->> '$.num_key_value_heads', extra ->> '$.intermediate_size') AS shape
    FROM measured
    WHERE axis = 'pretrain' AND status = 'ok' AND extra ->> '$.positional' IS NOT NULL
),
same_shape AS (
    SELECT a.* FROM arch AS a
    JOIN arch AS b ON b.rev = a.rev AND b.stage = a.stage AND b.board = a.board AND b.cell = 'mha'
        AND b.shape = a.shape
)
SELECT s.rev, s.stage, s.board, s.cell, p.positional AS technique_key, s.metric, s.quality_metric, s.unit,
       s.higher_is_better, s.n, s.mean, s.ci95_low, s.ci95_high
FROM scores AS s
JOIN same_shape AS p USING (rev, stage, board, cell)
WHERE s.metric = 'quality'
"""

# The depth-width recipes (dw-*) and the baseline `mha`, which is the base shape of the sweep; technique_key becomes
# the shape ('<layers>x<hidden>'), so a dw-base recipe identical to mha counts once.
DEPTH_WIDTH_SQL = """
WITH shapes AS (
    SELECT DISTINCT rev, stage, board, cell,
        coalesce((extra ->> '$.num_hidden_layers') || 'x' || (extra ->> '$.hidden_size'), cell) AS shape
    FROM measured
    WHERE axis = 'pretrain' AND status = 'ok' AND (cell LIKE 'dw-%' OR cell = 'mha')
)
SELECT s.rev, s.stage, s.board, s.cell, h.shape AS technique_key, s.metric, s.quality_metric, s.unit,
       s.higher_is_better, s.n, s.mean, s.ci95_low, s.ci95_high
FROM scores AS s
JOIN shapes AS h USING (rev, stage, board, cell)
WHERE s.metric = 'quality'
"""

RSLORA_SQL = """
SELECT s.rev, s.stage, s.board, s.cell, s.technique_key, s.metric, s.quality_metric, s.unit, s.higher_is_better, s.n,
       s.mean, s.ci95_low, s.ci95_high,
       (SELECT max(coalesce(TRY_CAST(m.extra ->> '$.n_params_base' AS BIGINT), m.n_params)) FROM measured AS m
        WHERE m.rev = s.rev AND m.stage = s.stage AND m.cell = s.cell AND m.status = 'ok') AS n_params
FROM scores AS s
WHERE s.axis = 'finetune' AND s.metric = 'quality' AND s.technique_key IN ('lora', 'rslora')
"""

INT4_SQL = """
SELECT rev, stage, board, any_value(cell) AS cell, technique_key, 'model_size_bytes' AS metric,
       any_value(quality_metric) AS quality_metric, avg(model_size_bytes) AS model_size_bytes,
       avg(quality_ratio_vs_baseline) AS quality_vs_bf16,
       avg(TRY_CAST(extra ->> '$.weight_bytes_other' AS DOUBLE)) AS weight_bytes_other
FROM measured
WHERE axis = 'quantize' AND status = 'ok' AND technique_key IN ('int4', 'bf16')
GROUP BY rev, stage, board, technique_key
"""

CLAIMS: tuple[Claim, ...] = (
    Claim("mqa-memory-latency", "pretrain",
          "MQA has the lowest memory and latency of the attention variants (MHA, MQA, GQA, MLA, NSA)",
          _scores_sql("pretrain", ("amu_bytes", "al_s"), ATTENTION),
          all_of(lowest("amu_bytes", ("mqa",), "AMU", "attention variant"),
                 lowest("al_s", ("mqa",), "AL", "attention variant")), ("mqa",)),
    Claim("mla-perplexity", "pretrain", "MLA reaches the lowest perplexity of the attention variants",
          _scores_sql("pretrain", ("quality",), ATTENTION),
          lowest("quality", ("mla",), "perplexity", "attention variant"), ("mla",)),
    Claim("nsa-energy-latency", "pretrain",
          "NSA has the lowest energy (AEC) of the attention variants but the highest latency",
          _scores_sql("pretrain", ("aec_w", "al_s"), ATTENTION),
          all_of(lowest("aec_w", ("nsa",), "AEC", "attention variant"),
                 highest("al_s", ("nsa",), "AL", "attention variant")), ("nsa",)),
    Claim("moe-quality-memory", "pretrain",
          "MoE reaches a better perplexity than the dense model at more memory (+~40% VRAM)",
          _scores_sql("pretrain", ("quality", "amu_bytes"), ("moe", "mha")),
          all_of(versus("quality", "moe", "mha", "lower", "perplexity"),
                 versus("amu_bytes", "moe", "mha", "higher", "AMU")), ("moe", "mha")),
    Claim("mamba-memory", "pretrain",
          "Mamba has the lowest memory of the architectures (Transformer, Mamba, Pythia / GPT-NeoX, RWKV)",
          _scores_sql("pretrain", ("amu_bytes",), ARCHITECTURES),
          lowest("amu_bytes", ("mamba", "mamba2"), "AMU", "architecture (mha, rwkv, gptneox)"),
          ("mamba", "mamba2")),
    Claim("rope-perplexity", "pretrain",
          "RoPE gives the best perplexity among positional encodings (RoPE, absolute, learned, relative, none)",
          POSITIONAL_SQL, lowest("quality", ("rope",), "perplexity", "positional encoding (pe-* cells)"),
          ("rope",)),
    Claim("depth-width-flat", "pretrain",
          "Perplexity has a flat optimum across depth-width ratios (layers x hidden) at a fixed parameter budget",
          DEPTH_WIDTH_SQL, flat_optimum("quality", "perplexity"), ("dw-*",)),
    Claim("freeze-fastest", "finetune", "Layer freezing has the lowest latency per step of the fine-tuning methods",
          _scores_sql("finetune", ("al_s",)), lowest("al_s", ("freeze",), "AL", "fine-tuning method"), ("freeze",)),
    Claim("dora-slowest", "finetune", "DoRA has the highest latency per step of the fine-tuning methods",
          _scores_sql("finetune", ("al_s",)), highest("al_s", ("dora",), "AL", "fine-tuning method"), ("dora",)),
    Claim("rslora-scale", "finetune",
          "RSLoRA beats LoRA only beyond ~14B parameters (below, LoRA is at least as good)",
          RSLORA_SQL, lora_vs_rslora, ("lora", "rslora")),
    Claim("int4-compression", "quantize",
          "int4 cuts model memory close to 4× (nominal; up to 3.9× measured) at a small (3-5%) quality drop",
          INT4_SQL, int4_compression, ("int4", "bf16")),
    Claim("bf16-vs-fp16", "quantize",
          "bf16 serves with lower latency and energy than fp16 (paper: on Hopper GPUs)",
          _scores_sql("quantize", ("al_s", "aec_w"), ("bf16", "fp16")),
          all_of(versus("al_s", "bf16", "fp16", "lower", "AL"), versus("aec_w", "bf16", "fp16", "lower", "AEC")),
          ("bf16", "fp16")),
)
"""The paper's findings this benchmark checks, in the order the report lists them."""


def _failure_notes(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str, str], str]:
    """(rev, stage, technique) -> 'failed: <summary>' for cells whose latest row did not succeed."""
    notes: dict[tuple[str, str, str], str] = {}
    for f in tables.records(con, "SELECT rev, stage, cell, technique, status, error_summary FROM failures"):
        note = f"{f['cell']} {f['status']}" + (f": {f['error_summary']}" if f["error_summary"] else "")
        for key in {f["technique"], f["cell"]} - {None}:
            notes.setdefault((f["rev"], f["stage"], key), note)
    return notes


def check_claims(con: duckdb.DuckDBPyConnection, claims: Sequence[Claim] = CLAIMS,
                 rev: str | None = None) -> list[ClaimResult]:
    """Every claim's verdict for every (rev, stage, board) its query returns rows for; a claim with no rows at
    all gets one NOT_MEASURABLE result. `rev` keeps one revision only."""
    failures = _failure_notes(con)
    results: list[ClaimResult] = []
    for claim in claims:
        groups: dict[tuple[str, str, str], list[Row]] = {}
        for row in tables.records(con, claim.sql):
            if rev is None or row["rev"] == rev:
                groups.setdefault((row["rev"], row["stage"], row["board"]), []).append(row)
        if not groups:
            notes = sorted({note for (r, _, key), note in failures.items()
                            if (rev is None or r == rev) and key in claim.needs})
            why = f"no ok cells for it in these rows (needs {', '.join(claim.needs)})"
            results.append(ClaimResult(claim.id, claim.axis, claim.finding, rev, None, None, NOT_MEASURABLE, "—",
                                       why + (f"; {'; '.join(notes)}" if notes else "")))
            continue
        for (g_rev, stage, board), rows in sorted(groups.items()):
            verdict = claim.rule(rows)
            why = verdict.why
            notes = [failures[(g_rev, stage, m)] for m in verdict.missing if (g_rev, stage, m) in failures]
            if notes:
                why += f" ({'; '.join(notes)})"
            elif verdict.missing:
                why += " (no row for it: not in this run's matrix)"
            results.append(ClaimResult(claim.id, claim.axis, claim.finding, g_rev, stage, board, verdict.verdict,
                                       verdict.measured, why))
    return results
