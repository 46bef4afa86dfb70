-- leaderboard_pretrain: pretraining cells ranked by quality, with ratios to the MHA baseline.
--
-- Only cells whose latest row has status 'ok' are ranked. Trials of one cell are averaged (n_trials says
-- how many), so the latency percentiles of a multi-trial cell are means of per-trial percentiles.
-- rank orders cells within a stage by quality_value ascending: the quality metric of this axis is
-- validation perplexity, where lower is better; ties share a rank.
--
-- The *_vs_mha columns divide a cell's value by the value of the `mha` cell of the same stage (multi-head
-- attention, the paper's baseline); they are null when there is no ok `mha` cell or its value is null or
-- zero. Read them as "times the baseline": al_s_vs_mha = 0.8 is 20% less time per step,
-- tokens_per_s_vs_mha = 1.25 is 25% more throughput. tokens_per_j (energy efficiency) falls back to
-- tokens_per_s / aec_w when a row does not carry it, which is the same quantity (tokens/s / J/s).
--
--   efficientllm sql "SELECT rank, cell, quality_value, al_s_vs_mha FROM leaderboard_pretrain"
CREATE VIEW leaderboard_pretrain AS
WITH per_cell AS (
    SELECT
        stage,
        cell,
        min(technique) AS technique,
        count(*) AS n_trials,
        max(n_params) AS n_params,
        min(quality_metric) AS quality_metric,
        avg(quality_value) AS quality_value,
        avg(amu_bytes) AS amu_bytes,
        avg(amu_ratio) AS amu_ratio,
        avg(pcu_ratio) AS pcu_ratio,
        avg(mfu) AS mfu,
        avg(al_s) AS al_s,
        avg(latency_s_p50) AS latency_s_p50,
        avg(latency_s_p90) AS latency_s_p90,
        avg(latency_s_p99) AS latency_s_p99,
        avg(tt_tokens_per_param_s) AS tt_tokens_per_param_s,
        avg(tokens_per_s) AS tokens_per_s,
        avg(aec_w) AS aec_w,
        avg(energy_j) AS energy_j,
        string_agg(DISTINCT energy_source, ',' ORDER BY energy_source) AS energy_source,
        avg(coalesce(tokens_per_j, tokens_per_s / nullif(aec_w, 0))) AS tokens_per_j,
        avg(peak_mem_bytes) AS peak_mem_bytes,
        avg(kv_cache_bytes_per_token) AS kv_cache_bytes_per_token
    FROM pretrain
    WHERE status = 'ok'
    GROUP BY stage, cell
),
baseline AS (
    SELECT * FROM per_cell WHERE cell = 'mha'
)
SELECT
    rank() OVER (PARTITION BY c.stage ORDER BY c.quality_value ASC NULLS LAST) AS rank,
    c.*,
    c.quality_value / nullif(b.quality_value, 0) AS quality_vs_mha,
    c.amu_bytes / nullif(b.amu_bytes, 0) AS amu_bytes_vs_mha,
    c.peak_mem_bytes / nullif(b.peak_mem_bytes, 0) AS peak_mem_vs_mha,
    c.al_s / nullif(b.al_s, 0) AS al_s_vs_mha,
    c.tokens_per_s / nullif(b.tokens_per_s, 0) AS tokens_per_s_vs_mha,
    c.aec_w / nullif(b.aec_w, 0) AS aec_w_vs_mha,
    c.tokens_per_j / nullif(b.tokens_per_j, 0) AS tokens_per_j_vs_mha
FROM per_cell AS c
LEFT JOIN baseline AS b ON b.stage IS NOT DISTINCT FROM c.stage
ORDER BY c.stage, rank, c.cell;
