"""The tests behind the verdicts (efficientllm.report.stats): their false-positive rate on simulated null
comparisons at the stated level, their power on known effects, and Holm's correction.

Simulations are seeded; the bounds allow for simulation error (1,000 nulls at 5 %: sd 0.7 %).
"""

from __future__ import annotations

import numpy as np
import pytest

from efficientllm.report import stats


def _examples(rng: np.random.Generator, shift: float, difficulty: np.ndarray, trials: int = 1) -> stats.ExampleSet:
    """Per-example losses (weight 20 tokens) of one cell: shared difficulty + the cell's shift + its own noise."""
    own = rng.normal(0.0, 0.02, (trials, len(difficulty)))
    values = (2.0 + shift + difficulty[None, :] + own) * 20
    return stats.ExampleSet("exp_ratio", values, np.full_like(values, 20.0))


def test_welch_false_positive_rate_on_null_trials():
    rng = np.random.default_rng(1)
    hits = [stats.welch(rng.normal(1.0, 0.05, 3), rng.normal(1.0, 0.05, 3)).significant for _ in range(1000)]
    assert 0.02 <= np.mean(hits) <= 0.07  # the nominal 5 %


def test_noise_floor_false_positive_rate_on_null_runs():
    """Two runs of the same cell on a machine whose run-to-run CV is 6.6 %: almost never a verdict."""
    rng = np.random.default_rng(2)
    cv = 0.066
    hits = [stats.noise_floor_test(*rng.normal(1.0, cv, 2), cv).significant for _ in range(1000)]
    assert np.mean(hits) <= 0.065  # the nominal 5 % (+ 2 sd of simulation error)
    # and no floor measured: no test at all
    assert stats.noise_floor_test(1.0, 1.5, None).p is None


def test_paired_bootstrap_false_positive_rate_and_power():
    rng = np.random.default_rng(3)
    null = []
    for _ in range(200):
        difficulty = rng.normal(0.0, 0.3, 48)
        comp, _, _ = stats.paired_bootstrap([_examples(rng, 0.0, difficulty)], [_examples(rng, 0.0, difficulty)],
                                            n_boot=400, seed=int(rng.integers(1 << 30)))
        null.append(comp.significant)
    assert np.mean(null) <= 0.10  # 5 % nominal; 200 simulations (sd 1.5 %), a percentile bootstrap runs a bit hot
    # a 3 % perplexity difference hidden in per-example difficulty 10 times larger: found, by the pairing
    difficulty = rng.normal(0.0, 0.3, 48)
    a, b = _examples(rng, 0.03, difficulty), _examples(rng, 0.0, difficulty)
    comp, ci_a, ci_b = stats.paired_bootstrap([a], [b], n_boot=1000)
    assert comp.significant and comp.diff > 0 and comp.ci_low > 0
    assert ci_a[0] < comp.a < ci_a[1] and ci_b[0] < comp.b < ci_b[1]
    # the cells' own intervals overlap: unpaired, the same difference would look like noise
    assert ci_a[0] < ci_b[1]


def test_paired_bootstrap_resamples_trials_too():
    """With seed-varied trials, a difference no larger than the trials' spread is not significant."""
    rng = np.random.default_rng(4)
    difficulty = rng.normal(0.0, 0.3, 40)
    seeds_a = _examples(rng, 0.0, difficulty, trials=3)
    seeds_a.values[:] += np.array([[-20.0], [0.0], [20.0]])  # trial means differ by +-1 nat: seed noise
    comp, _, _ = stats.paired_bootstrap([seeds_a], [_examples(rng, 0.2, difficulty, trials=3)], n_boot=1000)
    assert not comp.significant and comp.n == "3 vs 3 trials x 40 examples"
    with pytest.raises(ValueError, match="same examples"):
        stats.paired_bootstrap([seeds_a], [_examples(rng, 0.0, difficulty[:10])])


def test_holm_step_down():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.06 (monotone); None is not a test
    assert stats.holm([0.04, 0.01, None, 0.03]) == pytest.approx([0.06, 0.03, None, 0.06])
    assert stats.holm([]) == []


def test_block_bootstrap_widens_for_autocorrelated_steps():
    rng = np.random.default_rng(5)
    e = rng.normal(0.0, 1.0, 400)
    ar = np.empty(400)
    ar[0] = e[0]
    for i in range(1, 400):  # AR(1), phi 0.8: step times that drift
        ar[i] = 0.8 * ar[i - 1] + e[i]
    lo, hi = stats.block_bootstrap_ci(ar, block=20, n_boot=1000)
    naive = 1.96 * ar.std(ddof=1) / np.sqrt(len(ar))
    assert lo < ar.mean() < hi and (hi - lo) / 2 > 1.5 * naive  # iid would understate the interval
    assert stats.block_bootstrap_ci([1.0, 2.0]) is None


def test_exact_differences_and_t_interval():
    assert stats.exact(100.0, 90.0, "bytes").p == 0.0 and stats.exact(5.0, 5.0, "bytes").p == 1.0
    lo, hi = stats.t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.303: 2 -+ 4.303 / sqrt(3)
    assert (lo, hi) == pytest.approx((2 - 2.4843, 2 + 2.4843), abs=1e-3)


def test_every_noise_floor_family_is_a_column_the_noise_stage_measures():
    from efficientllm.measure.noise import NOISE_COLUMNS
    from efficientllm.report.evidence import FLOOR_OF

    assert set(FLOOR_OF.values()) <= set(NOISE_COLUMNS)
