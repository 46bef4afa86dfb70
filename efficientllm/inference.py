"""Inference measurement: a fixed greedy workload, timed per token, then measured with the trackers, separately.

What one quantize cell measures, and why it is done this way:

- **Workload**: `batch_size` prompts of `prompt_len` tokens (the first tokens of held-out blocks, the same for every
  precision), `max_new_tokens` generated greedily with `min_new_tokens` equal to it, so every request generates
  exactly the same number of tokens whatever the model predicts (EOS cannot end a request early).
- **Per-token times**: `TokenClock` is a logits processor; `generate` calls it once per generated token, right
  after the forward that produced that token's logits. It synchronises the device and stamps the time. The first
  stamp minus the request start is the time to first token (TTFT: prefill forward + first logits); each later
  stamp minus the previous one is one decode step. TPOT is the median decode step, never (end-to-end - prefill) /
  tokens, which would hide the distribution and fold the tail of generate into the steps.
- **Passes**: warm-up requests (same shapes, full length) run before each pass. The latency pass runs with no
  tracker threads at all; then a second pass runs inside a `MeasurementWindow` (AMU, PCU, peak memory, energy,
  AEC, tokens per joule). Each pass repeats requests until both `min_runs` and `min_duration_s` are reached.
- **Memory budget**: KV-cache bytes per token (from the config, at the activation dtype) and the measured weight
  bytes give the largest batch whose weights + KV cache fit `memory_budget_bytes`; one request at that batch
  checks it, measuring the peak (allocator peak on CUDA; weight bytes + RSS growth on the CPU).

Raw samples (per request: end-to-end, TTFT and every decode step) are kept (`LatencyResult.samples_record`).

    python -m stages.quantize --stage quantize --precision int4 --model base --model-dir models/pretrain/mha
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import LogitsProcessor

from efficientllm.examples import EXAMPLES_FILE, ExampleLog
from efficientllm.measure import WINDOW_COLUMNS, MeasurementWindow, RssPeak, metrics, summarize, synchronize
from efficientllm.measure.anatomy import above_baseline, with_rest
from efficientllm.measure.timing import Clock, Phases, latency_columns
from efficientllm.records import CellId, CellOutcome

# ----------------------------------------------------------------------------- workload


def held_out_prompts(val_blocks: np.ndarray, batch_size: int, prompt_len: int) -> torch.Tensor:
    """(batch_size, prompt_len) int64 prompts: the first prompt_len tokens of the first batch_size held-out blocks.

    Blocks are reused cyclically when batch_size exceeds their number. Raises ValueError when prompt_len is longer
    than a block or there are no blocks.
    """
    if len(val_blocks) == 0:
        raise ValueError("no held-out blocks to draw prompts from")
    block_len = int(val_blocks.shape[1])
    if prompt_len > block_len:
        raise ValueError(f"prompt_len={prompt_len} exceeds the corpus block_len={block_len}")
    idx = np.arange(batch_size) % len(val_blocks)
    return torch.from_numpy(np.asarray(val_blocks[idx, :prompt_len]).astype(np.int64))


def greedy_kwargs(model: nn.Module, max_new_tokens: int) -> dict[str, Any]:
    """generate() arguments of the fixed workload: greedy, exactly max_new_tokens new tokens, cache on."""
    from transformers import GenerationConfig

    cfg = model.config
    pad = cfg.pad_token_id if getattr(cfg, "pad_token_id", None) is not None else getattr(cfg, "eos_token_id", None)
    gen = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                           use_cache=True, pad_token_id=pad, eos_token_id=getattr(cfg, "eos_token_id", None))
    return {"generation_config": gen}


class TokenClock(LogitsProcessor):
    """A logits processor that stamps a device-synchronised time each time `generate` asks for the next token.

    It returns the scores unchanged. `start()` marks the start of a request; after it, `stamps` holds one time per
    generated token, so `len(stamps) == max_new_tokens` for a request that generated max_new_tokens tokens.
    """

    def __init__(self, sync: Callable[[], None] | None = None, clock: Clock = time.perf_counter) -> None:
        self.sync = sync
        self.clock = clock
        self.t0: float | None = None
        self.stamps: list[float] = []

    def start(self) -> None:
        if self.sync is not None:
            self.sync()
        self.stamps = []
        self.t0 = self.clock()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.sync is not None:
            self.sync()  # the forward that produced these logits has finished
        self.stamps.append(self.clock())
        return scores

    def timing(self, end: float) -> RequestTiming:
        """The request's TTFT, decode steps and end-to-end time, given the time generate returned."""
        if self.t0 is None or not self.stamps:
            raise RuntimeError("TokenClock saw no token: was it passed to generate() as a logits processor?")
        steps = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        return RequestTiming(e2e_s=end - self.t0, ttft_s=self.stamps[0] - self.t0, decode_s=steps)


