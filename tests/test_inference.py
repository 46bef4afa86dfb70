"""Inference measurement: per-token timing, the repeat rule, the latency columns, KV cache and the memory budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import energy_source_here
from transformers import LlamaConfig

from efficientllm import inference as inf
from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM
from efficientllm.models.accounting import kv_cache_bytes_per_token as efficientlm_kv

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_model() -> EfficientLMForCausalLM:
    cfg = EfficientLMConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                            bos_token_id=0, eos_token_id=0, pad_token_id=1)
    torch.manual_seed(0)
    return EfficientLMForCausalLM(cfg).eval()


class FakeClock:
    def __init__(self, times: list[float]) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def test_token_clock_arithmetic_with_a_fake_clock():
    clock = inf.TokenClock(clock=FakeClock([10.0, 10.5, 10.6, 10.8, 11.0]))
    clock.start()  # t0 = 10.0
    scores = torch.zeros(1, 4)
    for _ in range(3):
        assert clock(torch.zeros(1, 1, dtype=torch.long), scores) is scores  # scores pass through unchanged
    timing = clock.timing(end=clock.clock())  # end = 11.0
    assert timing.ttft_s == pytest.approx(0.5)
    assert timing.decode_s == pytest.approx([0.1, 0.2])
    assert timing.e2e_s == pytest.approx(1.0)


@pytest.mark.parametrize("max_new_tokens", [2, 7])
def test_timing_callback_records_exactly_max_new_tokens_steps(tiny_model, max_new_tokens):
    prompts = torch.randint(2, 96, (3, 5), generator=torch.Generator().manual_seed(0))
    # Make EOS the model's first greedy choice: without min_new_tokens = max_new_tokens the request would stop early.
    with torch.no_grad():
        first = int(tiny_model(input_ids=prompts[:1]).logits[0, -1].argmax())
    old_eos = tiny_model.config.eos_token_id
    tiny_model.config.eos_token_id = first
    try:
        clock = inf.TokenClock()
        timing, out = inf.timed_generate(tiny_model, prompts, max_new_tokens, CPU, clock=clock)
    finally:
        tiny_model.config.eos_token_id = old_eos
    assert len(clock.stamps) == max_new_tokens
    assert len(timing.decode_s) == max_new_tokens - 1
    assert out.shape == (3, 5 + max_new_tokens)
    assert 0 < timing.ttft_s <= timing.e2e_s
    assert timing.ttft_s + sum(timing.decode_s) <= timing.e2e_s + 1e-9


def test_repeat_until_min_runs_and_min_duration():
    # runs of 0.3 s: 3 runs reach min_runs but only 0.9 s, so a 4th runs; the cap wins over both
    assert inf._repeat(lambda: 0.3, min_runs=3, min_duration_s=1.0, max_runs=100) == 4
    assert inf._repeat(lambda: 0.3, min_runs=5, min_duration_s=0.1, max_runs=100) == 5
    assert inf._repeat(lambda: 0.3, min_runs=3, min_duration_s=100.0, max_runs=6) == 6


def test_latency_columns_from_hand_built_requests():
    reqs = [inf.RequestTiming(e2e_s=1.0, ttft_s=0.2, decode_s=[0.1, 0.3, 0.4]),
            inf.RequestTiming(e2e_s=2.0, ttft_s=0.4, decode_s=[0.2, 0.2, 0.6])]
    res = inf.LatencyResult(reqs, batch_size=2, prompt_len=8, max_new_tokens=4, warmup_runs=1, window_s=3.0)
    cols = res.columns()
    assert cols["latency_samples_s"] == [1.0, 2.0] and cols["al_s"] == pytest.approx(1.5)
    assert cols["latency_s_p50"] == pytest.approx(1.5) and cols["latency_s_p99"] == pytest.approx(1.99)
    assert cols["ttft_s_p50"] == pytest.approx(0.3)
    assert cols["tpot_s_p50"] == pytest.approx(0.25)  # median of the six decode steps, not (e2e - ttft) / tokens
    assert cols["it_tokens_per_s"] == pytest.approx(2 * 2 * 4 / 3.0)  # requests x batch x new tokens / window
    assert cols["tokens_per_s"] == pytest.approx(2 * 2 * (8 + 4) / 3.0)
    assert cols["steps"] == 2 and cols["warmup_steps"] == 1
    record = res.samples_record()
    assert record["requests"][1]["decode_s"] == [0.2, 0.2, 0.6]


def test_latency_and_tracker_passes_on_a_tiny_model(tiny_model):
    prompts = torch.randint(2, 96, (2, 6), generator=torch.Generator().manual_seed(1))
    res = inf.latency_pass(tiny_model, prompts, max_new_tokens=3, device=CPU, warmup_runs=1, min_runs=2,
                           min_duration_s=0.0, max_runs=10)
    assert len(res.requests) == 2 and res.generated_tokens == 2 * 2 * 3
    tracked = inf.tracker_pass(tiny_model, prompts, max_new_tokens=3, device=CPU, warmup_runs=0, min_runs=2,
                               min_duration_s=0.0, max_runs=10, sample_interval_s=0.01, watts_per_core=4.0)
    assert tracked["requests"] == 2 and tracked["generated_tokens"] == 12
    assert tracked["energy_source"] == energy_source_here("cpu") and tracked["energy_j"] > 0
    assert tracked["tokens_per_j"] > 0
    assert tracked["peak_mem_bytes"] > 0 and tracked["window_s"] > 0


def test_held_out_prompts():
    blocks = np.arange(30, dtype=np.uint16).reshape(3, 10)
    p = inf.held_out_prompts(blocks, batch_size=4, prompt_len=4)
    assert p.dtype == torch.int64 and p.tolist() == [[0, 1, 2, 3], [10, 11, 12, 13], [20, 21, 22, 23], [0, 1, 2, 3]]
    with pytest.raises(ValueError, match="exceeds the corpus block_len=10"):
        inf.held_out_prompts(blocks, batch_size=1, prompt_len=11)


def test_kv_cache_bytes_per_token_efficientlm_and_generic_configs():
    ours = EfficientLMConfig(vocab_size=64, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                             num_key_value_heads=2)
    assert inf.kv_cache_bytes_per_token(ours, 2) == efficientlm_kv(ours, 2) == 2 * 3 * 2 * 16 * 2
    llama = LlamaConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2)
    assert inf.kv_cache_bytes_per_token(llama, 4) == 2 * 2 * 2 * 16 * 4  # K and V x layers x KV heads x head_dim
    from transformers import Mamba2Config, RwkvConfig

    for recurrent in (Mamba2Config(num_hidden_layers=2), RwkvConfig(num_hidden_layers=2)):  # no per-token cache
        assert inf.kv_cache_bytes_per_token(recurrent, 2) == 0


def test_max_batch_in_budget_arithmetic():
    # (1000 - 200) bytes left / (10 bytes per token x 8 tokens) = 10 sequences
    assert inf.max_batch_in_budget(1000, 200, 10, 8) == 10
    assert inf.max_batch_in_budget(1000, 1000, 10, 8) == 0
    assert inf.max_batch_in_budget(100, 500, 10, 8) == 0
    with pytest.raises(ValueError):
        inf.max_batch_in_budget(100, 0, 0, 8)


def test_memory_budget_checks_one_request_at_the_computed_batch(tiny_model):
    prompts = torch.randint(2, 96, (2, 6), generator=torch.Generator().manual_seed(2))
    kv = inf.kv_cache_bytes_per_token(tiny_model.config, 4)
    weights = sum(p.numel() * 4 for p in tiny_model.parameters())
    budget = weights + kv * (6 + 3) * 5 + 1  # room for exactly 5 sequences of weights + KV cache
    mb = inf.memory_budget(tiny_model, prompts, max_new_tokens=3, device=CPU, weight_bytes=weights,
                           kv_bytes_per_token=kv, budget_bytes=budget, sequence_s=0.01, max_check_s=20.0)
    assert mb.max_batch == 5
    extra = mb.extra()
    assert extra["max_batch"] == 5 and extra["max_batch_check_s"] > 0
    assert extra["max_batch_checked_batch"] == 5 and extra["max_batch_check_method"] == "measured at the largest batch"
    if extra["max_batch_peak_bytes"] is not None:  # None where the kernel refuses to reset the RSS high-water mark
        assert extra["max_batch_peak_bytes"] >= weights and extra["max_batch_peak_source"] == "rss"
        assert isinstance(extra["max_batch_fits"], bool)


def test_a_check_over_its_time_cap_runs_a_smaller_batch_and_scales_up(tiny_model, monkeypatch):
    seen = []

    def fake_check(model, prompts, **kwargs):  # 100 bytes of growth per sequence above the weights
        seen.append(prompts.shape[0])
        return {"max_batch_check_s": 0.1, "max_batch_peak_bytes": kwargs["weight_bytes"] + 100.0 * prompts.shape[0],
                "max_batch_peak_source": "rss", "max_batch_fits": True, "max_batch_error": None}

    monkeypatch.setattr(inf, "check_batch", fake_check)
    prompts = torch.ones(2, 6, dtype=torch.long)
    # room for 1000 sequences; 0.5 s per sequence: a request at 1000 would take 500 s, the cap allows 40 sequences
    mb = inf.memory_budget(tiny_model, prompts, max_new_tokens=4, device=CPU, weight_bytes=1000.0,
                           kv_bytes_per_token=1.0, budget_bytes=1000.0 + 10 * 1000 + 1, sequence_s=0.5,
                           max_check_s=20.0)
    extra = mb.extra()
    assert mb.max_batch == 1000 and seen == [40] and extra["max_batch_checked_batch"] == 40
    assert extra["max_batch_peak_bytes"] == 1000.0 + 100.0 * 1000 and extra["max_batch_checked_peak_bytes"] == 5000.0
    assert extra["max_batch_fits"] is False  # 100 bytes per sequence measured, the budget allows 10
    assert extra["max_batch_check_method"].startswith("measured at batch 40, scaled to 1000")


def test_running_out_of_memory_at_the_computed_batch_is_an_answer(tiny_model, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(inf, "_plain_generate", oom)
    out = inf.check_batch(tiny_model, torch.ones(4, 3, dtype=torch.long), max_new_tokens=2, device=CPU,
                          weight_bytes=100.0, budget_bytes=1000.0)
    assert out["max_batch_fits"] is False and out["max_batch_peak_bytes"] is None
    assert out["max_batch_error"].startswith("OutOfMemoryError: CUDA out of memory")


def test_energy_per_phase_splits_prefill_from_decode(tiny_model):
    prompts = torch.randint(2, 96, (2, 6), generator=torch.Generator().manual_seed(3))
    tracked = inf.tracker_pass(tiny_model, prompts, max_new_tokens=4, device=CPU, warmup_runs=1, min_runs=3,
                               min_duration_s=0.2, max_runs=50, sample_interval_s=0.01, watts_per_core=4.0)
    got = inf.energy_phases(tiny_model, prompts, tracked=tracked, max_new_tokens=4, device=CPU, min_runs=3,
                            min_duration_s=0.2, max_runs=50, watts_per_core=4.0, idle_s=0.2)["energy_phases"]
    assert got["source"] == energy_source_here("cpu") and got["prefill_requests"] >= 3
    whole, above = got["with_idle"], got["above_idle"]
    request_j = tracked["energy_j"] / tracked["requests"]
    # a request's energy = its prefill + one decode step per generated token after the first, on 2 sequences
    assert whole["prefill_j_per_request"] + whole["decode_j_per_token"] * 3 * 2 == pytest.approx(request_j)
    assert whole["j_per_output_token"] == pytest.approx(request_j / 8)
    assert whole["j_per_total_token"] == pytest.approx(request_j / 20)
    assert got["idle_w"] is not None and above["j_per_output_token"] <= whole["j_per_output_token"] + 1e-12
    assert set(got["too_short"]) <= {"tracker window", "prefill window"}
