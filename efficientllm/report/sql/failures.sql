-- failures: cells whose latest row did not succeed (status 'failed' or 'skipped'), with why.
--
-- Stages record a failed cell as a row (status, error with the traceback) instead of losing it, so the
-- report can say what is missing. Only the latest row of a cell (per rev) counts: a cell that failed and then
-- succeeded is not listed. error_summary is the line worth reading: the first non-empty line of error,
-- or its last non-empty line (the exception) when the error starts with a Python traceback header.
--
--   efficientllm sql "SELECT stage, cell, status, error_summary FROM failures"
CREATE VIEW failures AS
WITH lines AS (
    SELECT
        *,
        regexp_extract(coalesce(error, ''), '^\s*([^\n]*\S)', 1) AS first_line,
        regexp_extract(coalesce(error, ''), '([^\n]*\S)\s*$', 1) AS last_line
    FROM latest
    WHERE status <> 'ok'
)
SELECT
    rev,
    axis,
    stage,
    cell,
    technique,
    trial,
    status,
    nullif(trim(CASE WHEN first_line LIKE 'Traceback%' THEN last_line ELSE first_line END), '') AS error_summary,
    error,
    device_name,
    run_id,
    git_sha,
    timestamp_utc
FROM lines
ORDER BY rev, axis, stage, cell, trial;
