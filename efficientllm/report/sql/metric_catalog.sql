-- metric_catalog: the metrics each axis is compared on, with their unit, their direction and their place.
--
-- One row per (axis, metric). metric is a column of `measured` ('quality' stands for quality_value, whose
-- direction comes from the row: see measured.quality_higher_is_better, so higher_is_better is null here).
-- radar marks the paper's efficiency metrics that its figures normalise (appendix eqs. 10-11): quality,
-- AMU, PCU, AL, the axis throughput (TT / ST / IT), AEC and, for quantization, MCR. position orders columns.
-- The leaderboards (`leaderboard_<axis>`, one template) are built from this catalog: leaderboard_position orders
-- the metric's mean there, and vs_baseline_position its `<metric>_vs_<baseline>` ratio (null: no ratio column).
-- Cost and CO2 (labels marked †) are estimates from user-set assumptions (see `measured`), never radar metrics.
--
--   efficientllm sql "SELECT metric, label, unit, higher_is_better FROM metric_catalog WHERE axis = 'quantize'"
CREATE VIEW metric_catalog AS
WITH common(metric, label, unit, higher_is_better, radar, position, leaderboard_position, vs_baseline_position) AS (
    VALUES
        ('quality', 'quality', '', NULL, true, 0, 0, 0),
        ('amu_bytes', 'AMU', 'bytes', false, true, 10, 10, 10),
        ('pcu_ratio', 'PCU', 'ratio', true, true, 20, 20, NULL),
        ('al_s', 'AL', 's', false, true, 30, 30, 30),
        ('latency_s_p50', 'latency p50', 's', false, false, 31, 31, NULL),
        ('latency_s_p99', 'latency p99', 's', false, false, 32, 32, NULL),
        ('aec_w', 'AEC', 'W', false, true, 50, 50, 50),
        ('energy_j_per_token', 'energy per token', 'J/token', false, false, 51, 51, 60),
        ('peak_mem_bytes', 'peak memory', 'bytes', false, false, 60, 60, 20),
        ('model_mem_bytes', 'model memory', 'bytes', false, false, 63, 63, NULL),
        ('cost_usd_per_mtok', 'cost†', 'USD/Mtoken', false, false, 80, 80, NULL),
        ('co2_g_per_mtok', 'CO2†', 'gCO2/Mtoken', false, false, 81, 81, NULL)
),
specific(axis, metric, label, unit, higher_is_better, radar, position, leaderboard_position,
         vs_baseline_position) AS (
    VALUES
        ('pretrain', 'tt_tokens_per_param_s', 'TT', 'tokens/param/s', true, true, 40, 40, NULL),
        ('pretrain', 'tokens_per_s', 'throughput', 'tokens/s', true, false, 41, 41, 41),
        ('pretrain', 'mfu', 'MFU', 'ratio', true, false, 21, 21, NULL),
        ('pretrain', 'kv_cache_bytes_per_token', 'KV cache', 'bytes/token', false, false, 61, 61, 70),
        ('pretrain', 'time_to_target_s', 'time to target loss', 's', false, false, 35, 35, NULL),
        ('pretrain', 'energy_to_target_j', 'energy to target loss', 'J', false, false, 52, 52, NULL),
        ('finetune', 'st_samples_per_param_s', 'ST', 'samples/param/s', true, true, 40, 40, 40),
        ('finetune', 'tokens_per_s', 'throughput', 'tokens/s', true, false, 41, 41, 41),
        ('finetune', 'mfu', 'MFU', 'ratio', true, false, 21, 21, NULL),
        ('quantize', 'it_tokens_per_s', 'IT', 'tokens/s', true, true, 40, 40, 40),
        ('quantize', 'ttft_s_p50', 'TTFT p50', 's', false, false, 33, 41, 41),
        ('quantize', 'tpot_s_p50', 'TPOT p50', 's', false, false, 34, 42, 42),
        ('quantize', 'model_size_bytes', 'model size', 'bytes', false, false, 62, 62, 70),
        ('quantize', 'mcr_nominal', 'MCR', 'x', true, true, 70, 70, NULL),
        ('quantize', 'mcr_measured', 'MCR (measured bytes)', 'x', true, false, 71, 71, NULL),
        -- the vision axis (efficientllm/vision): a token is an image patch; TT over patch tokens, ST over images
        ('pretrain_vision', 'tt_tokens_per_param_s', 'TT', 'patches/param/s', true, true, 40, 40, NULL),
        ('pretrain_vision', 'tokens_per_s', 'throughput', 'patches/s', true, false, 41, 41, 41),
        ('pretrain_vision', 'mfu', 'MFU', 'ratio', true, false, 21, 21, NULL),
        ('pretrain_vision', 'kv_cache_bytes_per_token', 'K/V per patch', 'bytes/token', false, false, 61, 61, 70),
        ('finetune_vision', 'st_samples_per_param_s', 'ST', 'images/param/s', true, true, 40, 40, 40),
        ('finetune_vision', 'tokens_per_s', 'throughput', 'patches/s', true, false, 41, 41, 41),
        ('finetune_vision', 'mfu', 'MFU', 'ratio', true, false, 21, 21, NULL)
)
SELECT axis, metric, label, unit, higher_is_better, radar, position, leaderboard_position, vs_baseline_position
FROM (VALUES ('pretrain'), ('finetune'), ('quantize'), ('pretrain_vision'), ('finetune_vision')) AS axes(axis)
CROSS JOIN common
UNION ALL
SELECT axis, metric, label, unit, higher_is_better, radar, position, leaderboard_position, vs_baseline_position
FROM specific
ORDER BY axis, position;
