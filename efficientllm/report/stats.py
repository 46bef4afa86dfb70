"""Tests of significance behind every verdict: paired bootstraps over examples, Welch over trials, a noise floor.

A verdict (agrees, disagrees, better, worse) rests on a test, never on one run's 2 % difference:

- quality of two cells scored on the same examples: a **paired bootstrap** (the same resampled example indices
  for both cells, stratified by example set; with several trials per cell the trials are resampled too, so the
  interval covers seed and example noise); each cell's own 95 % interval comes from the same resampling;
- a metric with several trials per cell (timing, energy): **Welch's t-test** over the trial values;
- a timing or energy metric with one trial per cell: the relative difference against the machine's measured
  **noise floor** (the coefficient of variation of whole-cell re-runs, `bench/stability.py` / the `noise_floor`
  stage): z = |a - b| / mean / (sqrt(2) x CV), a normal test; below 2 x CV it is "not distinguishable" whatever the
  test says; with no noise floor measured, no verdict;
- within one trial, a **moving-block bootstrap** of the step samples (steps are autocorrelated) gives the interval
  of a timing mean: what one run's number is worth, never a between-run comparison;
- a count that does not vary between runs (tensor bytes of the memory anatomy, nominal bits): exact;
- the claims of one report: **Holm's** step-down correction keeps the family-wise error at 5 %.

    python -c "from efficientllm.report.stats import holm; print(holm([0.01, 0.04, 0.03]))"
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
"""Significance level of every verdict (after Holm's correction over one report's claims)."""
N_BOOT = 2000
"""Bootstrap resamples: enough for a 95 % interval and p-values down to 1/2000."""
NOISE_FLOOR_FACTOR = 2.0
"""A one-trial timing or energy difference below this many noise-floor CVs is never a verdict."""


@dataclass(frozen=True)
class Comparison:
    """The difference of a statistic between two cells, a - b, with its evidence."""

    a: float | None
    b: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    p: float | None
    """Two-sided p-value of 'no difference'; 0.0 for an exact difference, None when untestable."""
    method: str
    """paired-bootstrap | welch | noise-floor | exact | none (what the evidence is)."""
    n: str
    """The sample behind it, e.g. '2 trials x 64 examples', '1 trial each, floor CV 6.6 %'."""
    note: str = ""

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA

    def evidence(self, p_adjusted: float | None = None) -> str:
        """One line for a table: n, the difference with its CI, p (and Holm's adjusted p)."""
        if self.diff is None:
            return f"{self.method}: {self.note or 'no test'}"
        ci = f" [{self.ci_low:.4g}, {self.ci_high:.4g}]" if self.ci_low is not None else ""
        p = "" if self.p is None else f", p={_p(self.p)}"
        adj = "" if p_adjusted is None else f" (Holm {_p(p_adjusted)})"
        return f"{self.method}, {self.n}: diff {self.diff:.4g}{ci}{p}{adj}" + (f"; {self.note}" if self.note else "")


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# --- statistics of one example set ---------------------------------------------------------------------------------


def set_statistic(values: np.ndarray, weights: np.ndarray, stat: str) -> float:
    """One example set's statistic: `ratio` = sum(values) / sum(weights) (a mean score, a mean loss per token),
    `exp_ratio` = exp of it (perplexity)."""
    r = float(values.sum() / weights.sum())
    return math.exp(r) if stat == "exp_ratio" else r


@dataclass(frozen=True)
class ExampleSet:
    """One cell's per-example scores on one example set, aligned by example id across cells."""

    stat: str
    """ratio | exp_ratio (see `set_statistic`)."""
    values: np.ndarray
    """(trials, examples): each trial's per-example value (a score, a loss sum)."""
    weights: np.ndarray
    """(trials, examples): each example's weight (1, a token count)."""


def quality_statistic(sets: Sequence[ExampleSet], trial_idx: Sequence[np.ndarray] | None = None,
                      example_idx: Sequence[np.ndarray] | None = None) -> float:
    """The cell's quality from its example sets: each set's statistic (mean over the chosen trials of the per-trial
    statistic on the chosen examples), averaged over the sets (a mean of task scores)."""
    out = []
    for k, s in enumerate(sets):
        trials = trial_idx[k] if trial_idx is not None else np.arange(s.values.shape[0])
        ex = example_idx[k] if example_idx is not None else np.arange(s.values.shape[1])
        out.append(np.mean([set_statistic(s.values[t, ex], s.weights[t, ex], s.stat) for t in trials]))
    return float(np.mean(out))


def paired_bootstrap(a: Sequence[ExampleSet], b: Sequence[ExampleSet], n_boot: int = N_BOOT,
                     seed: int = 0) -> tuple[Comparison, tuple[float, float], tuple[float, float]]:
    """(the comparison a - b, a's own 95 % CI, b's own 95 % CI) by a paired bootstrap.

    Every resample draws the same example indices for both cells (per set: the sets are strata), and each cell's
    trials independently with replacement (seed noise). The p-value is twice the share of resampled differences on
    the far side of zero (the percentile bootstrap's test), floored at 1 / n_boot.
    """
    if len(a) != len(b) or any(x.values.shape[1] != y.values.shape[1] for x, y in zip(a, b, strict=True)):
        raise ValueError("paired bootstrap: the cells were not scored on the same examples")
    rng = np.random.default_rng(seed)
    diffs, sa, sb = np.empty(n_boot), np.empty(n_boot), np.empty(n_boot)
    for i in range(n_boot):
        ex = [rng.integers(0, s.values.shape[1], s.values.shape[1]) for s in a]
        ta = [rng.integers(0, s.values.shape[0], s.values.shape[0]) for s in a]
        tb = [rng.integers(0, s.values.shape[0], s.values.shape[0]) for s in b]
        sa[i], sb[i] = quality_statistic(a, ta, ex), quality_statistic(b, tb, ex)
        diffs[i] = sa[i] - sb[i]
    va, vb = quality_statistic(a), quality_statistic(b)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    p = max(2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)), 1 / n_boot)
    n = f"{a[0].values.shape[0]} vs {b[0].values.shape[0]} trials x {sum(s.values.shape[1] for s in a)} examples"
    comp = Comparison(va, vb, va - vb, float(lo), float(hi), float(min(p, 1.0)), "paired-bootstrap", n)
    return comp, tuple(np.percentile(sa, [2.5, 97.5])), tuple(np.percentile(sb, [2.5, 97.5]))