@dataclass
class RequestTiming:
    e2e_s: float
    """generate() call to return, device synchronised."""
    ttft_s: float
    """Request start to the first token's logits (prefill)."""
    decode_s: list[float]
    """One entry per decode step: max_new_tokens - 1 of them."""


def timed_generate(model: nn.Module, prompts: torch.Tensor, max_new_tokens: int, device: torch.device,
                   clock: TokenClock | None = None) -> tuple[RequestTiming, torch.Tensor]:
    """One greedy request, timed per token; returns its timing and the generated ids (B, prompt_len + new)."""
    from transformers import LogitsProcessorList

    clock = clock or TokenClock(sync=lambda: synchronize(device))
    prompts = prompts.to(device)
    mask = torch.ones_like(prompts)
    with torch.inference_mode():
        clock.start()
        out = model.generate(input_ids=prompts, attention_mask=mask, logits_processor=LogitsProcessorList([clock]),
                             **greedy_kwargs(model, max_new_tokens))
        synchronize(device)
        end = clock.clock()
    timing = clock.timing(end)
    generated = out.shape[1] - prompts.shape[1]
    if generated != max_new_tokens or len(clock.stamps) != max_new_tokens:
        raise RuntimeError(f"generate produced {generated} tokens ({len(clock.stamps)} stamps), "
                           f"expected exactly max_new_tokens={max_new_tokens}")
    return timing, out


# ----------------------------------------------------------------------------- passes


@dataclass
class LatencyResult:
    requests: list[RequestTiming]
    batch_size: int
    prompt_len: int
    max_new_tokens: int
    warmup_runs: int
    window_s: float
    """Sum of the requests' end-to-end times."""

    @property
    def generated_tokens(self) -> int:
        return len(self.requests) * self.batch_size * self.max_new_tokens

    def _ttft_and_steps(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Summaries of the time to first token and of every per-token decode step."""
        return (summarize([r.ttft_s for r in self.requests]),
                summarize([s for r in self.requests for s in r.decode_s]))

    def columns(self) -> dict[str, Any]:
        """Row columns: request latency (AL, percentiles, raw samples), TTFT, TPOT, IT and tokens / s."""
        ttft, steps = self._ttft_and_steps()
        processed = len(self.requests) * self.batch_size * (self.prompt_len + self.max_new_tokens)
        return {
            **latency_columns([r.e2e_s for r in self.requests]),  # AL = mean request latency
            "ttft_s_p50": ttft["p50"],
            "tpot_s_p50": steps["p50"],
            "it_tokens_per_s": metrics.it_tokens_per_s(self.generated_tokens, self.window_s),
            "tokens_per_s": metrics.tokens_per_s(processed, self.window_s),
            "steps": len(self.requests),
            "warmup_steps": self.warmup_runs,
        }

    def extra(self) -> dict[str, Any]:
        ttft, steps = self._ttft_and_steps()
        return {
            "ttft_s_p90": ttft["p90"], "ttft_s_p99": ttft["p99"],
            "tpot_s_p90": steps["p90"], "tpot_s_p99": steps["p99"], "tpot_s_mean": steps["mean"],
            "decode_steps": steps["n"],
            "max_new_tokens": self.max_new_tokens,
            "decode_tokens_per_s": metrics.tokens_per_s(self.batch_size, steps["p50"]),
            "prefill_tokens_per_s": metrics.tokens_per_s(self.batch_size * self.prompt_len, ttft["p50"]),
            "latency_window_s": self.window_s,
        }

    def samples_record(self) -> dict[str, Any]:
        """Every raw sample, for the cell's samples file."""
        return {
            "batch_size": self.batch_size, "prompt_len": self.prompt_len, "max_new_tokens": self.max_new_tokens,
            "warmup_runs": self.warmup_runs,
            "requests": [{"e2e_s": r.e2e_s, "ttft_s": r.ttft_s, "decode_s": r.decode_s} for r in self.requests],
        }


def _repeat(run: Callable[[], float], *, min_runs: int, min_duration_s: float, max_runs: int) -> int:
    """Call `run` (returns its seconds) until min_runs and min_duration_s are both reached, at most max_runs times."""
    n, total = 0, 0.0
    while n < max_runs and (n < min_runs or total < min_duration_s):
        total += run()
        n += 1
    return n


def latency_pass(model: nn.Module, prompts: torch.Tensor, *, max_new_tokens: int, device: torch.device,
                 warmup_runs: int, min_runs: int, min_duration_s: float, max_runs: int) -> LatencyResult:
    """Warm-up, then timed requests with no trackers running, until min_runs and min_duration_s are both met."""
    for _ in range(warmup_runs):
        timed_generate(model, prompts, max_new_tokens, device)
    requests: list[RequestTiming] = []

    def one() -> float:
        timing, _ = timed_generate(model, prompts, max_new_tokens, device)
        requests.append(timing)
        return timing.e2e_s

    _repeat(one, min_runs=min_runs, min_duration_s=min_duration_s, max_runs=max_runs)
    return LatencyResult(requests, int(prompts.shape[0]), int(prompts.shape[1]), max_new_tokens, warmup_runs,
                         window_s=math.fsum(r.e2e_s for r in requests))


def _plain_generate(model: nn.Module, prompts: torch.Tensor, max_new_tokens: int) -> None:
    with torch.inference_mode():
        model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts),
                       **greedy_kwargs(model, max_new_tokens))


