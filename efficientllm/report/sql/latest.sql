-- latest: the newest row of every measured cell, per revision.
--
-- A cell is measured again whenever its stage re-runs (a changed parameter, another machine, a DVC
-- experiment), so `rows` can hold several rows per cell. For each (rev, stage, cell, trial) this view keeps
-- the row with the greatest timestamp_utc; ties (and missing timestamps) are broken by run_id so the
-- choice never depends on file order. Every other view reads from `latest`, so a re-run cell replaces
-- its old numbers everywhere in the report. A missing trial counts as trial 0. `rev` is 'workspace' for
-- the row files on disk, or the git revision / DVC experiment name given to `efficientllm sql --rev`.
--
--   efficientllm sql "SELECT stage, cell, trial, status, timestamp_utc FROM latest"
CREATE VIEW latest AS
SELECT *
FROM rows
QUALIFY row_number() OVER (
    PARTITION BY rev, stage, cell, coalesce(trial, 0)
    ORDER BY timestamp_utc DESC NULLS LAST, run_id DESC NULLS LAST
) = 1;
