"""Scaling maps: inference latency and memory over context length x batch size, one model per cell.

The study reports every technique at one context length and one batch. Which attention variant or precision wins
changes along both: MQA, GQA and MLA read less KV cache per decode step than MHA, which only pays once the cache
outweighs the weights; 4-bit weights cut the bytes a decode step reads but add dequantisation work, which only pays
while decode is memory-bound (small batches). A map measures one model over a grid of points (context, batch):

- `attention` map (`sweep_attention@<variant>`): our decoder (efficientllm.models) with the variant's recipe at one
  realistic shape (`sweep.shape`, SmolLM2-135M's by default), random weights (speed and memory do not depend on
  them);
- `precision` map (`sweep_precision@<precision>`): a real model folder (`sweep.precision_model`) loaded at the
  precision by the quantization axis' own loaders (techniques.quantization.PRECISIONS), or, without one, a
  random-initialised LlamaForCausalLM of SmolLM2-135M's config.

Per point (`measure_point`), with the inference axis' machinery (efficientllm.inference):

- TTFT: the first token's time (prefill); TPOT: the median decode step, both from `TokenClock`, a logits processor
  that synchronises the device at every token (never end-to-end minus prefill); prefill tokens/s = batch x context
  / TTFT, decode tokens/s = batch / TPOT;
- the KV cache one request holds at its end, counted from the cache's tensors (`anatomy.cache_bytes`; the first
  warm-up request), beside the analytic count (`inference.kv_cache_bytes_per_token`, the model family's, x batch x
  cached positions) and their ratio;
- the largest batch whose weights (measured) + KV cache (measured bytes per token) fit `memory_budget_mib` at that
  context (`inference.max_batch_in_budget`); a point whose batch does not fit is recorded `over_budget` and not run,
  one the device runs out of memory on is `oom`, one longer than the model's positions `too_long`;
- on CUDA, the allocator's peak over the timed requests.

Prompts are seeded random token ids: with fixed shapes and exactly `max_new_tokens` greedy tokens per sequence,
latency and memory do not depend on which tokens they are (no MoE routing in these maps).

One row per cell, the points in `extra.points` (and their raw samples in `points.jsonl`): the measured-cell
lifecycle (trials, skipped / failed rows, DVC outs, the sanity checks) is one row per measured process, and the SQL
view `sweep` unnests the points once into typed columns, so every query of the maps, the figures and the view
`sweep_crossovers` reads one plain row per point. The row's own latency and memory columns are its headline point:
the longest context measured at the smallest batch.

    python -m stages.sweep --map attention --line gqa
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from efficientllm.config import SweepConfig
from efficientllm.inference import (
    LatencyResult,
    kv_cache_bytes_per_token,
    latency_pass,
    max_batch_in_budget,
    request_cache_bytes,
    timed_generate,
)
from efficientllm.maps import MAPS, SMOLLM2_135M, attention_variant, grid
from efficientllm.measure import device_name, num_threads, synchronize
from efficientllm.measure.anatomy import with_rest
from efficientllm.measure.timing import Phases
from efficientllm.records import CellId, CellOutcome

POINTS_FILE = "points.jsonl"
"""Beside each row: one JSON line per point with its raw samples (every request's TTFT and decode steps)."""

@dataclass
class Built:
    """A map's model, ready to measure, and what its row says about it."""

    model: nn.Module
    name: str
    """The row's `model`."""
    dtype: str
    """The row's `dtype`: float32 | bfloat16 | float16 | int8 | nf4 | fp4."""
    activation_dtype: torch.dtype
    """dtype of the hidden states and the KV cache (the analytic KV count's element size)."""
    n_params: int
    max_positions: int | None
    facts: dict[str, Any] = field(default_factory=dict)
    """Row `extra` fields: how the model was built or loaded."""


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on a CUDA device that supports it, else float32; otherwise the named float dtype."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# ----------------------------------------------------------------------------- the models of the two maps


def build_attention(slug: str, recipe: Mapping[str, Any], cfg: SweepConfig, device: torch.device) -> Built:
    """Our decoder with the variant's recipe at the map's shape, random weights (seeded), in the map's dtype."""
    from efficientllm.models.baselines import describe_variant

    variant = attention_variant(slug, recipe, cfg)
    dtype = resolve_dtype(cfg.dtype, device)
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = variant.build_model()
    model = model.to(dtype).eval()
    shape = cfg.model_shape()
    name = f"efficientlm {shape['hidden_size']}x{shape['num_hidden_layers']} {slug} (random init)"
    facts = {"recipe": dict(recipe), "weights": f"random init, seed {cfg.seed}",
             **describe_variant(variant, torch.finfo(dtype).bits / 8)}
    return Built(model, name, str(dtype).removeprefix("torch."), dtype, sum(p.numel() for p in model.parameters()),
                 variant.config.max_position_embeddings, facts)


def precision_source(cfg: SweepConfig, workdir: Path) -> tuple[Path, str, dict[str, Any]]:
    """(the folder the precision loaders read, the row's model name, extra facts).

    Without `precision_model`: a random-initialised LlamaForCausalLM of SmolLM2-135M's config saved (bf16) into
    `workdir`. With one: the folder itself, or, when the map needs fewer blocks (`precision_num_hidden_layers`) or
    more positions than it has (context + new tokens: speed and memory only, no quality is read past the trained
    length), a copy in `workdir` with its first N blocks and the positions raised.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    layers, needed = cfg.precision_num_hidden_layers, max(cfg.contexts) + cfg.max_new_tokens
    if cfg.precision_model is None:
        config = LlamaConfig(**{**SMOLLM2_135M, "num_hidden_layers": layers or SMOLLM2_135M["num_hidden_layers"],
                                "max_position_embeddings": max(needed, SMOLLM2_135M["max_position_embeddings"])})
        torch.manual_seed(cfg.seed)
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(workdir)
        name = f"smollm2-135m config (random init, {config.num_hidden_layers} layers)"
        return workdir, name, {"model_source": "random-init LlamaForCausalLM, SmolLM2-135M config",
                               "num_hidden_layers": config.num_hidden_layers}
    source = Path(cfg.precision_model)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"[sweep] precision_model: no model folder at {source} (run its DVC stage first)")
    config = AutoConfig.from_pretrained(source)
    changes: dict[str, Any] = {}
    if layers is not None and layers < config.num_hidden_layers:
        changes["num_hidden_layers"] = layers
    if needed > getattr(config, "max_position_embeddings", needed):
        changes["max_position_embeddings"] = needed
    facts = {"model_source": str(source), "source_num_hidden_layers": config.num_hidden_layers,
             "source_max_position_embeddings": getattr(config, "max_position_embeddings", None), "changed": changes}
    name = source.as_posix().removeprefix("models/") + (f" (first {layers} layers)" if "num_hidden_layers" in changes
                                                         else "")
    if not changes:
        return source, name, facts
    AutoModelForCausalLM.from_pretrained(source, dtype="auto", use_safetensors=True, **changes).save_pretrained(workdir)
    return workdir, name, facts


def build_precision(precision: str, cfg: SweepConfig, qcfg: Any, device: torch.device) -> Built:
    """The precision map's model loaded at `precision` by the quantization axis' loader (qcfg: its QuantizeConfig,
    for the 8-bit / 4-bit settings). Raises PrecisionUnsupported when the device cannot run it."""
    from efficientllm.techniques.quantization import PRECISIONS, logical_param_count

    with tempfile.TemporaryDirectory(prefix="efficientllm-sweep-") as tmp:
        source, name, facts = precision_source(cfg, Path(tmp))
        loaded = PRECISIONS[precision](source, device, qcfg)
    model = loaded.model
    facts.update(precision=precision, nominal_bits=loaded.nominal_bits, load_s=loaded.load_s,
                 **{f"quant_{k}": v for k, v in loaded.details.items()})
    return Built(model, name, loaded.dtype, loaded.activation_dtype, logical_param_count(model),
                 getattr(model.config, "max_position_embeddings", None), facts)


# ----------------------------------------------------------------------------- one point


@dataclass
class PointContext:
    """What every point of a cell shares."""

    model: nn.Module
    cfg: SweepConfig
    device: torch.device
    weight_bytes: float
    kv_bytes_per_token: float
    """Analytic KV-cache bytes per token of context per sequence (the model family's count)."""
    vocab_size: int
    max_positions: int | None
    generator: torch.Generator


def _skipped(context: int, batch: int, status: str, error: str, **more: Any) -> dict[str, Any]:
    return {"context": context, "batch_size": batch, "status": status, "error": error, **more}


def measure_point(ctx: PointContext, context: int, batch: int) -> tuple[dict[str, Any], LatencyResult | None]:
    """One point: (its record for `extra.points`, its latency pass; None when it was not measured)."""
    cfg, new = ctx.cfg, ctx.cfg.max_new_tokens
    budget = cfg.memory_budget_mib * 2**20
    if ctx.max_positions is not None and context + new > ctx.max_positions:
        return _skipped(context, batch, "too_long", f"context + max_new_tokens = {context + new} exceeds the model's "
                                                    f"max_position_embeddings={ctx.max_positions}"), None
    fits = max_batch_in_budget(budget, ctx.weight_bytes, ctx.kv_bytes_per_token, context + new)
    if batch > fits:
        why = f"batch {batch} > {fits}, the largest whose weights + KV cache fit {cfg.memory_budget_mib:g} MiB"
        return _skipped(context, batch, "over_budget", why, max_batch_in_budget=fits), None
    prompts = torch.randint(1, ctx.vocab_size, (batch, context), generator=ctx.generator)
    peak = None
    try:
        kv_measured = request_cache_bytes(ctx.model, prompts, new, ctx.device)  # the first warm-up request
        if ctx.device.type == "cuda":
            synchronize(ctx.device)
            torch.cuda.reset_peak_memory_stats(ctx.device)
        latency = latency_pass(ctx.model, prompts, max_new_tokens=new, device=ctx.device,
                               warmup_runs=cfg.warmup_runs - 1, min_runs=cfg.min_runs,
                               min_duration_s=cfg.min_duration_s, max_runs=cfg.max_runs)
        if ctx.device.type == "cuda":
            peak = float(torch.cuda.max_memory_allocated(ctx.device))
    except (torch.OutOfMemoryError, MemoryError) as e:
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        return _skipped(context, batch, "oom", f"{type(e).__name__}: {str(e)[:300]}"), None
    cached = batch * (context + new - 1)  # the last token's keys and values are never computed
    per_token = kv_measured / cached
    columns, extra = latency.columns(), latency.extra()
    return {
        "context": context, "batch_size": batch, "status": "ok", "error": None,
        "ttft_s_p50": columns["ttft_s_p50"], "ttft_s_p90": extra["ttft_s_p90"],
        "tpot_s_p50": columns["tpot_s_p50"], "tpot_s_p90": extra["tpot_s_p90"],
        "latency_s_p50": columns["latency_s_p50"], "requests": columns["steps"], "decode_steps": extra["decode_steps"],
        "prefill_tokens_per_s": extra["prefill_tokens_per_s"], "decode_tokens_per_s": extra["decode_tokens_per_s"],
        "kv_cache_bytes": kv_measured, "kv_cache_bytes_analytic": ctx.kv_bytes_per_token * cached,
        "kv_cache_measured_vs_analytic": per_token / ctx.kv_bytes_per_token if ctx.kv_bytes_per_token else None,
        "kv_cache_bytes_per_token": per_token,
        "weights_plus_kv_bytes": ctx.weight_bytes + kv_measured,
        "max_batch_in_budget": max_batch_in_budget(budget, ctx.weight_bytes, per_token, context + new),
        "peak_mem_bytes": peak, "peak_mem_source": "torch" if peak is not None else None,
    }, latency


# ----------------------------------------------------------------------------- one cell


def headline(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The point the row's own columns describe: the longest context measured at the smallest batch measured."""
    ok = [p for p in points if p["status"] == "ok"]
    if not ok:
        return None
    smallest = min(p["batch_size"] for p in ok)
    return max((p for p in ok if p["batch_size"] == smallest), key=lambda p: p["context"])


def _samples_line(point: dict[str, Any], latency: LatencyResult | None) -> str:
    record = {"context": point["context"], "batch_size": point["batch_size"], "status": point["status"]}
    if latency is not None:
        record.update(latency.samples_record())
    return json.dumps(record) + "\n"


def _headline_columns(top: dict[str, Any] | None, latency: LatencyResult | None, built: Built,
                      weights: float) -> dict[str, Any]:
    """The row's latency and memory columns: the headline point's (none when no point was measured)."""
    if top is None or latency is None:
        return {}
    anatomy = with_rest({"mem_weights_bytes": weights, "mem_grads_bytes": 0, "mem_optimizer_bytes": 0,
                         "mem_activations_bytes": 0, "mem_kv_cache_bytes": top["kv_cache_bytes"],
                         "mem_other_bytes": None}, top["peak_mem_bytes"])
    return {**latency.columns(), **anatomy, "batch_size": top["batch_size"], "seq_len": top["context"],
            "peak_mem_bytes": top["peak_mem_bytes"], "peak_mem_source": top["peak_mem_source"]}


def sweep_cell(*, cell: CellId, map_name: str, line: str, build: Callable[[], Built], cfg: SweepConfig,
               device: torch.device) -> CellOutcome:
    """Build the cell's model (`build`) and measure every point of the map's grid; one row, points in its extra.

    Raises PrecisionUnsupported (from `build`) when the device cannot run the precision: the stage's skipped row.
    """
    from efficientllm.techniques.quantization import weight_bytes

    t_cell = time.perf_counter()
    phases = Phases(f"{cell.stage}@{line}")
    with phases("build"):
        built = build()
    weights = float(weight_bytes(built.model)["total"])
    ctx = PointContext(built.model, cfg, device, weights,
                       kv_cache_bytes_per_token(built.model.config, torch.finfo(built.activation_dtype).bits / 8),
                       int(built.model.config.vocab_size), built.max_positions,
                       torch.Generator().manual_seed(cfg.seed))
    first = (cfg.batch_sizes[0], min(cfg.contexts[0], (built.max_positions or 10**9) - cfg.max_new_tokens))
    with phases("burn-in"):  # one-time costs (allocator growth, thread pools, lazy kernels) before any point
        timed_generate(built.model, torch.randint(1, ctx.vocab_size, first, generator=ctx.generator),
                       cfg.max_new_tokens, device)
    points, samples, latencies = [], [], {}
    for context, batch in grid(cfg):
        with phases(f"context {context} batch {batch}"):
            point, latency = measure_point(ctx, context, batch)
        points.append(point)
        samples.append(_samples_line(point, latency))
        latencies[(context, batch)] = latency
    top = headline(points)
    top_latency = latencies[(top["context"], top["batch_size"])] if top else None
    row = cell.ok_row(
        technique=line, dataset="random token ids", seed=cfg.seed, device=str(device), device_name=device_name(device),
        device_count=1, num_threads=num_threads(), dtype=built.dtype, n_params=built.n_params,
        n_active_params=built.n_params, n_trainable_params=0, kv_cache_bytes_per_token=ctx.kv_bytes_per_token,
        model_size_bytes=weights, model=built.name,
        **_headline_columns(top, top_latency, built, weights),
        duration_s=time.perf_counter() - t_cell,
        extra={
            "map": map_name, "line": line, "reference": MAPS[map_name].reference,
            "grid": cfg.grid, "contexts": list(cfg.contexts), "batch_sizes": list(cfg.batch_sizes),
            "max_new_tokens": cfg.max_new_tokens, "memory_budget_bytes": cfg.memory_budget_mib * 2**20,
            "headline_point": None if top is None else {"context": top["context"], "batch_size": top["batch_size"]},
            "points_ok": sum(p["status"] == "ok" for p in points), "points": points,
            **built.facts,
            "phase_s": phases.seconds,
        },
    )
    return CellOutcome(row=row, files={POINTS_FILE: "".join(samples)})
