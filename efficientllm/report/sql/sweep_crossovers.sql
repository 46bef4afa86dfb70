-- sweep_crossovers: where a line of a scaling map starts to decode faster than the map's reference line.
--
-- One row per (rev, map, line, x_axis, fixed value) with at least two points measured for both the line and its
-- reference (attention map: mha; precision map: bf16, the 16-bit reference), read from the view `sweep` with TPOT
-- (tpot_s_p50, the median decode step) averaged over the ok trials of each point. x_axis 'context': along context
-- length at a fixed batch_size (fixed_value); x_axis 'batch_size': along batch at a fixed context.
-- A line is faster at x when its TPOT is below the reference's there (medians; a one-trial difference smaller than
-- the machine's run-to-run spread is not a real one: see the noise floor in the report).
-- crossover_x: the smallest measured x from which the line decodes faster at every larger measured x ("beyond
-- which it is faster"); null when it is not faster at the largest x. last_slower_x: the largest x where it is not
-- faster (null: faster everywhere measured); the crossover lies between last_slower_x and crossover_x.
-- faster_until_x: the largest x up to which it is faster at every smaller measured x (null: not faster at x_min).
-- n_faster: the points where it is faster. tpot_ratio_at_x_min / _at_x_max: line TPOT / reference TPOT at the ends
-- (below 1: faster). verdict: 'faster everywhere measured' | 'slower everywhere measured' | 'crosses' (not faster
-- below crossover_x, faster from it on) | 'crosses back' (faster up to faster_until_x, not at the largest x: the
-- crossing runs the other way) | 'mixed' (neither: not faster at x_min nor at the largest x, faster in between).
--
--   efficientllm sql "SELECT map, line, x_axis, fixed_value, crossover_x, verdict FROM sweep_crossovers"
CREATE VIEW sweep_crossovers AS
WITH points AS (
    SELECT rev, map, line, reference, context, batch_size, avg(tpot_s_p50) AS tpot_s
    FROM sweep
    WHERE point_status = 'ok' AND tpot_s_p50 IS NOT NULL
    GROUP BY rev, map, line, reference, context, batch_size
),
paired AS (
    SELECT l.rev, l.map, l.line, l.reference, l.context, l.batch_size, l.tpot_s, r.tpot_s AS reference_tpot_s
    FROM points AS l
    JOIN points AS r
        ON r.rev = l.rev AND r.map = l.map AND r.line = l.reference AND r.context = l.context
        AND r.batch_size = l.batch_size
    WHERE l.line <> l.reference
),
along AS (
    SELECT rev, map, line, reference, 'context' AS x_axis, 'batch_size' AS fixed_axis, batch_size AS fixed_value,
        context AS x, tpot_s, reference_tpot_s
    FROM paired
    UNION ALL
    SELECT rev, map, line, reference, 'batch_size', 'context', context, batch_size, tpot_s, reference_tpot_s
    FROM paired
),
marked AS (
    SELECT
        *,
        tpot_s < reference_tpot_s AS faster,
        -- faster here and at every larger x: a running AND from the largest x down
        bool_and(tpot_s < reference_tpot_s) OVER (
            PARTITION BY rev, map, line, x_axis, fixed_value ORDER BY x DESC
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS faster_from_here,
        -- faster here and at every smaller x: the same from the smallest x up
        bool_and(tpot_s < reference_tpot_s) OVER (
            PARTITION BY rev, map, line, x_axis, fixed_value ORDER BY x
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS faster_up_to_here
    FROM along
),
summary AS (
    SELECT
        rev, map, line, reference, x_axis, fixed_axis, fixed_value,
        count(*) AS n_points,
        min(x) AS x_min,
        max(x) AS x_max,
        min(x) FILTER (WHERE faster_from_here) AS crossover_x,
        max(x) FILTER (WHERE NOT faster) AS last_slower_x,
        max(x) FILTER (WHERE faster_up_to_here) AS faster_until_x,
        count(*) FILTER (WHERE faster) AS n_faster,
        arg_min(tpot_s / reference_tpot_s, x) AS tpot_ratio_at_x_min,
        arg_max(tpot_s / reference_tpot_s, x) AS tpot_ratio_at_x_max
    FROM marked
    GROUP BY rev, map, line, reference, x_axis, fixed_axis, fixed_value
    HAVING count(*) >= 2
)
SELECT
    *,
    CASE
        WHEN n_faster = n_points THEN 'faster everywhere measured'
        WHEN n_faster = 0 THEN 'slower everywhere measured'
        WHEN crossover_x IS NOT NULL THEN 'crosses'
        WHEN faster_until_x IS NOT NULL THEN 'crosses back'
        ELSE 'mixed'
    END AS verdict
FROM summary
ORDER BY rev, map, x_axis, fixed_value, line;
