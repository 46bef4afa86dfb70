-- recommend/cells: per cell, the means `efficientllm recommend` chooses on (quality, memory, latency, energy, cost).
--
-- Parameters: $rev, and $axis (NULL for every axis). One row per (rev, axis, stage, board, cell) of `scores`.
SELECT
    rev, axis, stage, board, cell, technique_key, bool_or(is_baseline) AS is_baseline,
    max(n) FILTER (WHERE metric = 'quality') AS n_trials,
    any_value(quality_metric) FILTER (WHERE metric = 'quality') AS quality_metric,
    max(mean) FILTER (WHERE metric = 'quality') AS quality,
    bool_or(higher_is_better) FILTER (WHERE metric = 'quality') AS quality_higher_is_better,
    max(baseline_mean) FILTER (WHERE metric = 'quality') AS baseline_quality,
    max(mean) FILTER (WHERE metric = 'peak_mem_bytes') AS peak_mem_bytes,
    max(mean) FILTER (WHERE metric = 'al_s') AS al_s,
    max(mean) FILTER (WHERE metric = 'energy_j_per_token') AS energy_j_per_token,
    max(mean) FILTER (WHERE metric = 'cost_usd_per_mtok') AS cost_usd_per_mtok,
    max(mean) FILTER (WHERE metric = 'co2_g_per_mtok') AS co2_g_per_mtok
FROM scores
WHERE rev = $rev AND ($axis IS NULL OR axis = $axis)
GROUP BY rev, axis, stage, board, cell, technique_key
ORDER BY axis, stage, board, cell
