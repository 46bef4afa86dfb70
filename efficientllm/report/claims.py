"""The paper's findings, checked against our rows: each claim is data (a SQL query and a verdict rule).

`CLAIMS` lists the findings of the EfficientLLM study (Yuan et al. 2025, arXiv 2505.13840) that this
benchmark can test. Each `Claim` names the query that fetches the numbers it needs from the report views
(report/sql/claims/<query>.sql) and has a rule that turns those numbers, one board at a time (rev, stage,
board), into a `Verdict`:

- AGREES / DISAGREES: the measured ordering matches / contradicts the paper's, and the difference it rests on is
  significant at 95 % after Holm's correction over every claim of the report (efficientllm.report.stats; the
  test that fits each metric is chosen by efficientllm.report.evidence: a paired bootstrap over the examples for
  quality, Welch over trials, the machine's noise floor for a one-trial timing, exact for counted bytes);
- NOT_DISTINGUISHABLE: the difference is not significant (or no test can be made: one trial and no noise floor);
- NOT_MEASURABLE ("not measurable at this scale"): a cell it needs is missing or failed, or the quantity cannot
  be measured here (energy without a meter, a GPU claim on a CPU).

Every result carries its evidence (test, n, difference with its 95 % CI, p and Holm's adjusted p).
`check_claims(con)` runs them all; the report prints the result as a table.

    efficientllm sql "SELECT 1"  # the views; the claims table is in reports/index.md after `dvc repro report`
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

from efficientllm.report import stats, tables, views
from efficientllm.report.evidence import Evidence

AGREES = "agrees"
DISAGREES = "disagrees"
NOT_DISTINGUISHABLE = "not distinguishable"
NOT_MEASURABLE = "not measurable at this scale"

Row = dict[str, Any]
Compare = Callable[[Row, Row], stats.Comparison]
"""The comparison of two rows of a claim's query (same rev, stage, metric; their cells), a - b."""


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
    p: float | None = None
    """The p-value of the comparison the verdict rests on (None: no test; exact differences have 0)."""
    evidence: str = ""
    """The test, n, difference with its 95 % CI and p, one line."""


Rule = Callable[[list[Row], Compare], Verdict]
"""Rows of a claim's query for one (rev, stage, board), and the comparator -> the verdict."""


@dataclass(frozen=True)
class Claim:
    id: str
    axis: str
    finding: str
    """The paper's finding, in a sentence."""
    query: str
    """The file report/sql/claims/<query>.sql: a query over the report views giving rows with rev, stage, board,
    technique_key, metric, n, mean, ci95_low, ci95_high (and what the rule needs besides). It runs with the named
    parameter $axis = `axis` and `params`."""
    rule: Rule
    needs: tuple[str, ...] = field(default=())
    """Techniques the claim compares, named when no row matches at all."""
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """The query's other named parameters (see its header)."""


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
    evidence: str = ""
    """The test behind the verdict: n, difference with its 95 % CI, p (and Holm's adjusted p)."""
    p: float | None = None
    p_holm: float | None = None


# --- comparing two means ----------------------------------------------------------------------------------------


def _fmt(row: Row) -> str:
    return tables.scaled(row["mean"], row.get("unit") or "")


def _unit(row: Row) -> str:
    shown, _ = tables.display_unit(row.get("unit") or "")
    return f" {shown}" if shown else ""


def _order(a: Row, b: Row, compare: Compare) -> tuple[str, str, stats.Comparison]:
    """('<', '>' or '~', reason, the comparison) for a's mean against b's: '~' unless the test says the
    difference is significant (p < 0.05 before the report's Holm correction)."""
    c = compare(a, b)
    if not c.significant:
        why = c.note or (f"p={c.p:.3f} ({c.method}, {c.n})" if c.p is not None else f"no test ({c.method})")
        return "~", f"not significant: {why}", c
    return ("<" if a["mean"] < b["mean"] else ">"), "", c


def _verdict(verdict: str, measured: str, why: str, c: stats.Comparison | None, missing: tuple = ()) -> Verdict:
    return Verdict(verdict, measured, why, missing, None if c is None else c.p, "" if c is None else c.evidence())


