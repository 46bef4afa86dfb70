"""The evidence behind a comparison of two cells: the right test for each metric, on the data behind the means.

`Evidence(con).compare(rev, stage, cell_a, cell_b, metric)` picks (efficientllm.report.stats):

- `quality` of two cells with per-example scores on the same examples (`example_scores`): a paired bootstrap
  over the examples (and the trials of each cell). Cells that *trained* a model (`TRAINED_STAGES`) need two or
  more trials each: one training seed per cell leaves the seed-to-seed variation out of the interval (two fresh
  clones of the default run, seeds 1234 and 1235, found "MLA lowest perplexity" and "MoE better than dense"
  significant in opposite directions on one trial each), so one trial gives the difference, no interval, no p;
- a count that does not vary between runs (weight bytes, KV-cache bytes per token, counted tensor memory on a
  CPU): exact;
- two or more trials on both sides: Welch's t-test over the trial values (`trial_metrics`);
- one trial: the relative difference against this machine's noise floor (the latest `noise` row's CV of the
  metric's family, `FLOOR_OF`); quality without examples or trials: no test. A timing or energy figure from a
  window in which other processes took `BUSY_CORES` or more of the machine (`other_cpu_cores`) is not compared
  at all on one trial: the floor was measured on a quiet machine, and such a difference is the other job's;

`cell_interval(...)` gives one cell's own 95 % interval of a metric: the bootstrap over its examples for quality,
the t interval over trials, or, for AL with one trial, a moving-block bootstrap over its step samples.

    efficientllm compare --cells pretrain@mha pretrain@mqa     # every shared metric, with this evidence
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
import numpy as np

from efficientllm.report import stats, tables

EXACT_METRICS = frozenset({"model_size_bytes", "kv_cache_bytes_per_token", "mcr_nominal"})
"""Metrics computed from counts, the same in every run: a difference between two cells is exact."""

FLOOR_OF: dict[str, str] = {
    "al_s": "al_s", "latency_s_p50": "al_s", "latency_s_p99": "al_s", "ttft_s_p50": "al_s", "tpot_s_p50": "al_s",
    "tokens_per_s": "tokens_per_s", "tt_tokens_per_param_s": "tokens_per_s", "st_samples_per_param_s": "tokens_per_s",
    "it_tokens_per_s": "tokens_per_s", "mfu": "tokens_per_s",
    "aec_w": "aec_w", "energy_j_per_token": "aec_w", "co2_g_per_mtok": "aec_w", "cost_usd_per_mtok": "tokens_per_s",
    "peak_mem_bytes": "peak_mem_bytes", "amu_bytes": "amu_bytes", "pcu_ratio": "pcu_ratio",
}
"""Report metric -> the noise-floor column (efficientllm.measure.noise.NOISE_COLUMNS) whose CV stands for its
run-to-run spread."""

TRAINED_STAGES = frozenset({"pretrain", "finetune", "pretrain_vision", "finetune_vision", "finetune_vlm"})
"""Stages whose cells train the model they are judged on: their quality varies with the training seed."""

LOAD_SENSITIVE = frozenset({"al_s", "tokens_per_s", "aec_w", "pcu_ratio"})
"""Floor families whose one-trial figures a busy machine moves (time, throughput, energy, utilisation)."""

BUSY_CORES = 0.25
"""Other processes' CPU during a window (`other_cpu_cores`) from which on a one-trial timing is not compared: a
quarter of a core, what a background job on a small box takes (the default run on a quiet VM reads 0.00-0.03)."""


class Evidence:
    """Comparisons over one report database (cached per query)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self._trials: dict[tuple[str, str, str], dict[str, list[float]]] = {}
        self._sets: dict[tuple[str, str, str], tuple[list[str], dict[str, Any]]] = {}
        self._floor: dict[str, dict[str, float]] | None = None

    # --- data ---------------------------------------------------------------------------------------------------

    def trial_values(self, rev: str, stage: str, cell: str, metric: str) -> list[float]:
        key = (rev, stage, cell)
        if key not in self._trials:
            out: dict[str, list[float]] = {}
            for r in tables.records(self.con, "SELECT metric, value FROM trial_metrics WHERE rev = ? AND stage = ? "
                                              "AND cell = ? ORDER BY trial", [rev, stage, cell]):
                out.setdefault(r["metric"], []).append(r["value"])
            self._trials[key] = out
        return self._trials[key].get(metric, [])

    def example_sets(self, rev: str, stage: str, cell: str) -> tuple[list[str], dict[str, Any]]:
        """(the quality sets the rows name, set -> (stat, {trial: {example: (value, weight)}}))."""
        key = (rev, stage, cell)
        if key not in self._sets:
            names: list[str] = []
            for r in tables.records(self.con, "SELECT extra FROM measured WHERE rev = ? AND stage = ? AND cell = ? "
                                              "AND status = 'ok' ORDER BY trial", [rev, stage, cell]):
                extra = json.loads(r["extra"]) if isinstance(r["extra"], str) else (r["extra"] or {})
                names = names or list(extra.get("quality_sets") or [])
            sets: dict[str, Any] = {}
            for r in tables.records(self.con, 'SELECT trial, "set" AS name, stat, example, value, weight FROM '
                                              "example_scores WHERE rev = ? AND stage = ? AND cell = ?",
                                    [rev, stage, cell]):
                stat, trials = sets.setdefault(r["name"], (r["stat"], {}))
                trials.setdefault(r["trial"], {})[r["example"]] = (r["value"], r["weight"])
            self._sets[key] = (names, sets)
        return self._sets[key]

    def noise_cv(self, metric: str) -> float | None:
        """This machine's run-to-run CV for `metric` (the latest noise row of any revision), or None."""
        if self._floor is None:
            rows = tables.records(self.con, "SELECT extra FROM rows WHERE axis = 'noise' AND status = 'ok' "
                                            "ORDER BY timestamp_utc DESC")
            first = rows[0]["extra"] if rows else None
            extra = json.loads(first) if isinstance(first, str) else (first or {})
            self._floor = {"cv": extra.get("cv") or {}}
        return self._floor["cv"].get(FLOOR_OF.get(metric, metric))

    def busy(self, rev: str, stage: str, cells: tuple[str, str]) -> dict[str, float]:
        """The cells (of the two) whose window had other processes using >= BUSY_CORES: cell -> cores."""
        got = tables.records(self.con, "SELECT cell, max(other_cpu_cores) AS other FROM measured WHERE rev = ? AND "
                                       "stage = ? AND cell IN (?, ?) AND status = 'ok' GROUP BY cell",
                             [rev, stage, *cells])
        return {r["cell"]: r["other"] for r in got if r["other"] is not None and r["other"] >= BUSY_CORES}

    def _model_mem_exact(self, rev: str, stage: str, cells: tuple[str, str]) -> bool:
        got = tables.records(self.con, "SELECT bool_and(model_mem_source = 'tensors') AS exact FROM measured WHERE "
                                       "rev = ? AND stage = ? AND cell IN (?, ?) AND status = 'ok'",
                             [rev, stage, *cells])
        return bool(got and got[0]["exact"])

    # --- tests --------------------------------------------------------------------------------------------------

    def _aligned(self, rev: str, stage: str, a: str, b: str) -> tuple[list[stats.ExampleSet], ...] | None:
        """Both cells' quality sets on their common examples, or None when they share none."""
        names_a, sets_a = self.example_sets(rev, stage, a)
        names_b, sets_b = self.example_sets(rev, stage, b)
        if not names_a or names_a != names_b or any(n not in sets_a or n not in sets_b for n in names_a):
            return None
        out_a, out_b = [], []
        for name in names_a:
            (stat, ta), (_, tb) = sets_a[name], sets_b[name]
            common = sorted(set.intersection(*(set(t) for t in [*ta.values(), *tb.values()])))
            if not common:
                return None
            for trials, out in ((ta, out_a), (tb, out_b)):
                values = np.array([[trials[t][e][0] for e in common] for t in sorted(trials)])
                weights = np.array([[trials[t][e][1] for e in common] for t in sorted(trials)])
                out.append(stats.ExampleSet(stat, values, weights))
        return out_a, out_b

    def compare(self, rev: str, stage: str, a: str, b: str, metric: str) -> stats.Comparison:
        """The comparison of `metric` between cells a and b (a - b) with the test that fits (module docstring)."""
        if metric == "quality":
            aligned = self._aligned(rev, stage, a, b)
            if aligned is not None:
                c = stats.paired_bootstrap(*aligned)[0]
                seeds = min(s.values.shape[0] for s in (*aligned[0], *aligned[1]))
                if stage in TRAINED_STAGES and seeds < 2:
                    ci = f"[{c.ci_low:.4g}, {c.ci_high:.4g}]" if c.ci_low is not None else "none"
                    return stats.Comparison(c.a, c.b, c.diff, None, None, None, "none", c.n,
                                            f"one training seed per cell: the examples' CI {ci} leaves out "
                                            "seed-to-seed variation; a verdict needs trials >= 2")
                return c
        va, vb = self.trial_values(rev, stage, a, metric), self.trial_values(rev, stage, b, metric)
        if not va or not vb:
            return stats.Comparison(None, None, None, None, None, None, "none", "", "no value on one side")
        ma, mb = float(np.mean(va)), float(np.mean(vb))
        if metric in EXACT_METRICS or (metric == "model_mem_bytes" and self._model_mem_exact(rev, stage, (a, b))):
            return stats.exact(ma, mb, "counted bytes: the same in every run")
        if len(va) >= 2 and len(vb) >= 2:
            return stats.welch(va, vb)
        if metric == "quality":
            return stats.Comparison(ma, mb, ma - mb, None, None, None, "none", "1 trial each",
                                    "no per-example scores and one trial: no test of a quality difference")
        if FLOOR_OF.get(metric, metric) in LOAD_SENSITIVE:
            busy = self.busy(rev, stage, (a, b))
            if busy:
                who = ", ".join(f"{c} ({v:.2f})" for c, v in sorted(busy.items()))
                return stats.Comparison(ma, mb, ma - mb, None, None, None, "none", "1 trial each",
                                        f"the machine was busy: other processes used >= {BUSY_CORES:g} cores during "
                                        f"the window of {who}; a one-trial timing needs the machine to itself")
        return stats.noise_floor_test(ma, mb, self.noise_cv(metric))

    def cell_interval(self, rev: str, stage: str, cell: str, metric: str) -> tuple[float, float] | None:
        """One cell's own 95 % interval of `metric` (see the module docstring), or None."""
        if metric == "quality":
            names, sets = self.example_sets(rev, stage, cell)
            if names and all(n in sets for n in names):
                arrays = [stats.ExampleSet(sets[n][0], *(np.array([[t[e][i] for e in sorted(t)] for t in
                                                                   sets[n][1].values()]) for i in (0, 1)))
                          for n in names]
                if all(a.values.shape[1] for a in arrays):
                    return stats.paired_bootstrap(arrays, arrays)[1]
        values = self.trial_values(rev, stage, cell, metric)
        if len(values) >= 2:
            return stats.t_interval(values)
        if metric == "al_s":
            got = tables.records(self.con, "SELECT latency_samples_s FROM measured WHERE rev = ? AND stage = ? AND "
                                           "cell = ? AND status = 'ok'", [rev, stage, cell])
            if got and got[0]["latency_samples_s"]:
                return stats.block_bootstrap_ci(got[0]["latency_samples_s"])
        return None
