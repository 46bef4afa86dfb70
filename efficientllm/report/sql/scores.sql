-- scores: per cell and metric, the mean over trials ± 95% CI, its rank, the paper's normalised score and the
-- ratio to the axis baseline. The long form behind every leaderboard, plot, claim and recommendation.
--
-- One row per (rev, axis, stage, board, cell, metric) over the ok trials in `trial_metrics`:
--   n, mean, sd          trials that measured the metric, their mean and sample standard deviation.
--   ci95, ci95_low/high  half-width t(0.975, n-1) x sd / sqrt(n) (`t_critical`); null when n = 1.
--   rank                 1 = best within (rev, stage, board, metric[, quality_metric]), by mean in the metric's
--                        direction; ties share a rank.
--   normalized_score     the paper's min-max score into [0.1, 1], 1 = best (appendix eqs. 10-11):
--                        higher is better: 0.1 + 0.9 (x - min) / (max - min);
--                        lower is better:  0.1 + 0.9 (max - x) / (max - min);
--                        1 for every cell when max = min (nothing to separate).
--   baseline_mean, vs_baseline   the baseline cell's mean (mha / full / bf16, see `measured`) and mean / it.
--   within_noise_of_baseline     the two 95% CIs overlap (the difference is within noise); null when either
--                        side has no CI (one trial) and for the baseline itself.
--   best_cell, within_noise_of_best   the rank-1 cell (first by name on a tie) and whether this cell's CI
--                        overlaps the best one's (null without CIs; true for the best cell itself).
--
--   efficientllm sql "SELECT cell, mean, ci95, rank, normalized_score FROM scores WHERE metric = 'al_s'"
CREATE VIEW scores AS
WITH per_cell AS (
    SELECT
        rev, axis, stage, board, size_group, task, cell, technique_key, is_baseline, metric, quality_metric,
        any_value(label) AS label,
        any_value(unit) AS unit,
        bool_and(higher_is_better) AS higher_is_better,
        bool_or(radar) AS radar,
        min(position) AS position,
        count(value) AS n,
        avg(value) AS mean,
        stddev_samp(value) AS sd
    FROM trial_metrics
    GROUP BY rev, axis, stage, board, size_group, task, cell, technique_key, is_baseline, metric, quality_metric
),
with_ci AS (
    SELECT
        p.*,
        CASE WHEN p.n >= 2 THEN t.t975 * p.sd / sqrt(p.n) END AS ci95
    FROM per_cell AS p
    ASOF LEFT JOIN t_critical AS t ON p.n - 1 >= t.df
),
ranked AS (
    SELECT
        *,
        mean - ci95 AS ci95_low,
        mean + ci95 AS ci95_high,
        rank() OVER (
            PARTITION BY rev, stage, board, metric, quality_metric
            ORDER BY CASE WHEN higher_is_better THEN -mean ELSE mean END
        ) AS rank,
        count(*) OVER part AS n_cells,
        min(mean) OVER part AS board_min,
        max(mean) OVER part AS board_max,
        max(CASE WHEN is_baseline THEN mean END) OVER part AS baseline_mean,
        max(CASE WHEN is_baseline THEN mean - ci95 END) OVER part AS baseline_ci95_low,
        max(CASE WHEN is_baseline THEN mean + ci95 END) OVER part AS baseline_ci95_high
    FROM with_ci
    WINDOW part AS (PARTITION BY rev, stage, board, metric, quality_metric)
),
best AS (
    SELECT
        *,
        first_value(cell) OVER best_w AS best_cell,
        first_value(ci95_low) OVER best_w AS best_ci95_low,
        first_value(ci95_high) OVER best_w AS best_ci95_high
    FROM ranked
    WINDOW best_w AS (PARTITION BY rev, stage, board, metric, quality_metric ORDER BY rank, cell)
)
SELECT
    rev, axis, stage, board, size_group, task, cell, technique_key, is_baseline, metric, quality_metric, label, unit,
    higher_is_better, radar, position, n, mean, sd, ci95, ci95_low, ci95_high, rank, n_cells,
    CASE
        WHEN board_max = board_min THEN 1.0
        WHEN higher_is_better THEN 0.1 + 0.9 * (mean - board_min) / (board_max - board_min)
        ELSE 0.1 + 0.9 * (board_max - mean) / (board_max - board_min)
    END AS normalized_score,
    baseline_mean,
    mean / nullif(baseline_mean, 0) AS vs_baseline,
    CASE
        WHEN is_baseline OR ci95 IS NULL OR baseline_ci95_low IS NULL THEN NULL
        ELSE ci95_low <= baseline_ci95_high AND baseline_ci95_low <= ci95_high
    END AS within_noise_of_baseline,
    best_cell,
    CASE
        WHEN cell = best_cell THEN true
        WHEN ci95 IS NULL OR best_ci95_low IS NULL THEN NULL
        ELSE ci95_low <= best_ci95_high AND best_ci95_low <= ci95_high
    END AS within_noise_of_best
FROM best
ORDER BY rev, axis, stage, board, position, metric, rank, cell;
