-- sanity: the sanity checks of every ok row (efficientllm.measure.sanity: implied FLOP/s against the measured peak,
-- MFU <= 1, PCU <= 1, implied decode bandwidth against the measured copy bandwidth, power against the device
-- limit). ok is null for rows written before the checks existed; violations lists each broken bound with its
-- numbers. The report lists the rows that break one and marks their cells.
--
--   efficientllm sql "SELECT stage, cell, violations FROM sanity WHERE NOT ok"
CREATE VIEW sanity AS
SELECT rev, axis, stage, cell, coalesce(trial, 0) AS trial,
       TRY_CAST(extra ->> '$.sanity.ok' AS BOOLEAN) AS ok,
       extra -> '$.sanity.violations' AS violations,
       extra -> '$.sanity.checks' AS checks
FROM rows
WHERE status = 'ok';
