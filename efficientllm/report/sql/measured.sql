-- measured: `latest` plus the derived columns every other view compares on (one row per rev, stage, cell, trial).
--
-- Comparison keys:
--   technique_key   the technique a cell measures: `technique` (pretrain / finetune), the precision for quantize
--                   (extra.precision, else technique, else the cell slug).
--   baseline        the axis baseline technique (paper): pretrain 'mha', finetune 'full', quantize 'bf16'
--                   (the vision axis: pretrain_vision 'mha', finetune_vision 'full');
--                   is_baseline marks its cell(s).
--   size_group      the model size a leaderboard is split by: extra.size when a stage records it, else the
--                   `model` (the base model of finetune / quantize); null for pretrain (one size per run; compare
--                   sizes across DVC experiments with `efficientllm sql --rev`).
--   task            the fine-tuning dataset (finetune only).
--   board           size_group and task joined with ' · ' ('' when both are null): cells are ranked, normalised
--                   and compared with the baseline within one (rev, stage, board).
-- Derived metrics:
--   quality_higher_is_better  false when quality_metric names a perplexity, loss, bits-per-byte, error rate or a
--                   Fréchet distance (fd_<dataset>, fid: the vision axis).
--   throughput_tokens_per_s   tokens_per_s; for quantize the generated tokens per second (it_tokens_per_s).
--   energy_j_per_token        1 / tokens_per_j, else aec_w / throughput_tokens_per_s.
--   energy_measured           the joules come from a meter (energy_source nvml or rapl), not an estimate.
--   time_to_target_s, energy_to_target_j   pretraining at equal quality: the training time (and window power x
--                             that time) until the validation loss first reached pretrain.target_val_loss
--                             (extra.to_target); null when it was not reached or not evaluated.
--   tensor_mem_bytes          the memory anatomy's counted tensors: weights + gradients + optimizer state +
--                             saved activations + KV cache (null when a part is unknown).
--   model_mem_bytes           the memory a comparison of techniques rests on: on a GPU the allocator's peak
--                             (peak_mem_bytes, source torch), elsewhere tensor_mem_bytes (the CPU's RSS is mostly
--                             the runtime's libraries); model_mem_source says which.
--   nominal_bits              quantize: extra.nominal_bits, else 32 / 16 / 8 / 4 from the precision slug.
--   mcr_nominal, mcr_measured quantize: the paper's MCR against the bf16 cell of the same (rev, stage, board):
--                   (size_bf16 / size) x (quality / quality_bf16), with the quality ratio flipped for a
--                   lower-is-better metric; nominal uses bits per weight, measured the model_size_bytes. A row's
--                   own value is kept where no bf16 reference is ok.
-- Cost and CO2 (USER-SET ASSUMPTIONS from the `assumptions` table, i.e. params.yaml `report:`; not measured):
--   cost_usd_per_mtok  = usd_per_device_hour x device_count / 3600 x 1e6 / throughput_tokens_per_s
--   co2_g_per_mtok     = energy_j_per_token x 1e6 / 3.6e6 (kWh per million tokens) x grid_g_co2_per_kwh
--   They replace the row columns of the same name; energy_source says whether the joules were measured
--   (nvml, rapl) or an estimate, so an estimated CO2 figure is visibly one.
--
--   efficientllm sql "SELECT cell, board, energy_source, cost_usd_per_mtok, co2_g_per_mtok FROM measured"
CREATE VIEW measured AS
WITH keyed AS (
    SELECT
        l.*,
        CASE l.axis WHEN 'pretrain' THEN 'mha' WHEN 'finetune' THEN 'full' WHEN 'quantize' THEN 'bf16'
            WHEN 'pretrain_vision' THEN 'mha' WHEN 'finetune_vision' THEN 'full' END AS baseline,
        CASE
            WHEN l.axis = 'quantize' THEN coalesce(l.extra ->> '$.precision', l.technique, l.cell)
            ELSE coalesce(l.technique, l.cell)
        END AS technique_key,
        coalesce(l.extra ->> '$.size', CASE WHEN l.axis <> 'pretrain' THEN l.model END) AS size_group,
        CASE WHEN l.axis = 'finetune' THEN l.dataset END AS task,
        -- a whole word of the metric name ('val_ppl', 'word_perplexity', 'eval_loss'; not the 'wer' of 'answer')
        NOT regexp_matches(lower(l.quality_metric),
                           '(^|[^a-z])(ppl|perplexity|loss|bpb|bits_per_byte|error|wer|cer|fd|fid)([^a-z]|$)')
            AS quality_higher_is_better,
        CASE
            WHEN l.axis = 'quantize' THEN coalesce(l.it_tokens_per_s, l.tokens_per_s)
            ELSE l.tokens_per_s
        END AS throughput_tokens_per_s
    FROM latest AS l
),
grouped AS (
    SELECT
        *,
        concat_ws(' · ', size_group, task) AS board,
        technique_key = baseline OR cell = baseline AS is_baseline,
        coalesce(1.0 / nullif(tokens_per_j, 0), aec_w / nullif(throughput_tokens_per_s, 0)) AS energy_j_per_token,
        coalesce(energy_source IN ('nvml', 'rapl'), false) AS energy_measured,
        TRY_CAST(extra ->> '$.to_target.train_s' AS DOUBLE) AS time_to_target_s,
        TRY_CAST(extra ->> '$.to_target.energy_j' AS DOUBLE) AS energy_to_target_j,
        mem_weights_bytes + mem_grads_bytes + mem_optimizer_bytes + mem_activations_bytes + mem_kv_cache_bytes
            AS tensor_mem_bytes,
        CASE WHEN axis = 'quantize' THEN coalesce(
            TRY_CAST(extra ->> '$.nominal_bits' AS DOUBLE),
            CASE lower(technique_key)
                WHEN 'fp32' THEN 32.0 WHEN 'bf16' THEN 16.0 WHEN 'fp16' THEN 16.0
                WHEN 'int8' THEN 8.0 WHEN 'int4' THEN 4.0 WHEN 'fp4' THEN 4.0 WHEN 'nf4' THEN 4.0
            END
        ) END AS nominal_bits
    FROM keyed
),
sourced AS (
    SELECT
        *,
        CASE WHEN peak_mem_source = 'torch' THEN peak_mem_bytes ELSE tensor_mem_bytes END AS model_mem_bytes,
        CASE WHEN peak_mem_source = 'torch' THEN 'torch' WHEN tensor_mem_bytes IS NOT NULL THEN 'tensors' END
            AS model_mem_source
    FROM grouped
),
referenced AS (
    SELECT
        *,
        avg(CASE WHEN is_baseline AND status = 'ok' THEN quality_value END) OVER board_w AS baseline_quality_value,
        avg(CASE WHEN is_baseline AND status = 'ok' THEN model_size_bytes END) OVER board_w
            AS baseline_model_size_bytes,
        avg(CASE WHEN is_baseline AND status = 'ok' THEN nominal_bits END) OVER board_w AS baseline_nominal_bits
    FROM sourced
    WINDOW board_w AS (PARTITION BY rev, stage, board)
),
ratios AS (
    SELECT
        *,
        CASE
            WHEN axis <> 'quantize' OR status <> 'ok' THEN NULL
            WHEN quality_higher_is_better THEN quality_value / nullif(baseline_quality_value, 0)
            ELSE baseline_quality_value / nullif(quality_value, 0)
        END AS quality_ratio_vs_baseline
    FROM referenced
)
SELECT
    r.* REPLACE (
        coalesce(r.baseline_nominal_bits / nullif(r.nominal_bits, 0) * r.quality_ratio_vs_baseline, r.mcr_nominal)
            AS mcr_nominal,
        coalesce(r.baseline_model_size_bytes / nullif(r.model_size_bytes, 0) * r.quality_ratio_vs_baseline,
                 r.mcr_measured) AS mcr_measured,
        a.usd_per_device_hour * coalesce(r.device_count, 1) / 3600.0 * 1e6 / nullif(r.throughput_tokens_per_s, 0)
            AS cost_usd_per_mtok,
        r.energy_j_per_token * 1e6 / 3.6e6 * a.grid_g_co2_per_kwh AS co2_g_per_mtok
    ),
    a.usd_per_device_hour,
    a.grid_g_co2_per_kwh
FROM ratios AS r
CROSS JOIN assumptions AS a;
