-- claims/positional: the quality of the cells that differ from the `mha` baseline only in their positional encoding.
--
-- Parameter: $axis ('pretrain'). Same attention, MLP, family and shape as `mha`, from the rows' `extra`;
-- technique_key becomes the encoding, so 'rope' is whichever rope cell exists.
WITH arch AS (
    SELECT DISTINCT rev, stage, board, cell,
        extra ->> '$.positional' AS positional,
        concat_ws('/', extra ->> '$.attention', extra ->> '$.mlp', coalesce(extra ->> '$.family', 'efficientlm'),
                  extra ->> '$.hidden_size', extra ->> '$.num_hidden_layers', extra ->> '$.num_attention_heads',
                  extra ->> '$.num_key_value_heads', extra ->> '$.intermediate_size') AS shape
    FROM measured
    WHERE axis = $axis AND status = 'ok' AND extra ->> '$.positional' IS NOT NULL
),
same_shape AS (
    SELECT a.* FROM arch AS a
    JOIN arch AS b ON b.rev = a.rev AND b.stage = a.stage AND b.board = a.board AND b.cell = 'mha'
        AND b.shape = a.shape
)
SELECT s.rev, s.stage, s.board, s.cell, p.positional AS technique_key, s.metric, s.quality_metric, s.unit,
       s.higher_is_better, s.n, s.mean, s.ci95_low, s.ci95_high
FROM scores AS s
JOIN same_shape AS p USING (rev, stage, board, cell)
WHERE s.metric = 'quality'
