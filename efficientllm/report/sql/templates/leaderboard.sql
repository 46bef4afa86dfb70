-- leaderboard_{axis}: one row per cell, ranked by quality, trials averaged.
--
-- One template for the three axes: `views.leaderboard_sql` fills in the names in braces below with the axis, its
-- baseline technique (mha / full / bf16, as in `measured`), the columns that describe its cells
-- (`views.LEADERBOARDS`), and the metric columns, one per `metric_catalog` entry of the axis: the means in
-- leaderboard_position order, rank and score of the radar metrics in position order, and the ratios to the
-- baseline in vs_baseline_position order.
--
-- A pivot of `scores`. Only cells whose latest trial rows are ok count; n_trials says how many. rank is the quality
-- rank within (rev, stage, board); quality is the axis quality metric (quality_metric names it: validation
-- perplexity for pretraining, held-out eval loss for fine-tuning, a task score or a perplexity for quantization;
-- `measured` infers its direction). The cell columns: pretraining technique, attention, positional, mlp, family,
-- n_params, n_active_params; fine-tuning method, task (one board per base model and dataset), n_params,
-- n_trainable_params; quantization precision, model (one board per stage and model), n_params, nominal_bits.
-- For every metric: its mean over trials (units in the name: bytes, seconds, watts, joules); quality_ci95 /
-- al_s_ci95 the 95% CI half-width (null for one trial). For the radar metrics, <metric>_rank is the rank and
-- <metric>_score the paper's normalised score in [0.1, 1] (1 = best; appendix eqs. 10-11). <metric>_vs_<baseline>
-- is the cell's mean / the baseline cell's mean on the same board (null without an ok baseline cell); read it as
-- 'times the baseline': al_s_vs_mha = 0.8 is 20% less time per step. quality_within_noise_of_<baseline> /
-- al_s_within_noise_of_<baseline>: the 95% CIs overlap (null with one trial). cost_usd_per_mtok and co2_g_per_mtok
-- are estimates from user-set assumptions (`measured`); energy_source lists where the joules came from (nvml, rapl,
-- estimate).
--
--   efficientllm sql "SELECT rank, cell, quality_value, quality_ci95, al_s_vs_mha FROM leaderboard_pretrain"
--   efficientllm sql "SELECT task, rank, cell, quality_value, al_s_vs_full FROM leaderboard_finetune"
--   efficientllm sql "SELECT stage, rank, cell, quality_value, mcr_nominal, al_s_vs_bf16 FROM leaderboard_quantize"
CREATE VIEW leaderboard_{axis} AS
WITH cells AS (
    -- the cell columns of every axis (each the same in every trial of a cell); the view keeps its axis' ones
    SELECT
        rev,
        stage,
        board,
        cell,
        min(technique) AS technique,
        min(technique) AS method,
        any_value(technique_key) AS precision,
        any_value(extra ->> '$.attention') AS attention,
        any_value(extra ->> '$.positional') AS positional,
        any_value(extra ->> '$.mlp') AS mlp,
        any_value(extra ->> '$.family') AS family,
        any_value(task) AS task,
        any_value(model) AS model,
        max(n_params) AS n_params,
        max(n_active_params) AS n_active_params,
        max(n_trainable_params) AS n_trainable_params,
        max(nominal_bits) AS nominal_bits,
        count(*) AS n_trials,
        min(quality_metric) AS quality_metric,
        string_agg(DISTINCT energy_source, ',' ORDER BY energy_source) AS energy_source
    FROM measured
    WHERE axis = '{axis}' AND status = 'ok'
    GROUP BY rev, stage, board, cell
)
SELECT
    max(s.rank) FILTER (WHERE s.metric = 'quality') AS rank,
    c.rev,
    c.stage,
    c.board,
    c.cell,
    {cell_columns},
    c.n_trials,
    c.quality_metric,
    c.energy_source,
    max(s.mean) FILTER (WHERE s.metric = 'quality') AS quality_value,
    max(s.ci95) FILTER (WHERE s.metric = 'quality') AS quality_ci95,
    {means},
    max(s.ci95) FILTER (WHERE s.metric = 'al_s') AS al_s_ci95,
    max(s.normalized_score) FILTER (WHERE s.metric = 'quality') AS quality_score,
    {ranks_and_scores},
    {ratios},
    bool_or(s.within_noise_of_baseline) FILTER (WHERE s.metric = 'quality') AS quality_within_noise_of_{baseline},
    bool_or(s.within_noise_of_baseline) FILTER (WHERE s.metric = 'al_s') AS al_s_within_noise_of_{baseline}
FROM cells AS c
LEFT JOIN scores AS s ON s.axis = '{axis}' AND s.rev = c.rev AND s.stage = c.stage AND s.board = c.board
    AND s.cell = c.cell
GROUP BY ALL
ORDER BY c.rev, c.stage, c.board, rank NULLS LAST, c.cell;
