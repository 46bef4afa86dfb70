-- claims/depth_width: the quality of the depth-width recipes (dw-*) and of the baseline `mha`, the sweep's base shape.
--
-- Parameter: $axis ('pretrain'). technique_key becomes the shape ('<layers>x<hidden>'), so a dw-base recipe identical
-- to mha counts once.
WITH shapes AS (
    SELECT DISTINCT rev, stage, board, cell,
        coalesce((extra ->> '$.num_hidden_layers') || 'x' || (extra ->> '$.hidden_size'), cell) AS shape
    FROM measured
    WHERE axis = $axis AND status = 'ok' AND (cell LIKE 'dw-%' OR cell = 'mha')
)
SELECT s.rev, s.stage, s.board, s.cell, h.shape AS technique_key, s.metric, s.quality_metric, s.unit,
       s.higher_is_better, s.n, s.mean, s.ci95_low, s.ci95_high
FROM scores AS s
JOIN shapes AS h USING (rev, stage, board, cell)
WHERE s.metric = 'quality'
