-- leaderboard_pretrain: one row per cell, ranked by quality, trials averaged.
--
-- The architecture-pretraining cells: a pivot of `scores`. Only cells whose latest trial rows are ok count;
-- n_trials says how many. rank is the quality rank within (rev, stage, board); quality is validation perplexity
-- (lower is better). For every metric: its mean over trials (units in the name: bytes, seconds, watts, joules);
-- quality_ci95 / al_s_ci95 the 95% CI half-width (null for one trial). For the radar metrics, <metric>_rank is the
-- rank and <metric>_score the paper's normalised score in [0.1, 1] (1 = best; appendix eqs. 10-11).
-- <metric>_vs_mha is the cell's mean / the `mha` baseline cell's mean on the same board (null without an ok `mha`
-- cell); read it as 'times the baseline': al_s_vs_mha = 0.8 is 20% less time per step. quality_within_noise_of_mha
-- / al_s_within_noise_of_mha: the 95% CIs overlap (null with one trial). cost_usd_per_mtok and co2_g_per_mtok are
-- estimates from user-set assumptions (`measured`); energy_source lists where the joules came from (nvml, rapl,
-- estimate).
--
--   efficientllm sql "SELECT rank, cell, quality_value, quality_ci95, al_s_vs_mha FROM leaderboard_pretrain"
CREATE VIEW leaderboard_pretrain AS
WITH cells AS (
    SELECT
        rev,
        stage,
        board,
        cell,
        min(technique) AS technique,
        any_value(extra ->> '$.attention') AS attention,
        any_value(extra ->> '$.positional') AS positional,
        any_value(extra ->> '$.mlp') AS mlp,
        any_value(extra ->> '$.family') AS family,
        max(n_params) AS n_params,
        max(n_active_params) AS n_active_params,
        count(*) AS n_trials,
        min(quality_metric) AS quality_metric,
        string_agg(DISTINCT energy_source, ',' ORDER BY energy_source) AS energy_source
    FROM measured
    WHERE axis = 'pretrain' AND status = 'ok'
    GROUP BY rev, stage, board, cell
)
SELECT
    max(s.rank) FILTER (WHERE s.metric = 'quality') AS rank,
    c.*,
    max(s.mean) FILTER (WHERE s.metric = 'quality') AS quality_value,
    max(s.ci95) FILTER (WHERE s.metric = 'quality') AS quality_ci95,
    max(s.mean) FILTER (WHERE s.metric = 'amu_bytes') AS amu_bytes,
    max(s.mean) FILTER (WHERE s.metric = 'pcu_ratio') AS pcu_ratio,
    max(s.mean) FILTER (WHERE s.metric = 'mfu') AS mfu,
    max(s.mean) FILTER (WHERE s.metric = 'al_s') AS al_s,
    max(s.mean) FILTER (WHERE s.metric = 'latency_s_p50') AS latency_s_p50,
    max(s.mean) FILTER (WHERE s.metric = 'latency_s_p99') AS latency_s_p99,
    max(s.mean) FILTER (WHERE s.metric = 'tt_tokens_per_param_s') AS tt_tokens_per_param_s,
    max(s.mean) FILTER (WHERE s.metric = 'tokens_per_s') AS tokens_per_s,
    max(s.mean) FILTER (WHERE s.metric = 'aec_w') AS aec_w,
    max(s.mean) FILTER (WHERE s.metric = 'energy_j_per_token') AS energy_j_per_token,
    max(s.mean) FILTER (WHERE s.metric = 'peak_mem_bytes') AS peak_mem_bytes,
    max(s.mean) FILTER (WHERE s.metric = 'kv_cache_bytes_per_token') AS kv_cache_bytes_per_token,
    max(s.mean) FILTER (WHERE s.metric = 'cost_usd_per_mtok') AS cost_usd_per_mtok,
    max(s.mean) FILTER (WHERE s.metric = 'co2_g_per_mtok') AS co2_g_per_mtok,
    max(s.ci95) FILTER (WHERE s.metric = 'al_s') AS al_s_ci95,
    max(s.normalized_score) FILTER (WHERE s.metric = 'quality') AS quality_score,
    max(s.rank) FILTER (WHERE s.metric = 'amu_bytes') AS amu_bytes_rank,
    max(s.normalized_score) FILTER (WHERE s.metric = 'amu_bytes') AS amu_bytes_score,
    max(s.rank) FILTER (WHERE s.metric = 'pcu_ratio') AS pcu_ratio_rank,
    max(s.normalized_score) FILTER (WHERE s.metric = 'pcu_ratio') AS pcu_ratio_score,
    max(s.rank) FILTER (WHERE s.metric = 'al_s') AS al_s_rank,
    max(s.normalized_score) FILTER (WHERE s.metric = 'al_s') AS al_s_score,
    max(s.rank) FILTER (WHERE s.metric = 'tt_tokens_per_param_s') AS tt_tokens_per_param_s_rank,
    max(s.normalized_score) FILTER (WHERE s.metric = 'tt_tokens_per_param_s') AS tt_tokens_per_param_s_score,
    max(s.rank) FILTER (WHERE s.metric = 'aec_w') AS aec_w_rank,
    max(s.normalized_score) FILTER (WHERE s.metric = 'aec_w') AS aec_w_score,
    max(s.vs_baseline) FILTER (WHERE s.metric = 'quality') AS quality_vs_mha,
    max(s.vs_baseline) FILTER (WHERE s.metric = 'amu_bytes') AS amu_bytes_vs_mha,
    max(s.vs_baseline) FILTER (WHERE s.metric = 'peak_mem_bytes') AS peak_mem_bytes_vs_mha,
    max(s.vs_baseline) FILTER (WHERE s.metric = 'al_s') AS al_s_vs_mha,
    max(s.vs_baseline) FILTER (WHERE s.metric = 'tokens_per_s') AS tokens_per_s_vs_mha,
    max(s.vs_baseline) FILTER (WHERE s.metric = 'aec_w') AS aec_w_vs_mha,
    max(s.vs_baseline) FILTER (WHERE s.metric = 'energy_j_per_token') AS energy_j_per_token_vs_mha,
    max(s.vs_baseline) FILTER (WHERE s.metric = 'kv_cache_bytes_per_token') AS kv_cache_bytes_per_token_vs_mha,
    bool_or(s.within_noise_of_baseline) FILTER (WHERE s.metric = 'quality') AS quality_within_noise_of_mha,
    bool_or(s.within_noise_of_baseline) FILTER (WHERE s.metric = 'al_s') AS al_s_within_noise_of_mha
FROM cells AS c
LEFT JOIN scores AS s ON s.axis = 'pretrain' AND s.rev = c.rev AND s.stage = c.stage AND s.board = c.board
    AND s.cell = c.cell
GROUP BY ALL
ORDER BY c.rev, c.stage, c.board, rank NULLS LAST, c.cell;