def request_cache_bytes(model: nn.Module, prompts: torch.Tensor, max_new_tokens: int, device: torch.device) -> int:
    """Bytes of the KV cache one request of the workload holds at its end, counted from the cache's tensors."""
    from efficientllm.measure.anatomy import cache_bytes

    prompts = prompts.to(device)
    with torch.inference_mode():
        out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), return_dict_in_generate=True,
                             **greedy_kwargs(model, max_new_tokens))
    return cache_bytes(out.past_key_values)


def tracker_pass(model: nn.Module, prompts: torch.Tensor, *, max_new_tokens: int, device: torch.device,
                 warmup_runs: int, min_runs: int, min_duration_s: float, max_runs: int,
                 sample_interval_s: float, watts_per_core: float | None) -> dict[str, Any]:
    """The same requests (no per-token clock) inside a MeasurementWindow: AMU, PCU, peak memory, energy, AEC.

    Returns the window's row columns plus `requests`, `generated_tokens` and `tokens_per_j`.
    """
    prompts = prompts.to(device)
    for _ in range(warmup_runs):
        _plain_generate(model, prompts, max_new_tokens)

    def one() -> float:
        t0 = time.perf_counter()
        _plain_generate(model, prompts, max_new_tokens)
        synchronize(device)
        return time.perf_counter() - t0

    window = MeasurementWindow(device, interval_s=sample_interval_s, watts_per_core=watts_per_core)
    with window:
        n = _repeat(one, min_runs=min_runs, min_duration_s=min_duration_s, max_runs=max_runs)
    generated = n * int(prompts.shape[0]) * max_new_tokens
    return {**window.result, "requests": n, "generated_tokens": generated,
            "tokens_per_j": metrics.tokens_per_j(generated, window.result.get("energy_j"))}


