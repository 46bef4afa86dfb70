-- example_scores: every evaluated example's score in every ok row (the examples.jsonl files beside the rows;
-- efficientllm.examples): the data behind the paired tests of `efficientllm compare --cells` and the claims.
--
-- One row per (rev, axis, stage, cell, trial, set, example). `stat` says how a set's examples make its statistic:
-- ratio = sum(value) / sum(weight) (a mean score; a mean loss per token), exp_ratio = exp of that (perplexity).
--
--   efficientllm sql "SELECT cell, set, count(*) AS n, sum(value) / sum(weight) AS ratio FROM example_scores GROUP BY ALL"
CREATE VIEW example_scores AS
SELECT r.rev, r.axis, r.stage, r.cell, coalesce(r.trial, 0) AS trial, e."set", e.stat, e.example, e.value, e.weight
FROM examples AS e
JOIN rows AS r ON r.rev = e.rev AND r.row_file = e.row_file
WHERE r.status = 'ok';
