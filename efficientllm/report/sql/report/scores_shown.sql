-- report/scores_shown: the scores the report's tables show (the workspace's), each with whether its cell's joules
-- are an estimate (energy_source 'estimate' in an ok trial), which the tables mark `est.` next to the number, and
-- whether a trial of its cell breaks a sanity bound (view `sanity`), which the tables mark with ⚠ after the cell.
SELECT s.*, coalesce(m.energy_estimated, false) AS energy_estimated, coalesce(c.insane, false) AS insane
FROM scores AS s
LEFT JOIN (
    SELECT rev, stage, cell, bool_or(energy_source = 'estimate') AS energy_estimated
    FROM measured
    WHERE status = 'ok'
    GROUP BY rev, stage, cell
) AS m USING (rev, stage, cell)
LEFT JOIN (
    SELECT rev, stage, cell, bool_or(NOT ok) AS insane FROM sanity GROUP BY rev, stage, cell
) AS c USING (rev, stage, cell)
WHERE s.rev = 'workspace'
