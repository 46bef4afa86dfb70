-- claims/rslora: the quality of the lora and rslora cells, with the size of the model they tuned.
--
-- Parameter: $axis ('finetune'). n_params is the base model's (extra.n_params_base, else the row's n_params).
SELECT s.rev, s.stage, s.board, s.cell, s.technique_key, s.metric, s.quality_metric, s.unit, s.higher_is_better, s.n,
       s.mean, s.ci95_low, s.ci95_high,
       (SELECT max(coalesce(TRY_CAST(m.extra ->> '$.n_params_base' AS BIGINT), m.n_params)) FROM measured AS m
        WHERE m.rev = s.rev AND m.stage = s.stage AND m.cell = s.cell AND m.status = 'ok') AS n_params
FROM scores AS s
WHERE s.axis = $axis AND s.metric = 'quality' AND s.technique_key IN ('lora', 'rslora')