def _by_metric(rows: list[Row], metric: str) -> dict[str, Row]:
    """technique_key -> row of `metric` (the first by cell name when a technique has several cells)."""
    out: dict[str, Row] = {}
    for row in sorted(rows, key=lambda r: str(r["cell"])):
        if row["metric"] == metric and row["mean"] is not None:
            out.setdefault(row["technique_key"], row)
    return out


def extreme(metric: str, targets: Sequence[str], lowest: bool, name: str, group: str = "technique") -> Rule:
    """The best of `targets` has the lowest (or highest) mean of `metric` among every technique in the rows
    (`group` names what the others are, for the message when there are none); tested against the best other."""

    def rule(rows: list[Row], compare: Compare) -> Verdict:
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
        order, reason, c = _order(target, rival, compare)
        word = "lowest" if lowest else "highest"
        if order == "~":
            return _verdict(NOT_DISTINGUISHABLE, measured, f"{name}: {reason}", c)
        if (order == "<") == lowest:
            return _verdict(AGREES, measured, f"{target['technique_key']} has the {word} {name}", c)
        return _verdict(DISAGREES, measured, f"{rival['technique_key']} has a {'lower' if lowest else 'higher'} "
                                             f"{name}", c)

    return rule


def lowest(metric: str, targets: Sequence[str], name: str, group: str = "technique") -> Rule:
    return extreme(metric, targets, True, name, group)


def highest(metric: str, targets: Sequence[str], name: str, group: str = "technique") -> Rule:
    return extreme(metric, targets, False, name, group)


def versus(metric: str, target: str, other: str, expect: str, name: str) -> Rule:
    """`target`'s mean of `metric` is `expect` ('lower' / 'higher') than `other`'s."""

    def rule(rows: list[Row], compare: Compare) -> Verdict:
        cells = _by_metric(rows, metric)
        missing = tuple(t for t in (target, other) if t not in cells)
        if missing:
            return Verdict(NOT_MEASURABLE, "—", f"no ok {' / '.join(missing)} cell with {name}", missing)
        a, b = cells[target], cells[other]
        change = (a["mean"] - b["mean"]) / abs(b["mean"]) if b["mean"] else None
        measured = (f"{name}: {target} {_fmt(a)}{_unit(a)} vs {other} {_fmt(b)}{_unit(b)} "
                    f"({tables.percent_change(change)})")
        order, reason, c = _order(a, b, compare)
        if order == "~":
            return _verdict(NOT_DISTINGUISHABLE, measured, f"{name}: {reason}", c)
        if (order == "<") == (expect == "lower"):
            return _verdict(AGREES, measured, f"{target} has {expect} {name} than {other}", c)
        return _verdict(DISAGREES, measured, f"{target} has {'higher' if expect == 'lower' else 'lower'} {name} "
                                             f"than {other}", c)

    return rule


ENERGY_METRICS = ("aec_w", "energy_j_per_token", "tokens_per_j", "co2_g_per_mtok")
"""Metrics whose value is only as good as the energy meter behind it."""


def metered(rule: Rule, metric: str = "aec_w") -> Rule:
    """`rule`, judged only when every row of `metric` has measured joules (energy_source nvml or rapl): a CPU
    energy estimate is CPU time x watts per core, i.e. a rescaled PCU, and proves nothing about energy."""

    def checked(rows: list[Row], compare: Compare) -> Verdict:
        estimated = sorted({r["technique_key"] for r in rows if r["metric"] == metric and not r.get("energy_measured")})
        if estimated:
            return Verdict(NOT_MEASURABLE, "—", f"energy is an estimate for {', '.join(estimated)} (no NVML / RAPL "
                                                "counter): energy claims are judged on measured joules only")
        return rule(rows, compare)

    return checked


