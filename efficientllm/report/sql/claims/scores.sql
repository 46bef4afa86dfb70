-- claims/scores: the means of some metrics per cell, for the claims that compare techniques directly.
--
-- Parameters: $axis, $metrics (a list of metric names) and $techniques (a list of technique keys, or NULL for
-- every technique). One row per (rev, stage, board, cell, metric) of `scores`, with what the rules check before
-- they compare: energy_measured (every ok trial's joules came from a meter, nvml / rapl, not an estimate) and
-- device (the cell's device, e.g. cpu, cuda:0).
SELECT s.rev, s.stage, s.board, s.cell, s.technique_key, s.metric, s.quality_metric, s.unit, s.higher_is_better,
       s.n, s.mean, s.ci95_low, s.ci95_high, m.energy_measured, m.device
FROM scores AS s
LEFT JOIN (
    SELECT rev, stage, cell, bool_and(energy_measured) AS energy_measured, any_value(device) AS device
    FROM measured
    WHERE status = 'ok'
    GROUP BY rev, stage, cell
) AS m USING (rev, stage, cell)
WHERE s.axis = $axis AND list_contains($metrics, s.metric)
    AND ($techniques IS NULL OR list_contains($techniques, s.technique_key))
