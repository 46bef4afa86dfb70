-- quantize: the latest row of every quantization / inference cell, with MCR and the quality gate computed here.
--
-- One row per (rev, stage, cell, trial) of axis 'quantize' (stages quantize, quantize_hub, ...), failed and
-- skipped cells included. precision is the technique key (fp32, bf16, fp16, int8, int4, fp4). quality_value
-- is the cell's task score or perplexity (quality_metric names it; `measured` infers the direction).
-- it_tokens_per_s is the paper's inference throughput (generated tokens / s); ttft_s_p50 / tpot_s_p50 the
-- median time to first token and per output token; model_size_bytes the weights as held.
-- mcr_nominal / mcr_measured are the paper's model compression rate against the bf16 cell of the same
-- (rev, stage, model), computed in `measured`: (size_bf16 / size) x (quality / quality_bf16), nominal from
-- bits per weight, measured from bytes. quality_vs_bf16 is quality / quality_bf16 (flipped when lower is
-- better, so above 1 is always better), and passes_quality_gate says whether that ratio reaches the stage's
-- extra.quality_gate_ratio (e.g. 0.99, as MLPerf); null without an ok bf16 cell or a ratio.
--
--   efficientllm sql "SELECT cell, precision, quality_value, mcr_nominal, passes_quality_gate FROM quantize"
CREATE VIEW quantize AS
SELECT
    rev,
    stage,
    board,
    cell,
    technique_key AS precision,
    trial,
    status,
    model,
    device_name,
    device_count,
    dtype,
    batch_size,
    seq_len,
    n_params,
    nominal_bits,
    quality_metric,
    quality_value,
    eval_loss,
    TRY_CAST(extra ->> '$.val_ppl' AS DOUBLE) AS val_ppl,
    quality_ratio_vs_baseline AS quality_vs_bf16,
    TRY_CAST(extra ->> '$.quality_gate_ratio' AS DOUBLE) AS quality_gate_ratio,
    quality_ratio_vs_baseline >= TRY_CAST(extra ->> '$.quality_gate_ratio' AS DOUBLE) AS passes_quality_gate,
    model_size_bytes,
    mcr_nominal,
    mcr_measured,
    amu_bytes,
    amu_ratio,
    pcu_ratio,
    al_s,
    latency_s_p50,
    latency_s_p90,
    latency_s_p99,
    it_tokens_per_s,
    ttft_s_p50,
    tpot_s_p50,
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
WHERE axis = 'quantize'
ORDER BY rev, stage, cell, trial;