def on_gpu(rule: Rule) -> Rule:
    """`rule`, judged only on GPU rows: for claims the paper made about GPUs (bf16 vs fp16 on Hopper)."""

    def checked(rows: list[Row], compare: Compare) -> Verdict:
        devices = sorted({str(r.get("device")) for r in rows if not str(r.get("device") or "").startswith("cuda")})
        if devices:
            return Verdict(NOT_MEASURABLE, "—", f"a GPU claim, and these rows ran on {', '.join(devices)}")
        return rule(rows, compare)

    return checked


def near(metric: str, targets: Sequence[str], reference: str, band: float, name: str) -> Rule:
    """Every target's mean of `metric` is no worse than `reference`'s by more than `band` (relative, in the metric's
    direction): the technique "keeps" the reference's quality. An equivalence decision on each target's 95 % CI of
    the difference: agrees when every upper bound of its relative worseness is within the band, disagrees when
    one target is significantly worse by more than the band, not distinguishable otherwise (also when there is no
    interval: one trial and no per-example scores)."""

    def rule(rows: list[Row], compare: Compare) -> Verdict:
        cells = _by_metric(rows, metric)
        missing = tuple(t for t in (*targets, reference) if t not in cells)
        if missing:
            return Verdict(NOT_MEASURABLE, "—", f"no ok {' / '.join(missing)} cell with {name}", missing)
        ref = cells[reference]
        higher = bool(ref.get("higher_is_better"))
        scale = abs(ref["mean"]) or 1.0
        measured = f"{name}: {reference} {_fmt(ref)}; " + ", ".join(f"{t} {_fmt(cells[t])}" for t in targets)
        worst, comparisons = None, []
        for t in targets:
            c = compare(cells[t], ref)  # t - reference
            comparisons.append(c)
            if c.ci_low is None:
                why = f"{t} vs {reference}: no interval ({c.note or c.method})"
                return _verdict(NOT_DISTINGUISHABLE, measured, why, c)
            lo, hi = ((-c.ci_high, -c.ci_low) if higher else (c.ci_low, c.ci_high))  # worseness, absolute
            if c.significant and lo / scale > band:
                return _verdict(DISAGREES, measured, f"{t}'s {name} is worse than {reference}'s by {lo / scale:.0%} "
                                                     f"or more (95% CI; > {band:.0%})", c)
            if hi / scale > band:
                worst = (t, hi / scale)
        evidence = " · ".join(c.evidence() for c in comparisons)
        if worst is not None:
            return Verdict(NOT_DISTINGUISHABLE, measured, f"{worst[0]} may be up to {worst[1]:.0%} worse than "
                                                          f"{reference} (95% CI): not within {band:.0%}",
                           evidence=evidence)
        # an equivalence decision (every CI inside the band): outside Holm's family, p stays None
        return Verdict(AGREES, measured, f"every one within {band:.0%} of {reference}'s {name} at 95%",
                       evidence=evidence)

    return rule


def all_of(*rules: Rule) -> Rule:
    """Every part must agree (p: the largest of theirs, the intersection-union test); one disagreeing part
    disagrees (p: its own); otherwise not measurable, then not distinguishable."""

    def rule(rows: list[Row], compare: Compare) -> Verdict:
        parts = [r(rows, compare) for r in rules]
        measured = " · ".join(p.measured for p in parts if p.measured != "—") or "—"
        missing = tuple(dict.fromkeys(m for p in parts for m in p.missing))
        if missing:  # one reason, not one per part
            return Verdict(NOT_MEASURABLE, measured, f"no ok {' / '.join(missing)} cell", missing)
        why = "; ".join(p.why for p in parts)  # every part, so a partial agreement stays visible
        evidence = " · ".join(p.evidence for p in parts if p.evidence)
        disagreeing = [p for p in parts if p.verdict == DISAGREES]
        if disagreeing:
            return Verdict(DISAGREES, measured, why, missing, min(p.p for p in disagreeing), evidence)
        for verdict in (NOT_MEASURABLE, NOT_DISTINGUISHABLE):
            if any(p.verdict == verdict for p in parts):
                return Verdict(verdict, measured, why, missing, None, evidence)
        return Verdict(AGREES, measured, why, missing, max(p.p for p in parts), evidence)

    return rule