def energy_phases(model: nn.Module, prompts: torch.Tensor, *, tracked: dict[str, Any], max_new_tokens: int,
                  device: torch.device, min_runs: int, min_duration_s: float, max_runs: int,
                  watts_per_core: float | None, idle_s: float = 0.5) -> dict[str, Any]:
    """Energy per phase: prefill and decode apart, per output and per total token, with and without idle power.

    After the tracker pass (full requests, `tracked`), the same prompts run prefill-only requests (one new token)
    in a window of their own; decode energy = a full request's minus a prefill's, spread over the decode steps.
    The device's idle power is measured over `idle_s` before that window (nothing running) and subtracted from
    both, reported beside the totals. `too_short`: a window shorter than the energy counter can resolve.
    """
    from efficientllm.measure.energy import EnergyMeter

    meter = EnergyMeter(device, watts_per_core=watts_per_core)
    if meter.counter is None or tracked.get("energy_j") is None:
        return {"energy_phases": None}
    synchronize(device)
    with meter:
        time.sleep(idle_s)
    idle_w = meter.aec_w
    prompts = prompts.to(device)

    def one() -> float:
        t0 = time.perf_counter()
        _plain_generate(model, prompts, 1)
        synchronize(device)
        return time.perf_counter() - t0

    with meter:
        n = _repeat(one, min_runs=min_runs, min_duration_s=min_duration_s, max_runs=max_runs)
    batch, prompt_len = int(prompts.shape[0]), int(prompts.shape[1])
    request_j, request_s = tracked["energy_j"] / tracked["requests"], tracked["window_s"] / tracked["requests"]
    prefill_j, prefill_s = meter.energy_j / n, meter.window_s / n
    decode_steps = max(max_new_tokens - 1, 1) * batch

    def per_phase(idle: float) -> dict[str, float]:
        req, pre = request_j - idle * request_s, prefill_j - idle * prefill_s
        return {"prefill_j_per_request": pre, "decode_j_per_token": (req - pre) / decode_steps,
                "j_per_output_token": req / (max_new_tokens * batch),
                "j_per_total_token": req / ((prompt_len + max_new_tokens) * batch)}

    floor = getattr(meter.counter, "min_window_s", 0.0)
    return {"energy_phases": {
        "source": meter.source, "idle_w": idle_w, "with_idle": per_phase(0.0),
        "above_idle": per_phase(idle_w or 0.0),
        "too_short": [name for name, s in (("tracker window", tracked["window_s"]), ("prefill window",
                                                                                    meter.window_s)) if s < floor],
        "counter_min_window_s": floor, "prefill_requests": n,
        "what": "prefill = one-token requests on the same prompts; decode = full request minus prefill, per step",
    }}


# ----------------------------------------------------------------------------- KV cache and the memory budget


def kv_cache_bytes_per_token(config: Any, bytes_per_element: float) -> float:
    """KV-cache bytes per token of context per sequence, all layers, at `bytes_per_element`.

    The model families the pipeline trains (efficientllm.models.baselines) answer for themselves: our decoder asks
    its attention class (MLA caches its latent, not K and V), Mamba / RWKV cache nothing per token (their recurrent
    state is per sequence). Any other transformers decoder config (hub models) uses 2 (K and V) x layers x KV heads
    x head_dim.
    """
    from efficientllm.models.baselines import FAMILIES
    from efficientllm.models.baselines import kv_cache_bytes_per_token as family_kv

    if any(f.config_class.model_type == config.model_type for f in FAMILIES.values()):
        return float(family_kv(config, bytes_per_element))
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return float(2 * config.num_hidden_layers * kv_heads * head_dim * bytes_per_element)


def max_batch_in_budget(budget_bytes: float, weight_bytes: float, kv_bytes_per_token: float,
                        tokens_per_sequence: int) -> int:
    """Largest batch whose weights + KV cache (tokens_per_sequence tokens each) fit budget_bytes; 0 if none.

    Activations and the allocator's slack are not in this figure; `check_batch` measures them.
    """
    per_sequence = kv_bytes_per_token * tokens_per_sequence
    if per_sequence <= 0:
        raise ValueError(f"KV-cache bytes per sequence must be positive, got {per_sequence}")
    return max(0, math.floor((budget_bytes - weight_bytes) / per_sequence))


def check_batch(model: nn.Module, prompts: torch.Tensor, *, max_new_tokens: int, device: torch.device,
                weight_bytes: float, budget_bytes: float) -> dict[str, Any]:
    """One request at the computed batch: its measured peak (weights included) and whether it fits the budget.

    CUDA: torch's allocator peak over the request (weights, KV cache, activations). CPU: the weight bytes plus the
    growth of the process's resident set over the request (the RSS high-water mark), so the runtime's own memory
    is left out; labelled `rss` (None where the kernel does not let us reset the high-water mark). Running out of
    memory is an answer, not a failure of the cell: fits is False and the error is kept.
    """
    prompts = prompts.to(device)
    synchronize(device)
    t0 = time.perf_counter()
    peak, source, error = None, None, None
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            _plain_generate(model, prompts, max_new_tokens)
            synchronize(device)
            peak, source = float(torch.cuda.max_memory_allocated(device)), "torch"
        else:
            from efficientllm.measure.memory import RssSensor

            before = RssSensor().read()
            tracker = RssPeak()
            with tracker:
                _plain_generate(model, prompts, max_new_tokens)
            if tracker.peak_bytes is not None and before is not None:
                peak, source = weight_bytes + max(0.0, tracker.peak_bytes - before[0]), "rss"
    except (torch.OutOfMemoryError, MemoryError) as e:
        error = f"{type(e).__name__}: {str(e)[:300]}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
    fits = False if error is not None else (None if peak is None else bool(peak <= budget_bytes))
    return {
        "max_batch_check_s": time.perf_counter() - t0,
        "max_batch_peak_bytes": peak,
        "max_batch_peak_source": source,
        "max_batch_fits": fits,
        "max_batch_error": error,
    }


