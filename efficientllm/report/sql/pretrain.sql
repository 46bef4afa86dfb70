-- pretrain: the latest row of every architecture-pretraining cell, with the columns that compare them.
--
-- One row per (rev, stage, cell, trial) of axis 'pretrain', failed and skipped cells included (their metrics
-- are null; see `failures` for why). quality_value is the validation perplexity (quality_metric names it;
-- lower is better). Units are in the column names: bytes, seconds, watts, joules.
-- amu_* is the paper's average memory utilisation, pcu_ratio its peak compute utilisation, mfu the
-- model-FLOPs utilisation, al_s the mean seconds per training step, tt_tokens_per_param_s the paper's
-- training throughput (tokens / parameter / s) and aec_w the mean power over the measured window.
-- attention / positional / mlp / family come from the row's `extra` (null where a stage did not record them).
-- cost_usd_per_mtok and co2_g_per_mtok are computed from user-set assumptions (see `measured`).
--
--   efficientllm sql "SELECT cell, quality_value, tokens_per_s FROM pretrain"
CREATE VIEW pretrain AS
SELECT
    rev,
    stage,
    board,
    cell,
    technique,
    trial,
    status,
    model,
    extra ->> '$.attention' AS attention,
    extra ->> '$.positional' AS positional,
    extra ->> '$.mlp' AS mlp,
    extra ->> '$.family' AS family,
    dataset,
    device_name,
    device_count,
    dtype,
    batch_size,
    seq_len,
    n_params,
    n_active_params,
    quality_metric,
    quality_value,
    eval_loss,
    train_loss_final,
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
    energy_j_per_token,
    peak_mem_bytes,
    kv_cache_bytes_per_token,
    cost_usd_per_mtok,
    co2_g_per_mtok,
    error,
    run_id,
    git_sha,
    timestamp_utc
FROM measured
WHERE axis = 'pretrain'
ORDER BY rev, stage, cell, trial;