def flat_optimum(metric: str, name: str, band: float = 0.05, min_cells: int = 3) -> Rule:
    """A broad optimum: the best shape and the runner-up are equivalent within `band` (relative): the 95 % CI of
    their difference lies inside +- band x best (an equivalence test). Disagrees when the best is significantly
    better than the runner-up by more than the band; not distinguishable otherwise."""

    def rule(rows: list[Row], compare: Compare) -> Verdict:
        cells = sorted(_by_metric(rows, metric).values(), key=lambda r: r["mean"])
        if len(cells) < min_cells:
            return Verdict(NOT_MEASURABLE, "—", f"{len(cells)} ok depth-width cells with {name}; "
                                                f"needs {min_cells}")
        best, second = cells[0], cells[1]
        shapes = ", ".join(f"{r['technique_key']} ({r['cell']}) {_fmt(r)}" for r in cells)
        measured = f"{name}: {shapes}"
        c = compare(second, best)
        margin = band * abs(best["mean"])
        gap = (second["mean"] - best["mean"]) / abs(best["mean"])
        if c.ci_low is not None and -margin <= c.ci_low and c.ci_high <= margin:  # equivalence: outside Holm
            return Verdict(AGREES, measured, f"the runner-up {second['technique_key']} is within {band:.0%} of the "
                                             f"best ({best['technique_key']}), 95% CI inside the band",
                           evidence=c.evidence())
        if c.significant and gap > band:
            return _verdict(DISAGREES, measured, f"{best['technique_key']} is {gap:.1%} better than every other shape "
                                                 f"(> {band:.0%})", c)
        return _verdict(NOT_DISTINGUISHABLE, measured, f"runner-up {gap:.1%} behind the best: neither within "
                                                       f"{band:.0%} at 95% nor significantly beyond it", c)

    return rule


RSLORA_SCALE_PARAMS = 14e9
"""The paper: RSLoRA surpasses LoRA only beyond ~14B parameters."""


def lora_vs_rslora(rows: list[Row], compare: Compare) -> Verdict:
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
    order, reason, c = _order(rs, lora, compare)
    expected = "rslora better" if large else "lora at least as good"
    if order == "~":  # like every rule: a difference within noise supports no verdict, either way
        return _verdict(NOT_DISTINGUISHABLE, measured, reason, c)
    rs_better = (order == "<") != bool(lora.get("higher_is_better"))
    if rs_better == large:
        return _verdict(AGREES, measured, f"{expected}, as the paper expects at this size", c)
    return _verdict(DISAGREES, measured, f"the paper expects {expected} at this size", c)


