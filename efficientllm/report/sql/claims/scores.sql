-- claims/scores: the means of some metrics per cell, for the claims that compare techniques directly.
--
-- Parameters: $axis, $metrics (a list of metric names) and $techniques (a list of technique keys, or NULL for
-- every technique). One row per (rev, stage, board, cell, metric) of `scores`.
SELECT rev, stage, board, cell, technique_key, metric, quality_metric, unit, higher_is_better, n, mean, ci95_low,
       ci95_high
FROM scores
WHERE axis = $axis AND list_contains($metrics, metric)
    AND ($techniques IS NULL OR list_contains($techniques, technique_key))
