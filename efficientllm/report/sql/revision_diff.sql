-- revision_diff: every metric of every cell at each later revision against the first revision loaded.
--
-- With `efficientllm sql --rev A --rev B ...` (or `efficientllm compare A B`) the rows of both revisions sit in
-- one database; `revisions` lists them in the order given (rev_order). For each revision after the first, one
-- row per (stage, board, cell, metric) present at either: mean_a at the first revision (rev_a), mean_b at this
-- one (rev), change = mean_b - mean_a, relative_change = change / |mean_a|, and verdict: 'better' / 'worse'
-- in the metric's direction, 'same' when equal, 'within noise' when both sides have 95% CIs and they overlap,
-- 'added' / 'removed' for a cell-metric found at one side only. Empty with a single revision.
--
--   efficientllm sql --rev HEAD~1 --rev HEAD "SELECT cell, metric, relative_change FROM revision_diff"
CREATE VIEW revision_diff AS
WITH first_rev AS (
    SELECT rev FROM revisions ORDER BY rev_order LIMIT 1
),
later AS (
    SELECT rev, rev_order FROM revisions WHERE rev NOT IN (SELECT rev FROM first_rev)
),
a AS (
    SELECT l.rev AS rev, s.* EXCLUDE (rev)
    FROM scores AS s
    CROSS JOIN later AS l
    WHERE s.rev = (SELECT rev FROM first_rev)
),
b AS (
    SELECT s.*
    FROM scores AS s
    WHERE s.rev IN (SELECT rev FROM later)
),
joined AS (
    SELECT
        coalesce(b.rev, a.rev) AS rev,
        coalesce(b.axis, a.axis) AS axis,
        coalesce(b.stage, a.stage) AS stage,
        coalesce(b.board, a.board) AS board,
        coalesce(b.cell, a.cell) AS cell,
        coalesce(b.metric, a.metric) AS metric,
        coalesce(b.quality_metric, a.quality_metric) AS quality_metric,
        coalesce(b.label, a.label) AS label,
        coalesce(b.unit, a.unit) AS unit,
        coalesce(b.higher_is_better, a.higher_is_better) AS higher_is_better,
        coalesce(b.position, a.position) AS position,
        a.n AS n_a,
        a.mean AS mean_a,
        a.ci95 AS ci95_a,
        b.n AS n_b,
        b.mean AS mean_b,
        b.ci95 AS ci95_b,
        a.mean - a.ci95 AS low_a,
        a.mean + a.ci95 AS high_a,
        b.mean - b.ci95 AS low_b,
        b.mean + b.ci95 AS high_b
    FROM a
    FULL OUTER JOIN b
        ON a.rev = b.rev AND a.stage = b.stage AND a.board = b.board AND a.cell = b.cell AND a.metric = b.metric
        AND a.quality_metric IS NOT DISTINCT FROM b.quality_metric
)
SELECT
    (SELECT rev FROM first_rev) AS rev_a,
    j.rev,
    j.axis,
    j.stage,
    j.board,
    j.cell,
    j.metric,
    j.quality_metric,
    j.label,
    j.unit,
    j.higher_is_better,
    j.n_a,
    j.mean_a,
    j.ci95_a,
    j.n_b,
    j.mean_b,
    j.ci95_b,
    j.mean_b - j.mean_a AS change,
    (j.mean_b - j.mean_a) / nullif(abs(j.mean_a), 0) AS relative_change,
    CASE
        WHEN j.mean_a IS NULL THEN 'added'
        WHEN j.mean_b IS NULL THEN 'removed'
        WHEN j.mean_b = j.mean_a THEN 'same'
        WHEN j.low_a <= j.high_b AND j.low_b <= j.high_a THEN 'within noise'
        WHEN (j.mean_b > j.mean_a) = coalesce(j.higher_is_better, false) THEN 'better'
        ELSE 'worse'
    END AS verdict
FROM joined AS j
ORDER BY j.rev, j.axis, j.stage, j.board, j.cell, j.position, j.metric;