def int4_compression(rows: list[Row], compare: Compare, nominal: float = 4.0, near: float = 3.0,
                     max_drop: float = 0.05, max_other_share: float = 0.25) -> Verdict:
    """int4 cuts the weights' bytes close to the nominal 4x (>= `near`, measured bytes: exact) at a small quality
    drop: the 95 % CI of the drop against bf16 (a paired test on the same examples) below `max_drop`. When layers
    kept in 16 bits are more than `max_other_share` of the int4 bytes, the whole-model ratio cannot say anything
    about int4 (not measurable): the why gives the quantized layers' own ratio and the quality drop's CI."""
    by = {r["technique_key"]: r for r in rows}
    missing = tuple(t for t in ("int4", "bf16") if t not in by or by[t]["model_size_bytes"] is None)
    if missing:
        return Verdict(NOT_MEASURABLE, "—", f"no ok {' / '.join(missing)} cell with its model size", missing)
    int4, bf16 = by["int4"], by["bf16"]
    compression = bf16["model_size_bytes"] / int4["model_size_bytes"]
    drop = None if int4["quality_vs_bf16"] is None else 1.0 - int4["quality_vs_bf16"]
    drop_text = "—" if drop is None else (f"{drop:.1%}" if drop >= 0 else f"none ({-drop:.1%} better)")
    expected = int4.get("expected_weight_bytes")
    expected_text = f", {bf16['model_size_bytes'] / expected:.2f}× expected from its split" if expected else ""
    measured = (f"bf16 {tables.scaled(bf16['model_size_bytes'], 'bytes')} MiB -> int4 "
                f"{tables.scaled(int4['model_size_bytes'], 'bytes')} MiB = {compression:.2f}× measured"
                f"{expected_text} ({nominal:.0f}× nominal); {int4.get('quality_metric') or 'quality'} drop {drop_text}")
    other = int4.get("weight_bytes_other")
    share = other / int4["model_size_bytes"] if other is not None and int4["model_size_bytes"] else None
    c = compare({**bf16, "metric": "quality"}, {**int4, "metric": "quality"})  # bf16 - int4
    if c.ci_low is not None:
        higher = bf16.get("higher_is_better") is not False
        scale = abs(c.a) or 1.0  # the bf16 score: the drop is relative to it
        lo, hi = ((c.ci_low / scale, c.ci_high / scale) if higher else (-c.ci_high / scale, -c.ci_low / scale))
    if compression < near:
        if share is not None and share > max_other_share:  # the quality drop is still tested, and shown
            layers = (bf16["model_size_bytes"] - other) / max(int4["model_size_bytes"] - other, 1.0)
            quality = f"; quality drop 95% CI {lo:.1%} to {hi:.1%}" if c.ci_low is not None else ""
            return Verdict(NOT_MEASURABLE, measured, f"{share:.0%} of the int4 model's bytes are layers kept in 16 "
                                                     "bits (embeddings, norms, head): a model this small cannot "
                                                     f"approach 4× (its quantized layers: {layers:.2f}×){quality}",
                           evidence=c.evidence() if c.ci_low is not None else "")
        return Verdict(DISAGREES, measured, f"measured compression {compression:.2f}× < {near:.0f}× (counted bytes)",
                       p=0.0, evidence="exact: counted weight bytes")
    if drop is None:
        return Verdict(NOT_MEASURABLE, measured, "no quality ratio to bf16")
    if c.ci_low is None:
        return _verdict(NOT_DISTINGUISHABLE, measured, f"no test of the quality drop ({c.note or c.method})", c)
    if hi <= max_drop:  # an equivalence decision (the CI inside the margin): outside Holm's family, p stays None
        return Verdict(AGREES, measured, f"{compression:.2f}× at a quality drop whose 95% CI ({lo:.1%} to {hi:.1%}) "
                                         f"stays below {max_drop:.0%}", evidence=c.evidence())
    if lo > max_drop:
        return _verdict(DISAGREES, measured, f"quality drop {lo:.1%} to {hi:.1%} (95% CI) > {max_drop:.0%}", c)
    return _verdict(NOT_DISTINGUISHABLE, measured, f"quality drop 95% CI {lo:.1%} to {hi:.1%} straddles "
                                                   f"{max_drop:.0%}", c)


# --- the claims ---------------------------------------------------------------------------------------------------

ATTENTION = ("mha", "mqa", "gqa", "mla", "nsa")
ARCHITECTURES = ("mha", "mamba", "mamba2", "rwkv", "gptneox")


def _scores(metrics: Sequence[str], techniques: Sequence[str] | None = None) -> dict[str, Any]:
    """The parameters of the query `scores`: these metrics, of these techniques (None: every technique)."""
    return {"metrics": list(metrics), "techniques": None if techniques is None else list(techniques)}


