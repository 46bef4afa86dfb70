-- pretrain: the latest row of every architecture-pretraining cell, with the columns that compare them.
--
-- One row per (stage, cell, trial) of axis 'pretrain', failed and skipped cells included (their metrics
-- are null; see `failures` for why). quality_value is the validation perplexity (quality_metric names
-- it; lower is better). Units are in the column names: bytes, seconds, watts, joules.
-- amu_* is the paper's average memory utilisation, pcu_ratio its peak compute utilisation, mfu the
-- model-FLOPs utilisation, al_s the mean seconds per training step, tt_tokens_per_param_s the paper's
-- training throughput (tokens / parameter / s) and aec_w the mean power over the measured window.
--
--   efficientllm sql "SELECT cell, quality_value, tokens_per_s FROM pretrain"
CREATE VIEW pretrain AS
SELECT
    stage,
    cell,
    technique,
    trial,
    status,
    model,
    dataset,
    device_name,
    dtype,
    batch_size,
    seq_len,
    n_params,
    n_active_params,
    quality_metric,
    quality_value,
    amu_bytes,
    amu_ratio,
    pcu_ratio,
    mfu,
    al_s,
    latency_s_p50,
    latency_s_p90,
    latency_s_p99,
    tt_tokens_per_param_s,
    tokens_per_s,
    aec_w,
    energy_j,
    energy_source,
    tokens_per_j,
    peak_mem_bytes,
    kv_cache_bytes_per_token,
    error,
    run_id,
    git_sha,
    timestamp_utc
FROM latest
WHERE axis = 'pretrain'
ORDER BY stage, cell, trial;
