-- sweep: the scaling maps, one row per point (map, line, context, batch) of every ok sweep cell and trial.
--
-- A map cell (stage sweep_attention / sweep_precision, efficientllm/sweep.py) measures one line (an attention
-- variant of our decoder at sweep.shape, or a precision of sweep.precision_model) over a grid of context lengths x
-- batch sizes and writes one row with its points in extra.points; this view unnests them into typed columns.
-- context is the prompt length in tokens, batch_size the sequences per request. point_status: ok | over_budget
-- (the batch's weights + KV cache exceed the memory budget at that context: not run) | oom (the device ran out of
-- memory) | too_long (context + new tokens exceed the model's positions); the measured columns are null unless ok.
-- ttft_s_p50 is the first token's time (prefill), tpot_s_p50 the median decode step (a synchronising logits
-- processor per token, never end-to-end minus prefill); prefill_tokens_per_s = batch x context / TTFT and
-- decode_tokens_per_s = batch / TPOT. kv_cache_bytes is the cache one request holds at its end counted from its
-- tensors, kv_cache_bytes_analytic the model family's count (bytes per token x batch x cached positions) and
-- kv_cache_measured_vs_analytic their ratio; kv_cache_bytes_per_token is the measured bytes per token per sequence.
-- max_batch_in_budget: the largest batch whose weights (measured) + KV cache (measured per token) fit
-- memory_budget_bytes at this context. peak_mem_bytes: the allocator's peak over the timed requests (CUDA only).
-- reference is the line the crossovers compare with (attention: mha; precision: bf16).
--
--   efficientllm sql "SELECT map, line, context, batch_size, ttft_s_p50, tpot_s_p50 FROM sweep ORDER BY ALL"
CREATE VIEW sweep AS
WITH cells AS (
    SELECT
        rev,
        stage,
        cell,
        coalesce(trial, 0) AS trial,
        extra ->> '$.map' AS map,
        extra ->> '$.line' AS line,
        extra ->> '$.reference' AS reference,
        model,
        device_name,
        dtype,
        n_params,
        model_size_bytes AS weight_bytes,
        kv_cache_bytes_per_token AS kv_cache_bytes_per_token_analytic,
        TRY_CAST(extra ->> '$.memory_budget_bytes' AS DOUBLE) AS memory_budget_bytes,
        TRY_CAST(extra ->> '$.max_new_tokens' AS INTEGER) AS max_new_tokens,
        run_id,
        git_sha,
        unnest(from_json(extra -> '$.points', '[{"context": "INTEGER", "batch_size": "INTEGER", "status": "VARCHAR",
            "error": "VARCHAR", "ttft_s_p50": "DOUBLE", "ttft_s_p90": "DOUBLE", "tpot_s_p50": "DOUBLE",
            "tpot_s_p90": "DOUBLE", "latency_s_p50": "DOUBLE", "requests": "INTEGER", "decode_steps": "INTEGER",
            "prefill_tokens_per_s": "DOUBLE", "decode_tokens_per_s": "DOUBLE", "kv_cache_bytes": "DOUBLE",
            "kv_cache_bytes_analytic": "DOUBLE", "kv_cache_measured_vs_analytic": "DOUBLE",
            "kv_cache_bytes_per_token": "DOUBLE", "weights_plus_kv_bytes": "DOUBLE", "max_batch_in_budget": "BIGINT",
            "peak_mem_bytes": "DOUBLE", "peak_mem_source": "VARCHAR"}]')) AS p
    FROM latest
    WHERE axis = 'sweep' AND status = 'ok'
)
SELECT
    rev,
    map,
    line,
    reference,
    line = reference AS is_reference,
    stage,
    cell,
    trial,
    p.context AS context,
    p.batch_size AS batch_size,
    p.status AS point_status,
    p.error AS point_error,
    p.ttft_s_p50 AS ttft_s_p50,
    p.ttft_s_p90 AS ttft_s_p90,
    p.tpot_s_p50 AS tpot_s_p50,
    p.tpot_s_p90 AS tpot_s_p90,
    p.latency_s_p50 AS latency_s_p50,
    p.requests AS requests,
    p.decode_steps AS decode_steps,
    p.prefill_tokens_per_s AS prefill_tokens_per_s,
    p.decode_tokens_per_s AS decode_tokens_per_s,
    p.kv_cache_bytes AS kv_cache_bytes,
    p.kv_cache_bytes_analytic AS kv_cache_bytes_analytic,
    p.kv_cache_measured_vs_analytic AS kv_cache_measured_vs_analytic,
    p.kv_cache_bytes_per_token AS kv_cache_bytes_per_token,
    kv_cache_bytes_per_token_analytic,
    weight_bytes,
    p.weights_plus_kv_bytes AS weights_plus_kv_bytes,
    memory_budget_bytes,
    p.max_batch_in_budget AS max_batch_in_budget,
    p.peak_mem_bytes AS peak_mem_bytes,
    p.peak_mem_source AS peak_mem_source,
    max_new_tokens,
    model,
    device_name,
    dtype,
    n_params,
    run_id,
    git_sha
FROM cells
ORDER BY rev, map, line, context, batch_size, trial;
