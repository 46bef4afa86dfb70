-- finetune: the latest row of every fine-tuning cell (`<method>-<dataset>`), with the columns that compare them.
--
-- One row per (rev, stage, cell, trial) of axis 'finetune', failed and skipped cells included. method is the
-- technique (lora, rslora, dora, freeze, full, ...), task the dataset. quality_value is the held-out eval loss
-- (quality_metric names it; lower is better). st_samples_per_param_s is the paper's sample throughput
-- (samples / parameter / s, parameters of the model as trained); al_s the mean seconds per optimizer step.
-- trainable_fraction and exact_match come from the row's `extra` (null where a stage did not record them).
-- cost_usd_per_mtok and co2_g_per_mtok are computed from user-set assumptions (see `measured`).
--
--   efficientllm sql "SELECT cell, method, task, quality_value, al_s FROM finetune ORDER BY task, al_s"
CREATE VIEW finetune AS
SELECT
    rev,
    stage,
    board,
    cell,
    technique AS method,
    task,
    trial,
    status,
    model,
    device_name,
    device_count,
    dtype,
    batch_size,
    seq_len,
    n_params,
    n_trainable_params,
    TRY_CAST(extra ->> '$.trainable_fraction' AS DOUBLE) AS trainable_fraction,
    quality_metric,
    quality_value,
    eval_loss,
    train_loss_final,
    TRY_CAST(extra ->> '$.exact_match' AS DOUBLE) AS exact_match,
    amu_bytes,
    amu_ratio,
    pcu_ratio,
    mfu,
    al_s,
    latency_s_p50,
    latency_s_p90,
    latency_s_p99,
    st_samples_per_param_s,
    tokens_per_s,
    aec_w,
    energy_j,
    energy_source,
    tokens_per_j,
    energy_j_per_token,
    peak_mem_bytes,
    model_size_bytes,
    cost_usd_per_mtok,
    co2_g_per_mtok,
    error,
    run_id,
    git_sha,
    timestamp_utc
FROM measured
WHERE axis = 'finetune'
ORDER BY rev, stage, cell, trial;
