-- claims/int4: the model size and quality ratio to bf16 of the int4 and bf16 cells, per board.
--
-- Parameter: $axis ('quantize'). weight_bytes_other: bytes of the layers an int4 model keeps in 16 bits (extra);
-- expected_weight_bytes: the bytes expected from its split of quantized and 16-bit parameters (extra).
SELECT rev, stage, board, any_value(cell) AS cell, technique_key, 'model_size_bytes' AS metric,
       any_value(quality_metric) AS quality_metric, avg(model_size_bytes) AS model_size_bytes,
       avg(quality_ratio_vs_baseline) AS quality_vs_bf16, bool_and(quality_higher_is_better) AS higher_is_better,
       avg(TRY_CAST(extra ->> '$.weight_bytes_other' AS DOUBLE)) AS weight_bytes_other,
       avg(TRY_CAST(extra ->> '$.expected_weight_bytes' AS DOUBLE)) AS expected_weight_bytes
FROM measured
WHERE axis = $axis AND status = 'ok' AND technique_key IN ('int4', 'bf16')
GROUP BY rev, stage, board, technique_key