CLAIMS: tuple[Claim, ...] = (
    Claim("mqa-memory-latency", "pretrain",
          "MQA has the lowest memory and latency of the attention variants (MHA, MQA, GQA, MLA, NSA); memory is "
          "model memory: the allocator peak on a GPU, the counted tensors on a CPU (not the process RSS)",
          "scores", all_of(lowest("model_mem_bytes", ("mqa",), "model memory", "attention variant"),
                           lowest("al_s", ("mqa",), "AL", "attention variant")), ("mqa",),
          _scores(("model_mem_bytes", "al_s"), ATTENTION)),
    Claim("mla-perplexity", "pretrain", "MLA reaches the lowest perplexity of the attention variants",
          "scores", lowest("quality", ("mla",), "perplexity", "attention variant"), ("mla",),
          _scores(("quality",), ATTENTION)),
    Claim("nsa-energy-latency", "pretrain",
          "NSA has the lowest energy (AEC) of the attention variants but the highest latency",
          "scores", all_of(metered(lowest("aec_w", ("nsa",), "AEC", "attention variant")),
                           highest("al_s", ("nsa",), "AL", "attention variant")), ("nsa",),
          _scores(("aec_w", "al_s"), ATTENTION)),
    Claim("moe-quality-memory", "pretrain",
          "MoE reaches a better perplexity than the dense model at more memory (+~40% VRAM; model memory here)",
          "scores", all_of(versus("quality", "moe", "mha", "lower", "perplexity"),
                           versus("model_mem_bytes", "moe", "mha", "higher", "model memory")), ("moe", "mha"),
          _scores(("quality", "model_mem_bytes"), ("moe", "mha"))),
    Claim("mamba-memory", "pretrain",
          "Mamba has the lowest memory of the architectures (Transformer, Mamba, Pythia / GPT-NeoX, RWKV; model "
          "memory)",
          "scores", lowest("model_mem_bytes", ("mamba", "mamba2"), "model memory",
                           "architecture (mha, rwkv, gptneox)"),
          ("mamba", "mamba2"), _scores(("model_mem_bytes",), ARCHITECTURES)),
    Claim("rope-perplexity", "pretrain",
          "RoPE gives the best perplexity among positional encodings (RoPE, absolute, learned, relative, none)",
          "positional", lowest("quality", ("rope",), "perplexity", "positional encoding (pe-* cells)"), ("rope",)),
    Claim("depth-width-flat", "pretrain",
          "Perplexity has a flat optimum across depth-width ratios (layers x hidden) at a fixed parameter budget "
          "(our own addition: no such experiment was found in the paper)",
          "depth_width", flat_optimum("quality", "perplexity"), ("dw-*",)),
    Claim("freeze-fastest", "finetune", "Layer freezing has the lowest latency per step of the fine-tuning methods",
          "scores", lowest("al_s", ("freeze",), "AL", "fine-tuning method"), ("freeze",), _scores(("al_s",))),
    Claim("dora-slowest", "finetune", "DoRA has the highest latency per step of the fine-tuning methods",
          "scores", highest("al_s", ("dora",), "AL", "fine-tuning method"), ("dora",), _scores(("al_s",))),
    Claim("rslora-scale", "finetune",
          "RSLoRA beats LoRA only beyond ~14B parameters (below, LoRA is at least as good)",
          "rslora", lora_vs_rslora, ("lora", "rslora")),
    Claim("int4-compression", "quantize",
          "int4 cuts model memory close to 4× at a small (3-5%) quality drop (the paper's 'up to 3.9×' is its "
          "nominal compression rate; its measured memory fell far less); judged here on measured weight bytes",
          "int4", int4_compression, ("int4", "bf16")),
    Claim("bf16-vs-fp16", "quantize",
          "bf16 serves with lower latency and energy than fp16 (a Hopper-GPU claim: judged on GPU rows only)",
          "scores", on_gpu(all_of(versus("al_s", "bf16", "fp16", "lower", "AL"),
                                  metered(versus("aec_w", "bf16", "fp16", "lower", "AEC")))), ("bf16", "fp16"),
          _scores(("al_s", "aec_w"), ("bf16", "fp16"))),
    # the vision axis (paper section 6: the techniques transfer to a DiT and to PEFT on vision models)
    Claim("vision-mqa-gqa-kv", "pretrain_vision",
          "Vision (DiT): MQA / GQA hold fewer key/value bytes per image token than MHA and keep its generation "
          "quality (FD within 25%)",
          "scores", all_of(versus("kv_cache_bytes_per_token", "mqa", "mha", "lower", "K/V bytes"),
                           versus("kv_cache_bytes_per_token", "gqa", "mha", "lower", "K/V bytes"),
                           near("quality", ("mqa", "gqa"), "mha", 0.25, "FD")), ("mqa", "gqa", "mha"),
          _scores(("kv_cache_bytes_per_token", "quality"), ("mha", "mqa", "gqa"))),
    Claim("vision-mqa-memory-latency", "pretrain_vision",
          "Vision (DiT): MQA has the lowest memory and latency of the attention variants, as in text (model memory)",
          "scores", all_of(lowest("model_mem_bytes", ("mqa",), "model memory", "attention variant"),
                           lowest("al_s", ("mqa",), "AL", "attention variant")), ("mqa",),
          _scores(("model_mem_bytes", "al_s"), ("mha", "mqa", "gqa", "mla"))),
    Claim("vision-full-quality", "finetune_vision",
          "Vision (PEFT on the DiT): full fine-tuning reaches the best quality (lowest FD); the PEFT methods trade "
          "quality for fewer trained parameters, as in text",
          "scores", lowest("quality", ("full",), "FD", "fine-tuning method"), ("full",), _scores(("quality",))),
    Claim("vision-freeze-fastest", "finetune_vision",
          "Vision (PEFT on the DiT): layer freezing has the lowest latency per step, as in text",
          "scores", lowest("al_s", ("freeze",), "AL", "fine-tuning method"), ("freeze",), _scores(("al_s",))),
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


def _comparator(ev: Evidence) -> Compare:
    def compare(a: Row, b: Row) -> stats.Comparison:
        return ev.compare(a["rev"], a["stage"], a["cell"], b["cell"], a["metric"])

    return compare


def check_claims(con: duckdb.DuckDBPyConnection, claims: Sequence[Claim] = CLAIMS,
                 rev: str | None = None) -> list[ClaimResult]:
    """Every claim's verdict for every (rev, stage, board) its query returns rows for; a claim with no rows at
    all gets one NOT_MEASURABLE result. `rev` keeps one revision only. The tested verdicts of one revision form
    one family: Holm's correction over them turns an agrees / disagrees whose adjusted p >= 0.05 into
    NOT_DISTINGUISHABLE."""
    failures = _failure_notes(con)
    compare = _comparator(Evidence(con))
    results: list[ClaimResult] = []
    for claim in claims:
        groups: dict[tuple[str, str, str], list[Row]] = {}
        sql = views.query(f"claims/{claim.query}")
        for row in tables.records(con, sql, {"axis": claim.axis, **claim.params}):
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
            verdict = claim.rule(rows, compare)
            why = verdict.why
            notes = [failures[(g_rev, stage, m)] for m in verdict.missing if (g_rev, stage, m) in failures]
            if notes:
                why += f" ({'; '.join(notes)})"
            elif verdict.missing:
                why += " (no row for it: not in this run's matrix)"
            results.append(ClaimResult(claim.id, claim.axis, claim.finding, g_rev, stage, board, verdict.verdict,
                                       verdict.measured, why, verdict.evidence, verdict.p))
    return holm_corrected(results)


def holm_corrected(results: list[ClaimResult]) -> list[ClaimResult]:
    """Holm's adjusted p for every tested agrees / disagrees, per revision; those at or above ALPHA become
    NOT_DISTINGUISHABLE (their evidence says so)."""
    out = list(results)
    for rev in dict.fromkeys(r.rev for r in results):
        idx = [i for i, r in enumerate(out) if r.rev == rev and r.verdict in (AGREES, DISAGREES) and r.p is not None]
        for i, adjusted in zip(idx, stats.holm([out[i].p for i in idx]), strict=True):
            r = out[i]
            if adjusted >= stats.ALPHA:
                out[i] = dataclasses.replace(r, verdict=NOT_DISTINGUISHABLE, p_holm=adjusted,
                                             why=f"{r.why} — but not significant after Holm's correction over the "
                                                 f"report's {len(idx)} tested claims (p={adjusted:.3f})")
            else:
                out[i] = dataclasses.replace(r, p_holm=adjusted)
    return out
