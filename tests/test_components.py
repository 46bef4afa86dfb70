"""Tests for the positional encodings (rope / absolute / learned / relative / none) and the MoE feed-forward.

Closed-form and hand-computed values, KV-cache and left-padding consistency, parameter and FLOP accounting, the
load-balancing loss and the expert load statistics. Tiny fp32 models on CPU.

    OMP_WAIT_POLICY=PASSIVE python -m pytest tests/test_components.py -q
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import cached_logits, check_left_padding, greedy, random_tokens, seeded_decoder, tiny_decoder_config
from torch.utils.flop_counter import FlopCounterMode

from efficientllm.models import POSITIONAL, EfficientLMForCausalLM, count_parameters, flops_per_token
from efficientllm.models.moe import Expert, MixtureOfExperts, expert_load_summary, reset_expert_load
from efficientllm.models.positional import relative_position_bucket

VOCAB = 97
tokens = functools.partial(random_tokens, VOCAB)  # tokens(batch, seq, seed=1)
greedy = functools.partial(greedy, new_tokens=6)
C = 32  # hidden size of the tiny models


tiny_config = functools.partial(
    tiny_decoder_config,
    vocab_size=VOCAB,
    hidden_size=C,
    intermediate_size=48,
    relative_num_buckets=8,
    relative_max_distance=32,
    num_experts=4,
    num_experts_per_tok=2,
)


def tiny_model(seed: int = 0, **overrides) -> EfficientLMForCausalLM:
    return seeded_decoder(tiny_config(**overrides), seed)


VARIANTS = [
    *({"positional": p} for p in sorted(POSITIONAL)),
    {"mlp": "moe"},
    {"mlp": "moe", "num_shared_experts": 1, "positional": "relative"},
]
VARIANT_IDS = [",".join(f"{k}={v}" for k, v in d.items()) for d in VARIANTS]


# --- every variant: cache, padding, FLOPs ---------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", VARIANTS, ids=VARIANT_IDS)
def test_cached_decode_matches_full_forward(overrides: dict) -> None:
    # Prefill 7 tokens, then 3 single-token steps through the cache: the same logits as one 10-token forward
    # (for "relative" this checks that cached queries get the bias of their true offset).
    model = tiny_model(**overrides)
    x = tokens(2, 10)
    with torch.no_grad():
        full = model(x, use_cache=False).logits
    torch.testing.assert_close(cached_logits(model, x, [7, 8, 9]), full)


@pytest.mark.parametrize("overrides", VARIANTS, ids=VARIANT_IDS)
def test_generate_with_cache_and_left_padding(overrides: dict) -> None:
    model = tiny_model(initializer_range=0.2, **overrides)  # peaked logits: no near-ties for greedy to flip on
    short, long = tokens(1, 4, seed=2), tokens(1, 7, seed=3)
    assert torch.equal(greedy(model, long, use_cache=True), greedy(model, long, use_cache=False))
    check_left_padding(model, short, long, new_tokens=6)


@pytest.mark.parametrize("overrides", VARIANTS, ids=VARIANT_IDS)
def test_flops_per_token_matches_flop_counter(overrides: dict) -> None:
    # Positional encodings add no matmuls (adds and lookups); MoE counts router + the k routed (+ shared) experts.
    model = tiny_model(attn_kernel="eager", **overrides)
    batch, seq = 2, 16
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(tokens(batch, seq), use_cache=False)
    assert counter.get_total_flops() / (batch * seq) == flops_per_token(model.config, seq)


# --- absolute (sinusoidal) ------------------------------------------------------------------------------------------


def test_sinusoidal_matches_closed_form() -> None:
    pe = POSITIONAL["absolute"](tiny_config(positional="absolute"))
    values = pe.encoding(torch.tensor([[0, 1, 7, 50]]))[0]  # (4, C)
    assert values.shape == (4, C)
    torch.testing.assert_close(values[0], torch.tensor([0.0, 1.0] * (C // 2)))  # sin 0, cos 0
    # position 1, pair 0 (frequency 1): sin(1), cos(1)
    torch.testing.assert_close(values[1, :2], torch.tensor([0.8414709848, 0.5403023059]))
    for row, pos in ((2, 7), (3, 50)):
        for i in (0, 3, C // 2 - 1):  # pair i: frequency 10000^(-2i/C)
            angle = pos / 10000 ** (2 * i / C)
            assert values[row, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert values[row, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    # embed adds the encoding at the token embeddings' init scale (RMS per element = initializer_range)
    hidden = torch.zeros(1, 4, C)
    added = pe.embed(hidden, torch.tensor([[0, 1, 7, 50]]))
    torch.testing.assert_close(added[0], values * math.sqrt(2) * 0.02)
    assert added.pow(2).mean().sqrt().item() == pytest.approx(0.02, rel=1e-4)


def test_absolute_rejects_odd_hidden_size() -> None:
    with pytest.raises(ValueError, match="hidden_size"):
        tiny_config(positional="absolute", hidden_size=33, num_attention_heads=3, num_key_value_heads=3, head_dim=10)


# --- learned --------------------------------------------------------------------------------------------------------


def test_learned_table_size_and_overflow_error() -> None:
    model = tiny_model(positional="learned", max_position_embeddings=16)
    assert model.model.positional.embed_positions.weight.shape == (16, C)
    counts, rope_counts = count_parameters(model), count_parameters(tiny_model(max_position_embeddings=16))
    assert counts["total"] - rope_counts["total"] == 16 * C
    assert counts["embedding"] - rope_counts["embedding"] == 16 * C  # a lookup table: no matmul FLOPs
    with torch.no_grad():
        model(tokens(1, 16))  # positions 0..15 fit
        with pytest.raises(ValueError, match="max_position_embeddings=16"):
            model(tokens(1, 17))
        with pytest.raises(ValueError, match="max_position_embeddings"):  # decoding past the table, through the cache
            greedy(model, tokens(1, 14), new_tokens=4)


# --- relative (T5 bias) ---------------------------------------------------------------------------------------------


def test_relative_position_bucket_hand_computed() -> None:
    # num_buckets=8, max_distance=32: distances 0..3 get their own bucket (exact = 8 // 2 = 4); from 4 on
    # bucket = 4 + floor(log(n / 4) / log(32 / 4) * 4), i.e. bucket 4 + j starts where n >= 4 * 8^(j/4):
    # 4 * 8^(1/4) = 6.73, 4 * 8^(2/4) = 11.31, 4 * 8^(3/4) = 19.03, 4 * 8 = 32 -> clamped to the last bucket, 7.
    distances = torch.tensor([-3, 0, 1, 2, 3, 4, 6, 7, 11, 12, 19, 20, 31, 32, 1000])
    expected = torch.tensor([0, 0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 7, 7, 7, 7])  # -3: a future key, masked; bucket 0
    assert torch.equal(relative_position_bucket(distances, num_buckets=8, max_distance=32), expected)


def test_relative_position_bucket_matches_t5() -> None:
    from transformers.models.t5.modeling_t5 import T5Attention

    distances = torch.arange(0, 300)
    for buckets, max_distance in ((32, 128), (8, 32), (2, 5)):
        theirs = T5Attention._relative_position_bucket(-distances, False, buckets, max_distance)  # memory - query
        assert torch.equal(relative_position_bucket(distances, buckets, max_distance), theirs)


def test_relative_bias_shape_values_and_parameters() -> None:
    model = tiny_model(positional="relative")
    positional = model.model.positional
    table = positional.relative_attention_bias.weight  # (buckets, H)
    assert table.shape == (8, 4)
    assert count_parameters(model)["total"] - count_parameters(tiny_model())["total"] == 8 * 4
    bias = positional.bias(3, 10)  # 3 new queries at positions 7, 8, 9 over 10 keys (a cache of 7)
    assert bias.shape == (1, 4, 3, 10)
    buckets = relative_position_bucket(torch.arange(10), 8, 32)
    for i, q in enumerate((7, 8, 9)):
        for k in range(q + 1):
            torch.testing.assert_close(bias[0, :, i, k], table[buckets[q - k]])
    # the cached queries' rows are the last rows of the full bias
    torch.testing.assert_close(bias, positional.bias(10, 10)[:, :, 7:])


def test_relative_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="relative_num_buckets"):
        tiny_config(positional="relative", relative_num_buckets=1)
    with pytest.raises(ValueError, match="relative_max_distance"):
        tiny_config(positional="relative", relative_num_buckets=8, relative_max_distance=4)


# --- none -----------------------------------------------------------------------------------------------------------


def test_none_has_no_position_parameters_and_still_trains() -> None:
    model = tiny_model(positional="none").train()
    assert list(model.model.positional.parameters()) == []
    assert count_parameters(model) == count_parameters(tiny_model())  # rope has no parameters either
    x = tokens(4, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0  # memorises a fixed batch


# --- MoE ------------------------------------------------------------------------------------------------------------


def test_routing_picks_top_k_with_renormalised_weights() -> None:
    torch.manual_seed(0)
    moe = MixtureOfExperts(tiny_config(mlp="moe", num_experts=6, num_experts_per_tok=3))
    x = torch.randn(20, C)
    probs, weights, experts = moe.route(x)
    assert probs.shape == (20, 6) and weights.shape == experts.shape == (20, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(20))
    torch.testing.assert_close(weights.sum(-1), torch.ones(20))
    chosen = probs.gather(-1, experts)
    unchosen = probs.masked_fill(torch.zeros_like(probs, dtype=torch.bool).scatter(-1, experts, True), -1.0)
    assert (chosen.min(-1).values >= unchosen.max(-1).values).all()  # the k largest probabilities
    torch.testing.assert_close(weights, chosen / chosen.sum(-1, keepdim=True))


@pytest.mark.parametrize("shared", [0, 2])
def test_moe_output_matches_a_per_token_reference(shared: int) -> None:
    torch.manual_seed(0)
    moe = MixtureOfExperts(tiny_config(mlp="moe", num_shared_experts=shared, moe_intermediate_size=24))
    x = torch.randn(2, 5, C)
    out, _ = moe(x)
    _, weights, experts = moe.route(x.reshape(-1, C))
    ref = torch.stack(
        [
            sum(w * moe.experts[int(e)](token) for w, e in zip(weights[t], experts[t], strict=True))
            + (moe.shared_experts(token) if shared else 0)
            for t, token in enumerate(x.reshape(-1, C))
        ]
    )
    torch.testing.assert_close(out.reshape(-1, C), ref)
    if shared:  # S shared experts of width F_e are one SwiGLU of width S * F_e
        assert moe.shared_experts.gate_proj.weight.shape == (shared * 24, C)


def test_aux_loss_equals_hand_computed_formula() -> None:
    config = tiny_config(mlp="moe", hidden_size=2, num_attention_heads=1, num_key_value_heads=1,
                         num_experts=2, num_experts_per_tok=1, router_aux_loss_coef=0.5)
    moe = MixtureOfExperts(config)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(2))  # logits = x
    ln3 = math.log(3)
    x = torch.tensor([[[ln3, 0.0], [ln3, 0.0], [0.0, ln3]]])  # softmax: (3/4, 1/4), (3/4, 1/4), (1/4, 3/4)
    # top-1: experts 0, 0, 1 -> f = (2/3, 1/3); mean probabilities P = (7/12, 5/12)
    # aux = coef * E * sum f_i P_i = 0.5 * 2 * (2/3 * 7/12 + 1/3 * 5/12) = 19/36
    _, aux = moe(x)
    assert aux.item() == pytest.approx(19 / 36, rel=1e-6)
    # uniform router: P_i = 1/E whatever the tie-breaking, so aux = coef * E * sum_i f_i / E = coef
    with torch.no_grad():
        moe.router.weight.zero_()
    assert moe(x)[1].item() == pytest.approx(0.5, rel=1e-6)


def test_aux_loss_reaches_the_training_loss_and_router_gets_gradients() -> None:
    model = tiny_model(mlp="moe", router_aux_loss_coef=0.1).train()
    x = tokens(2, 12)
    out = model(x, labels=x)
    lm = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))
    assert out.aux_loss.item() > 0.1 * 2 * 0.99  # two layers, each >= coef (1 at uniform routing)
    torch.testing.assert_close(out.loss - lm, out.aux_loss)
    out.loss.backward()
    for layer in model.model.layers:
        assert layer.mlp.router.weight.grad.abs().sum() > 0
    # without the aux term, the router still learns through the renormalised top-k weights
    model = tiny_model(mlp="moe", router_aux_loss_coef=0.0).train()
    model(x, labels=x).loss.backward()
    assert model.model.layers[0].mlp.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("shared", [0, 1])
def test_total_and_active_parameter_counts(shared: int) -> None:
    E, k, F_e, L, F = 4, 2, 24, 2, 48
    moe = count_parameters(tiny_model(mlp="moe", moe_intermediate_size=F_e, num_shared_experts=shared))
    dense = count_parameters(tiny_model())
    expert = 3 * C * F_e  # gate, up, down
    # per layer: the dense SwiGLU (3 C F) is replaced by E experts + router (C E) + S shared experts
    assert moe["total"] == dense["total"] + L * (E * expert + C * E + shared * expert - 3 * C * F)
    assert moe["active"] == moe["total"] - L * (E - k) * expert  # router and shared experts always active
    assert moe["trainable"] == moe["total"] and moe["embedding"] == dense["embedding"]
    everything = count_parameters(tiny_model(mlp="moe", num_experts_per_tok=4))
    assert everything["active"] == everything["total"]


def test_expert_load_summary_counts_routed_tokens() -> None:
    assert expert_load_summary(tiny_model()) is None  # dense model
    model = tiny_model(mlp="moe").train()
    B, T, k = 3, 16, 2
    model(tokens(B, T), labels=tokens(B, T))
    summary = expert_load_summary(model)
    assert sorted(summary["layers"]) == ["model.layers.0.mlp", "model.layers.1.mlp"]
    for layer in summary["layers"].values():
        assert len(layer["tokens"]) == 4 and sum(layer["tokens"]) == B * T * k
        counts = torch.tensor(layer["tokens"], dtype=torch.float)
        assert layer["cv"] == pytest.approx((counts.std(correction=0) / counts.mean()).item())
        assert layer["max_over_mean"] == pytest.approx((counts.max() / counts.mean()).item())
        assert layer["max_over_mean"] >= 1.0
    assert summary["max_over_mean"] == max(v["max_over_mean"] for v in summary["layers"].values())
    with torch.no_grad():
        model.eval()(tokens(B, T))  # evaluation and generation are not counted
    assert expert_load_summary(model)["layers"] == summary["layers"]
    reset_expert_load(model)
    cleared = expert_load_summary(model)
    assert all(sum(v["tokens"]) == 0 and v["cv"] is None for v in cleared["layers"].values())
    assert cleared["cv_mean"] is None and cleared["max_over_mean"] is None


def test_moe_save_and_load_round_trip(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    model = tiny_model(mlp="moe", num_shared_experts=1, positional="learned")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.model.layers[0].mlp, MixtureOfExperts)
    assert isinstance(loaded.model.layers[0].mlp.experts[0], Expert)
    x = tokens(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"num_experts": 4, "num_experts_per_tok": 5}, ["num_experts_per_tok", "num_experts", "5", "4"]),
        ({"num_experts_per_tok": 0}, ["num_experts_per_tok"]),
        ({"num_experts": 0, "num_experts_per_tok": 1}, ["num_experts"]),
        ({"moe_intermediate_size": 0}, ["moe_intermediate_size"]),
        ({"num_shared_experts": -1}, ["num_shared_experts"]),
        ({"router_aux_loss_coef": -0.1}, ["router_aux_loss_coef"]),
    ],
)
def test_moe_config_errors_name_the_key(overrides: dict, named: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        tiny_config(mlp="moe", **overrides)
    for word in named:
        assert word in str(err.value)
    tiny_config(**overrides)  # MoE keys are only checked when mlp == "moe"
