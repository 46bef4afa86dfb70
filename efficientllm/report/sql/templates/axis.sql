-- {axis}: the latest row of every {axis} cell, with the columns that compare them.
--
-- One template for the three per-axis views: `views.axis_sql` fills in the names in braces below with the axis and
-- its own columns (`views.AXIS_VIEWS`). One row per (rev, stage, cell, trial) of the axis, failed and skipped cells
-- included (their metrics are null; see `failures` for why). Units are in the column names: bytes, seconds, watts,
-- joules. quality_value is the axis quality metric (quality_metric names it; `measured` infers its direction).
-- amu_* is the paper's average memory utilisation, pcu_ratio its peak compute utilisation, al_s the mean seconds
-- per training step or generate request, aec_w the mean power over the measured window (energy_source: nvml, rapl
-- or estimate). cost_usd_per_mtok and co2_g_per_mtok are computed from user-set assumptions (see `measured`).
--
-- pretrain: one row per architecture variant. quality_value is the validation perplexity (lower is better); mfu the
--   model-FLOPs utilisation; tt_tokens_per_param_s the paper's training throughput (tokens / parameter / s);
--   attention / positional / mlp / family come from the row's `extra` (null where a stage did not record them).
-- finetune: one row per `<method>-<dataset>` cell. method is the technique (lora, rslora, dora, freeze, full, ...),
--   task the dataset; quality_value the held-out eval loss (lower is better); st_samples_per_param_s the paper's
--   sample throughput (samples / parameter / s, parameters of the model as trained); trainable_fraction and
--   exact_match come from the row's `extra`.
-- quantize: stages quantize, quantize_hub, quantize_real, ... precision is the technique key (fp32, bf16, fp16,
--   int8, int4, fp4); quality_value a task score or a perplexity; it_tokens_per_s the paper's inference throughput
--   (generated tokens / s); ttft_s_p50 / tpot_s_p50 the median time to first token and per output token;
--   model_size_bytes the weights as held. mcr_nominal / mcr_measured are the paper's model compression rate against
--   the bf16 cell of the same (rev, stage, model), computed in `measured`: (size_bf16 / size) x (quality /
--   quality_bf16), nominal from bits per weight, measured from bytes. quality_vs_bf16 is quality / quality_bf16
--   (flipped when lower is better, so above 1 is always better), and passes_quality_gate says whether that ratio
--   reaches the stage's extra.quality_gate_ratio (e.g. 0.99, as MLPerf); null without an ok bf16 cell or a ratio.
--
--   efficientllm sql "SELECT cell, quality_value, tokens_per_s FROM pretrain"
--   efficientllm sql "SELECT cell, method, task, quality_value, al_s FROM finetune ORDER BY task, al_s"
--   efficientllm sql "SELECT cell, precision, quality_value, mcr_nominal, passes_quality_gate FROM quantize"
CREATE VIEW {axis} AS
SELECT
    rev,
    stage,
    board,
    cell,
    {cell_columns},
    trial,
    status,
    model,
    device_name,
    device_count,
    dtype,
    batch_size,
    seq_len,
    n_params,
    {size_columns},
    quality_metric,
    quality_value,
    eval_loss,
    {quality_columns},
    amu_bytes,
    amu_ratio,
    pcu_ratio,
    al_s,
    latency_s_p50,
    latency_s_p90,
    latency_s_p99,
    {speed_columns},
    aec_w,
    energy_j,
    energy_source,
    tokens_per_j,
    energy_j_per_token,
    peak_mem_bytes,
    {memory_columns},
    cost_usd_per_mtok,
    co2_g_per_mtok,
    error,
    run_id,
    git_sha,
    timestamp_utc
FROM measured
WHERE axis = '{axis}'
ORDER BY rev, stage, cell, trial;