# --- metrics over trials and within one trial ----------------------------------------------------------------------


def welch(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """Welch's t-test of mean(a) - mean(b) over trial values (two or more trials on each side)."""
    from scipy import stats as sps

    x, y = np.asarray(a, float), np.asarray(b, float)
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    diff = float(x.mean() - y.mean())
    se = math.sqrt(va + vb)
    n = f"{len(x)} vs {len(y)} trials"
    if se == 0:
        return Comparison(float(x.mean()), float(y.mean()), diff, diff, diff, 0.0 if diff else 1.0, "welch", n,
                          "no variation between trials")
    df = (va + vb) ** 2 / ((va ** 2 / (len(x) - 1)) + (vb ** 2 / (len(y) - 1)))
    t = diff / se
    half = float(sps.t.ppf(0.975, df)) * se
    return Comparison(float(x.mean()), float(y.mean()), diff, diff - half, diff + half,
                      float(2 * sps.t.sf(abs(t), df)), "welch", n)


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """95 % Student-t interval of the mean of two or more values (trials)."""
    from scipy import stats as sps

    x = np.asarray(values, float)
    half = float(sps.t.ppf(0.975, len(x) - 1)) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def noise_floor_test(a: float, b: float, cv: float | None) -> Comparison:
    """One trial each: |a - b| against the machine's run-to-run CV (a normal test on the relative difference).

    The difference of two independent runs has a relative sd of sqrt(2) x CV; below NOISE_FLOOR_FACTOR x CV the
    difference is not distinguishable (p reported as 1: no verdict), whatever z says.
    """
    diff = a - b
    if cv is None or cv <= 0:
        return Comparison(a, b, diff, None, None, None, "none", "1 trial each",
                          "no noise floor measured on this machine (run the noise_floor stage or more trials)")
    rel = abs(diff) / (abs(a + b) / 2) if (a + b) else 0.0
    n = f"1 trial each, noise floor CV {cv:.1%}"
    half = 1.96 * math.sqrt(2) * cv * abs(a + b) / 2
    if rel < NOISE_FLOOR_FACTOR * cv:
        return Comparison(a, b, diff, diff - half, diff + half, 1.0, "noise-floor", n,
                          f"{rel:.1%} apart, below {NOISE_FLOOR_FACTOR:g} x the floor: not distinguishable")
    from scipy import stats as sps

    z = rel / (math.sqrt(2) * cv)
    return Comparison(a, b, diff, diff - half, diff + half, float(2 * sps.norm.sf(z)), "noise-floor", n)


def block_bootstrap_ci(samples: Sequence[float], block: int | None = None, n_boot: int = N_BOOT,
                       seed: int = 0) -> tuple[float, float] | None:
    """95 % CI of the mean of autocorrelated samples (a trial's step times) by a moving-block bootstrap; the block
    length defaults to n^(1/3) (the usual rate). None for fewer than 4 samples."""
    x = np.asarray(samples, float)
    n = len(x)
    if n < 4:
        return None
    block = block or max(1, round(n ** (1 / 3)))
    starts = np.arange(n - block + 1)
    rng = np.random.default_rng(seed)
    k = math.ceil(n / block)
    means = np.empty(n_boot)
    for i in range(n_boot):
        idx = (rng.choice(starts, k)[:, None] + np.arange(block)[None, :]).ravel()[:n]
        means[i] = x[idx].mean()
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def exact(a: float, b: float, what: str) -> Comparison:
    """A difference of counts that do not vary between runs (tensor bytes): no noise, p = 0 when they differ."""
    diff = a - b
    return Comparison(a, b, diff, diff, diff, 0.0 if diff else 1.0, "exact", "deterministic", what)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and does not count as a test)."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(tested)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
