-- trial_metrics: every metric of every successful trial as one long row (rev, ..., cell, trial, metric, value).
--
-- The ok rows of `measured`, unpivoted over the metrics `metric_catalog` lists for their axis; a null value
-- is left out (so n in `scores` counts the trials that measured it). quality_metric is set on the
-- 'quality' rows only; higher_is_better is the catalog's direction, or the row's quality direction.
--
--   efficientllm sql "SELECT cell, trial, value FROM trial_metrics WHERE metric = 'al_s' ORDER BY cell, trial"
CREATE VIEW trial_metrics AS
WITH long AS (
    UNPIVOT (
        SELECT
            rev, axis, stage, board, size_group, task, cell, technique_key, is_baseline, trial, quality_metric,
            quality_higher_is_better,
            quality_value AS quality, amu_bytes, pcu_ratio, mfu, al_s, latency_s_p50, latency_s_p99,
            tt_tokens_per_param_s, st_samples_per_param_s, it_tokens_per_s, tokens_per_s, ttft_s_p50, tpot_s_p50,
            aec_w, energy_j_per_token, peak_mem_bytes, model_mem_bytes, kv_cache_bytes_per_token, model_size_bytes,
            mcr_nominal, mcr_measured, cost_usd_per_mtok, co2_g_per_mtok, time_to_target_s, energy_to_target_j
        FROM measured
        WHERE status = 'ok'
    )
    ON quality, amu_bytes, pcu_ratio, mfu, al_s, latency_s_p50, latency_s_p99, tt_tokens_per_param_s,
        st_samples_per_param_s, it_tokens_per_s, tokens_per_s, ttft_s_p50, tpot_s_p50, aec_w, energy_j_per_token,
        peak_mem_bytes, model_mem_bytes, kv_cache_bytes_per_token, model_size_bytes, mcr_nominal, mcr_measured,
        cost_usd_per_mtok, co2_g_per_mtok, time_to_target_s, energy_to_target_j
    INTO NAME metric VALUE value
)
SELECT
    l.rev,
    l.axis,
    l.stage,
    l.board,
    l.size_group,
    l.task,
    l.cell,
    l.technique_key,
    l.is_baseline,
    coalesce(l.trial, 0) AS trial,
    l.metric,
    CASE WHEN l.metric = 'quality' THEN l.quality_metric END AS quality_metric,
    c.label,
    c.unit,
    coalesce(c.higher_is_better, l.quality_higher_is_better) AS higher_is_better,
    c.radar,
    c.position,
    l.value
FROM long AS l
JOIN metric_catalog AS c ON c.axis = l.axis AND c.metric = l.metric;