def prompts_for_batch(prompts: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The workload's prompts repeated (cyclically) to batch_size rows."""
    idx = torch.arange(batch_size) % prompts.shape[0]
    return prompts[idx]


@dataclass
class MemoryBudget:
    budget_bytes: float
    weight_bytes: float
    kv_bytes_per_token: float
    tokens_per_sequence: int
    check: dict[str, Any] = field(default_factory=dict)

    @property
    def max_batch(self) -> int:
        return max_batch_in_budget(self.budget_bytes, self.weight_bytes, self.kv_bytes_per_token,
                                   self.tokens_per_sequence)

    def extra(self) -> dict[str, Any]:
        return {"memory_budget_bytes": self.budget_bytes, "max_batch": self.max_batch, **self.check}


def memory_budget(model: nn.Module, prompts: torch.Tensor, *, max_new_tokens: int, device: torch.device,
                  weight_bytes: float, kv_bytes_per_token: float, budget_bytes: float, sequence_s: float | None,
                  max_check_s: float) -> MemoryBudget:
    """The largest batch in the budget, computed, then checked by one request (skipped when it is 0).

    The check's cost grows with the batch: one request at thousands of sequences is minutes of prefill on a small
    CPU. `sequence_s` (seconds per sequence of one request, from the latency pass) estimates it; when the request
    at the largest batch would pass `max_check_s`, the check runs at the largest batch that fits the cap and the
    memory it measures above the weights scales linearly to the largest batch (memory per sequence is constant:
    the same prompt and generation length). `extra.max_batch_check_method` says which was done.
    """
    mb = MemoryBudget(budget_bytes, weight_bytes, kv_bytes_per_token, int(prompts.shape[1]) + max_new_tokens)
    if mb.max_batch <= 0:
        return mb
    checked = mb.max_batch
    if sequence_s and sequence_s * mb.max_batch > max_check_s:
        checked = max(1, min(mb.max_batch, math.floor(max_check_s / sequence_s)))
    check = check_batch(model, prompts_for_batch(prompts, checked), max_new_tokens=max_new_tokens, device=device,
                        weight_bytes=weight_bytes, budget_bytes=budget_bytes)
    if checked < mb.max_batch:
        measured = check["max_batch_peak_bytes"]
        peak = None if measured is None else weight_bytes + (measured - weight_bytes) * mb.max_batch / checked
        check.update(max_batch_peak_bytes=peak,
                     max_batch_fits=check["max_batch_fits"] if peak is None else bool(peak <= budget_bytes),
                     max_batch_check_method=f"measured at batch {checked}, scaled to {mb.max_batch} (a request at "
                                            f"{mb.max_batch} would take ~{sequence_s * mb.max_batch:.0f} s > "
                                            f"budget_check_max_s={max_check_s:g})",
                     max_batch_checked_batch=checked, max_batch_checked_peak_bytes=measured)
    else:
        check.update(max_batch_check_method="measured at the largest batch", max_batch_checked_batch=checked)
    mb.check = check
    return mb


# ----------------------------------------------------------------------------- one quantize cell


def held_out_blocks(tokenizer: Any, val_docs: list[str], block_len: int) -> np.ndarray:
    """The held-out documents encoded with the model's own tokenizer and packed into blocks of block_len tokens.

    For a model trained on the prepared corpus (same tokenizer, block_len = the corpus's) these are exactly the
    blocks of val.npy; a hub model gets the same text in its own tokens.
    """
    from efficientllm.data import encode_documents, pack_blocks

    blocks = pack_blocks(encode_documents(tokenizer, val_docs), block_len, vocab_size=max(len(tokenizer), 1))
    if len(blocks) == 0:
        raise ValueError(f"the held-out documents give no block of {block_len} tokens")
    return blocks


def check_workload(cfg: Any, max_position_embeddings: int | None) -> None:
    """Raise ConfigError when prompt + generated tokens do not fit the model's positions."""
    from efficientllm.config import ConfigError

    total = cfg.prompt_len + cfg.max_new_tokens
    if max_position_embeddings is not None and total > max_position_embeddings:
        raise ConfigError(f"[quantize] prompt_len + max_new_tokens = {total} exceeds the model's "
                          f"max_position_embeddings={max_position_embeddings}")


def quality(model: nn.Module, tokenizer: Any, blocks: np.ndarray, *, cfg: Any, eval_cfg: Any, tasks: list[str],
            device: torch.device, phases: Phases) -> tuple[dict[str, Any], Any, ExampleLog]:
    """(held-out perplexity, the lm-eval task scores, every example behind both) of the loaded model."""
    from efficientllm.evaluation import perplexity, run_tasks

    examples = ExampleLog()
    with phases("perplexity"):
        ppl = perplexity(model, blocks, n_blocks=cfg.ppl_blocks, batch_size=cfg.ppl_batch_size, device=device,
                         examples=examples)
    with phases("tasks"):
        scores = run_tasks(model, tokenizer, tasks=tasks, metrics=eval_cfg.metrics, tasks_dir=eval_cfg.tasks_dir,
                           device=device, batch_size=eval_cfg.batch_size,
                           limit=eval_cfg.limit if cfg.task_limit is None else cfg.task_limit,
                           num_fewshot=eval_cfg.num_fewshot, data_files=eval_cfg.data_files,
                           apply_chat_template=eval_cfg.apply_chat_template, seed=cfg.seed)
    examples.extend(scores.examples)
    return ppl, scores, examples


def measured_passes(model: nn.Module, prompts: torch.Tensor, cfg: Any, measure: Any, device: torch.device,
                    phases: Phases) -> tuple[LatencyResult, dict[str, Any]]:
    """The latency pass (per-token clock, no trackers) then the tracker pass (the same requests in a window)."""
    workload = {"max_new_tokens": cfg.max_new_tokens, "device": device, "warmup_runs": cfg.warmup_runs,
                "min_runs": cfg.min_runs, "min_duration_s": cfg.min_duration_s, "max_runs": cfg.max_runs}
    with phases("latency pass"):
        latency = latency_pass(model, prompts, **workload)
    with phases("tracker pass"):
        tracked = tracker_pass(model, prompts, **workload, sample_interval_s=measure.sample_interval_s,
                               watts_per_core=measure.cpu_watts_per_core)
    with phases("energy per phase"):
        tracked.update(energy_phases(model, prompts, tracked=tracked, max_new_tokens=cfg.max_new_tokens,
                                     device=device, min_runs=cfg.min_runs, min_duration_s=cfg.min_duration_s,
                                     max_runs=cfg.max_runs, watts_per_core=measure.cpu_watts_per_core))
    return latency, tracked


def memory_columns(tracked: dict[str, Any], rss_baseline: float | None, weights: float, kv_measured: int,
                   kv_analytic: float) -> tuple[dict[str, Any], dict[str, Any], float]:
    """(the tracker pass's window columns, the memory anatomy, the analytic KV-cache bytes) of a quantize cell.

    The CPU peak is taken above the process before the model was loaded (what the cell added, not the runtime);
    inference holds no gradients, optimizer state or saved activations. `kv_analytic`: KV bytes per token x batch
    x cached positions (prompt + new - 1: the last token's keys and values are never computed).
    """
    window = above_baseline({k: tracked[k] for k in WINDOW_COLUMNS}, rss_baseline)
    anatomy = with_rest({"mem_weights_bytes": weights, "mem_grads_bytes": 0, "mem_optimizer_bytes": 0,
                         "mem_activations_bytes": 0, "mem_kv_cache_bytes": kv_measured, "mem_other_bytes": None},
                        window["peak_mem_bytes"])
    return window, anatomy, kv_analytic


def workload_inputs(model_ref: str | Path, revision: str | None, data_dir: Path,
                    cfg: Any) -> tuple[dict[str, Any], Any, np.ndarray, torch.Tensor]:
    """(prepare's stats, the model's tokenizer, the held-out blocks, the prompts) of a quantize cell.

    Held-out blocks are as long as the corpus's (a pipeline model's context), or as the prompt when that is longer
    (a hub model's workload): perplexity runs on them, the prompts are their first prompt_len tokens.
    """
    from transformers import AutoTokenizer

    from efficientllm.data import VAL_DOCS_FILE, load_stats
    from efficientllm.data.cloze import read_documents

    stats = load_stats(data_dir)  # prepare's stats.json, read once
    block_len = max(int(stats["block_len"]), cfg.prompt_len)
    tokenizer = AutoTokenizer.from_pretrained(str(model_ref), revision=revision)
    blocks = held_out_blocks(tokenizer, read_documents(data_dir / VAL_DOCS_FILE), block_len)
    return stats, tokenizer, blocks, held_out_prompts(blocks, cfg.batch_size, cfg.prompt_len)


def stored_bytes(model: nn.Module) -> dict[str, int]:
    """`weight_bytes` of a model as loaded (the stored layout, before a kernel repacks it), with the bytes expected
    of that layout (`expected`)."""
    from efficientllm.techniques.quantization import expected_weight_bytes, weight_bytes

    return {**weight_bytes(model), "expected": expected_weight_bytes(model)["expected_weight_bytes"]}


def weight_facts(loaded: Any, n_params: int, held: dict[str, int], after_load: dict[str, int],
                 footprint: int | None) -> dict[str, Any]:
    """The `extra` fields that say how the weights are held: nominal bits and bytes, the bytes expected from the split
    of quantized and unquantized parameters, the measured bytes (quantized and not, during the passes and right
    after loading), the activation dtype and the quantizer's settings."""
    from efficientllm.provenance import package_version
    from efficientllm.techniques.quantization import expected_weight_bytes, nominal_weight_bytes

    expected = expected_weight_bytes(loaded.model)
    return {
        "nominal_bits": loaded.nominal_bits,
        "nominal_weight_bytes": nominal_weight_bytes(n_params, loaded.nominal_bits),
        **expected,
        "weight_bytes_vs_expected": held["total"] / expected["expected_weight_bytes"],
        "weight_bytes_quantized": held["quantized"],
        "weight_bytes_other": held["other"],
        "weight_bytes_after_load": after_load["total"],
        "expected_weight_bytes_after_load": after_load.get("expected"),  # the stored layout (before any repack)
        "get_memory_footprint_bytes": footprint,
        "activation_dtype": str(loaded.activation_dtype).removeprefix("torch."),
        **{f"quant_{k}": v for k, v in loaded.details.items()},
        "bitsandbytes_version": package_version("bitsandbytes"),
    }


def quantize_cell(*, cell: CellId, precision: str, model_ref: str | Path, revision: str | None, cfg: Any,
                  eval_cfg: Any, tasks: list[str], measure: Any, data_dir: Path) -> CellOutcome:
    """Load `model_ref` at `precision` and measure it: latency pass, tracker pass, memory budget, perplexity, tasks.

    cfg is the QuantizeConfig, eval_cfg the EvalConfig, measure the MeasureConfig; `cell` names the row. Raises
    PrecisionUnsupported when the device cannot run the precision (the stage writes a `skipped` row), anything else
    when the cell fails. The outcome's files: `samples.json`, every request's raw samples.
    """
    from efficientllm.measure import device_name, num_threads, resolve_device
    from efficientllm.measure.memory import RssSensor
    from efficientllm.model_import import import_facts
    from efficientllm.models.accounting import count_parameters
    from efficientllm.techniques.quantization import PRECISIONS, REFERENCE_PRECISION, logical_param_count, weight_bytes

    t_cell = time.perf_counter()
    phases = Phases(f"{cell.stage}@{cell.cell}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    device = resolve_device(cfg.device)
    stats, tokenizer, blocks, prompts = workload_inputs(model_ref, revision, Path(data_dir), cfg)
    torch.manual_seed(cfg.seed)
    with phases("load"):
        rss_before = RssSensor().read()
        loaded = PRECISIONS[precision](model_ref, device, cfg, revision=revision)
        rss_after = RssSensor().read()
    model = loaded.model
    check_workload(cfg, getattr(model.config, "max_position_embeddings", None))
    bytes_after_load = stored_bytes(model)
    footprint = model.get_memory_footprint() if hasattr(model, "get_memory_footprint") else None
    n_params = logical_param_count(model)
    counts = count_parameters(model)
    n_active = n_params - (counts["total"] - counts["active"])

    latency, tracked = measured_passes(model, prompts, cfg, measure, device, phases)
    held = weight_bytes(model)  # after the passes: in the layout the kernels use (bnb repacks 4-bit on CPU)
    kv_bytes = kv_cache_bytes_per_token(model.config, torch.finfo(loaded.activation_dtype).bits / 8)
    with phases("memory budget"):
        budget = memory_budget(model, prompts, max_new_tokens=cfg.max_new_tokens, device=device,
                               weight_bytes=held["total"], kv_bytes_per_token=kv_bytes,
                               budget_bytes=cfg.memory_budget_mib * 2**20, max_check_s=cfg.budget_check_max_s,
                               sequence_s=latency.columns()["al_s"] / cfg.batch_size)
    with phases("kv cache"):
        kv_measured = request_cache_bytes(model, prompts, cfg.max_new_tokens, device)
    ppl, scores, examples = quality(model, tokenizer, blocks, cfg=cfg, eval_cfg=eval_cfg, tasks=tasks, device=device,
                                    phases=phases)

    window, anatomy, cache = memory_columns(tracked, rss_before[0] if rss_before else None, held["total"],
                                            kv_measured, kv_bytes * cfg.batch_size
                                            * (cfg.prompt_len + cfg.max_new_tokens - 1))
    reference = precision == REFERENCE_PRECISION
    row = cell.ok_row(
        technique=precision, dataset=stats.get("source"), batch_size=cfg.batch_size, seq_len=cfg.prompt_len,
        seed=cfg.seed, device=str(device), device_name=device_name(device), device_count=1, num_threads=num_threads(),
        dtype=loaded.dtype, n_params=n_params, n_active_params=n_active, n_trainable_params=0,
        **latency.columns(),
        **window,
        **anatomy,
        tokens_per_j=tracked["tokens_per_j"],
        kv_cache_bytes_per_token=kv_bytes,
        model_size_bytes=held["total"],
        # MCR needs the bf16 cell's row: the `quantize` SQL view computes it for every cell; the reference is 1.
        mcr_nominal=1.0 if reference else None,
        mcr_measured=1.0 if reference else None,
        quality_metric=scores.quality_metric(eval_cfg.metrics),
        quality_value=scores.quality_value,
        eval_loss=ppl["eval_loss"],
        duration_s=time.perf_counter() - t_cell,
        extra={
            "precision": precision,
            "reference_precision": REFERENCE_PRECISION,
            "quality_gate_ratio": cfg.quality_gate_ratio,
            **weight_facts(loaded, n_params, held, bytes_after_load, footprint),
            "load_s": loaded.load_s,
            "rss_after_load_bytes": rss_after[0] if rss_after else None,
            "rss_load_growth_bytes": rss_after[0] - rss_before[0] if rss_after and rss_before else None,
            "model_source": str(model_ref),
            "model_revision": revision,
            **import_facts(model_ref),  # an imported model: the file it came from and the quantization it carries
            **latency.extra(),
            "tracker_pass_requests": tracked["requests"],
            "tracker_pass_generated_tokens": tracked["generated_tokens"],
            **budget.extra(),
            "energy_phases": tracked["energy_phases"],
            "kv_cache_bytes_analytic": cache,  # kv_cache_bytes_per_token x batch x cached positions
            "kv_cache_measured_vs_analytic": kv_measured / cache if cache else None,
            **ppl,
            "task_scores": scores.primary,
            # examples.jsonl: the per-document scores behind quality_value (or the per-block losses without tasks)
            "quality_sets": [f"{t}.{m}" for t, m in scores.settings["metrics"].items()],
            "task_metrics": scores.all_metrics,
            "task_docs": scores.n_docs,
            "eval": scores.settings,
            "lm_eval_version": scores.settings.get("lm_eval_version"),
            "phase_s": {**phases.seconds, "load_s": loaded.load_s, "tasks_s": scores.eval_s},
        },
    )
    return CellOutcome(row=row, files={"samples.json": json.dumps(latency.samples_record()) + "\n",
                                       EXAMPLES_FILE: examples.text()})
