-- pareto: quality against memory, latency and energy per cell, and whether the cell is on the Pareto front.
--
-- One row per (rev, stage, board, cell, x_metric) for the cells that have both a quality mean and an
-- x_metric mean in `scores`: x_metric is peak_mem_bytes (memory), al_s (latency) or energy_j_per_token
-- (energy), all lower-is-better. A cell is on the front (on_front) when no other cell of the same board and
-- quality metric is at least as good on both axes and strictly better on one; two cells at the very same
-- point are both on it. quality_higher_is_better gives the quality direction (perplexity / loss: false).
-- quality_ci95 / x_ci95: the 95% CI half-widths of the two means (null with one trial); the front is drawn through
-- the means.
--
--   efficientllm sql "SELECT cell, x_value, quality FROM pareto WHERE x_metric = 'al_s' AND on_front"
CREATE VIEW pareto AS
WITH quality AS (
    SELECT rev, axis, stage, board, cell, technique_key, is_baseline, quality_metric, mean AS quality,
           ci95 AS quality_ci95, higher_is_better AS quality_higher_is_better
    FROM scores
    WHERE metric = 'quality'
),
x AS (
    SELECT rev, stage, board, cell, metric AS x_metric, label AS x_label, unit AS x_unit, mean AS x_value,
           ci95 AS x_ci95
    FROM scores
    WHERE metric IN ('peak_mem_bytes', 'al_s', 'energy_j_per_token')
),
points AS (
    SELECT q.*, x.x_metric, x.x_label, x.x_unit, x.x_value, x.x_ci95
    FROM quality AS q
    JOIN x USING (rev, stage, board, cell)
)
SELECT
    p.*,
    NOT EXISTS (
        SELECT 1
        FROM points AS d
        WHERE d.rev = p.rev AND d.stage = p.stage AND d.board = p.board AND d.x_metric = p.x_metric
          AND d.quality_metric IS NOT DISTINCT FROM p.quality_metric
          AND d.cell <> p.cell
          AND d.x_value <= p.x_value
          AND CASE WHEN p.quality_higher_is_better THEN d.quality >= p.quality ELSE d.quality <= p.quality END
          AND (d.x_value < p.x_value OR d.quality <> p.quality)
    ) AS on_front
FROM points AS p
ORDER BY p.rev, p.axis, p.stage, p.board, p.x_metric, p.x_value, p.cell;
