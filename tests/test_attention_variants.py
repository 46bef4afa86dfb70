"""Tests for the MLA and NSA attention variants (efficientllm/models/mla.py, nsa.py).

MLA: parity with transformers' DeepseekV3Attention (copied weights, both rope layouts, with and without a low-rank
query, prefill and cached decode), its latent cache size, the absorbed decode path. NSA: each branch against a naive
reference, causality, cached decoding, config errors. Both: FLOP and cache accounting, training, generate.

    OMP_WAIT_POLICY=PASSIVE python -m pytest tests/test_attention_variants.py -q
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import cached_logits, check_left_padding, greedy, random_tokens, seeded_decoder, tiny_decoder_config
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding

from efficientllm.models import (
    POSITIONAL,
    AttentionInputs,
    EfficientLMForCausalLM,
    MultiHeadLatentAttention,
    NativeSparseAttention,
    PositionalEncoding,
    flops_per_token,
    kv_cache_bytes_per_token,
)

VOCAB = 211
tokens = functools.partial(random_tokens, VOCAB)  # tokens(batch, seq, seed=1)
MLA = dict(attention="mla", kv_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=12, v_head_dim=10)
# small blocks so that a few dozen tokens exercise every NSA branch: 8-token compression blocks every 4 tokens,
# 8-token selection blocks (3 of them per query), a 16-token window
NSA = dict(
    attention="nsa",
    nsa_compress_block_size=8,
    nsa_compress_stride=4,
    nsa_selection_block_size=8,
    nsa_num_selected_blocks=3,
    nsa_window_size=16,
)
VARIANTS = {"mla": MLA, "mla-qlora": {**MLA, "q_lora_rank": 12}, "nsa": NSA}


tiny_config = functools.partial(tiny_decoder_config, vocab_size=VOCAB)


def tiny_model(variant: str, seed: int = 0, **overrides) -> EfficientLMForCausalLM:
    return seeded_decoder(tiny_config(**{**VARIANTS[variant], **overrides}), seed)


def causal_mask(q_len: int, k_len: int) -> torch.Tensor:
    """Additive (1, 1, q_len, k_len) mask, queries being the last q_len positions."""
    allowed = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)
    return torch.zeros(q_len, k_len).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]


# --- MLA vs transformers' DeepSeek-V3 attention -----------------------------------------------------------------------


def deepseek_twin(ours: MultiHeadLatentAttention, interleave: bool) -> DeepseekV3Attention:
    """DeepseekV3Attention with our dims and weights. With rope_interleave=True DeepSeek rotates pairs (2i, 2i+1) and
    emits them as [evens ; odds]; our half-split RoPE pairs (i, i + dr/2). Putting DeepSeek's even rope rows first
    and odd rows second in our weights makes the two rotations (and the cached rope keys) identical."""
    c = ours.config
    ds_config = DeepseekV3Config(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_attention_heads,
        q_lora_rank=c.q_lora_rank,
        kv_lora_rank=c.kv_lora_rank,
        qk_rope_head_dim=c.qk_rope_head_dim,
        qk_nope_head_dim=c.qk_nope_head_dim,
        v_head_dim=c.v_head_dim,
        rope_interleave=interleave,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},  # no yarn: scale = (nope+dr)^-0.5
        rms_norm_eps=c.rms_norm_eps,
        max_position_embeddings=c.max_position_embeddings,
        attn_implementation="eager",
    )
    theirs = DeepseekV3Attention(ds_config, layer_idx=0).eval()
    state = {k: v.clone() for k, v in ours.state_dict().items()}
    if interleave:
        dr, nope, H = c.qk_rope_head_dim, c.qk_nope_head_dim, c.num_attention_heads
        ours_to_theirs = torch.cat([torch.arange(0, dr, 2), torch.arange(1, dr, 2)])  # our row i is their row [i]
        q_key = "q_proj.weight" if c.q_lora_rank is None else "q_b_proj.weight"
        q_rope = state[q_key].view(H, nope + dr, -1)[:, nope:]
        q_rope[:, ours_to_theirs] = q_rope.clone()
        k_rope = state["kv_a_proj_with_mqa.weight"][c.kv_lora_rank :]
        k_rope[ours_to_theirs] = k_rope.clone()
    theirs.load_state_dict(state, strict=True)
    return theirs, DeepseekV3RotaryEmbedding(ds_config)


@pytest.mark.parametrize("interleave", [False, True], ids=["half-split", "interleaved"])
@pytest.mark.parametrize("q_lora_rank", [None, 12], ids=["direct-q", "lora-q"])
def test_mla_matches_deepseek_v3_attention(q_lora_rank: int | None, interleave: bool) -> None:
    config = tiny_config(**MLA, q_lora_rank=q_lora_rank, num_key_value_heads=4)
    torch.manual_seed(0)
    ours = MultiHeadLatentAttention(config, layer_idx=0).eval()
    with torch.no_grad():  # random norms too, so a missing or misplaced norm cannot hide
        for name, p in ours.named_parameters():
            p.normal_(1.0 if "layernorm" in name else 0.0, 0.2)
    theirs, rotary = deepseek_twin(ours, interleave)
    rope = POSITIONAL["rope"](config)
    x = torch.randn(2, 12, 64)
    prompt, step = x[:, :11], x[:, 11:]
    ours_cache, their_cache = DynamicCache(), DynamicCache()
    with torch.no_grad():
        pos = torch.arange(11)[None]
        got = ours(prompt, AttentionInputs(rope, pos, mask=None), past_key_values=ours_cache)
        want = theirs(prompt, rotary(prompt, pos), causal_mask(11, 11), past_key_values=their_cache)[0]
        torch.testing.assert_close(got, want)
        # the caches hold the same latent and rope key, and the decode step (our absorbed path) matches
        torch.testing.assert_close(ours_cache.layers[0].keys, their_cache.layers[0].keys)
        torch.testing.assert_close(ours_cache.layers[0].values, their_cache.layers[0].values)
        assert MultiHeadLatentAttention._absorbed_is_cheaper(config, 1, 12)
        pos = torch.tensor([[11]])
        # (mask None means causal with Tq == Tk in the kernel contract; the model passes an explicit one here)
        got = ours(step, AttentionInputs(rope, pos, mask=causal_mask(1, 12)), past_key_values=ours_cache)
        want = theirs(step, rotary(step, pos), None, past_key_values=their_cache)[0]
        torch.testing.assert_close(got, want)


def test_mla_absorbed_path_equals_expanded_path() -> None:
    config = tiny_config(**MLA)
    torch.manual_seed(0)
    mla = MultiHeadLatentAttention(config, layer_idx=0)
    B, H, T = 2, 4, 9
    q_nope, q_rope = torch.randn(B, H, T, 12), torch.randn(B, H, T, 8)
    latent, k_rope = torch.randn(B, 1, T, 24), torch.randn(B, 1, T, 8)
    expanded = mla._attend_latents(q_nope, q_rope, latent, k_rope, None, absorbed=False)
    absorbed = mla._attend_latents(q_nope, q_rope, latent, k_rope, None, absorbed=True)
    assert expanded.shape == absorbed.shape == (B, H, T, 10)
    torch.testing.assert_close(absorbed, expanded)
    assert not MultiHeadLatentAttention._absorbed_is_cheaper(config, T, T)  # training / prefill expands


def test_mla_without_rotation_equals_rope_at_position_zero(monkeypatch) -> None:
    # positional encodings whose rotate is the identity ("none", absolute, learned) leave MLA unrotated: the same as
    # RoPE with every position 0.
    monkeypatch.setitem(POSITIONAL, "identity_probe", PositionalEncoding)
    torch.manual_seed(0)
    with_rope = MultiHeadLatentAttention(tiny_config(**MLA), layer_idx=0)
    without = MultiHeadLatentAttention(tiny_config(**MLA, positional="identity_probe"), layer_idx=0)
    without.load_state_dict(with_rope.state_dict())
    assert without.rope is None and with_rope.rope is not None
    x = torch.randn(2, 7, 64)
    zeros = torch.zeros(1, 7, dtype=torch.long)
    rope = POSITIONAL["rope"](with_rope.config)
    none = PositionalEncoding(without.config)
    torch.testing.assert_close(
        without(x, AttentionInputs(none, torch.arange(7)[None], mask=None)),
        with_rope(x, AttentionInputs(rope, zeros, mask=None)),
    )


def test_mla_left_padded_batch_generate_matches_single() -> None:
    model = tiny_model("mla", initializer_range=0.2)
    check_left_padding(model, tokens(1, 4, seed=2), tokens(1, 7, seed=3))


# --- NSA against naive references -------------------------------------------------------------------------------------


def nsa_inputs(nsa: NativeSparseAttention, x: torch.Tensor):
    """q (B, H, T, D), k and v repeated to H heads, after RoPE, exactly as the module computes them."""
    B, T, _ = x.shape
    D, G = nsa.head_dim, nsa.num_heads // nsa.num_kv_heads
    q = nsa.q_proj(x).view(B, T, -1, D).transpose(1, 2)
    k = nsa.k_proj(x).view(B, T, -1, D).transpose(1, 2)
    v = nsa.v_proj(x).view(B, T, -1, D).transpose(1, 2)
    q, k = POSITIONAL["rope"](nsa.config).rotate(q, k, torch.arange(T)[None])
    return q, k, v, k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)


def dense_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    T = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_nsa_selection_of_every_block_and_full_window_equal_full_causal_attention(kernel: str) -> None:
    # 64-token context of 8-token selection blocks: selecting 8 blocks covers everything; a 64-token window too.
    config = tiny_config(**{**NSA, "nsa_num_selected_blocks": 8, "nsa_window_size": 64}, attn_kernel=kernel)
    torch.manual_seed(0)
    nsa = NativeSparseAttention(config, layer_idx=0)
    x = torch.randn(2, 45, 64)  # not a multiple of any block size
    with torch.no_grad():
        inputs = AttentionInputs(POSITIONAL["rope"](config), torch.arange(45)[None], mask=None)
        _, selected, window = nsa.branch_outputs(x, inputs)
        q, _, _, k, v = nsa_inputs(nsa, x)
        reference = dense_causal_attention(q, k, v)
    torch.testing.assert_close(selected, reference)
    torch.testing.assert_close(window, reference)


def test_nsa_branches_match_a_per_query_loop() -> None:
    # Small blocks, 4 selected (3 always-on + 1 by importance), a 16-token window: each branch against a loop.
    config = tiny_config(**{**NSA, "nsa_num_selected_blocks": 4})
    lc, d, ls, n, w = 8, 4, 8, 4, 16  # compression block, stride, selection block, selected, window
    torch.manual_seed(0)
    nsa = NativeSparseAttention(config, layer_idx=0)
    with torch.no_grad():
        for p in nsa.k_compress.parameters():  # non-trivial compression and intra-block positions
            p.normal_(0, 0.3)
    B, T, H, G, D = 2, 45, 4, 2, 16
    x = torch.randn(B, T, 64)
    scale = D**-0.5
    with torch.no_grad():
        got_cmp, got_slc, got_win = nsa.branch_outputs(
            x, AttentionInputs(POSITIONAL["rope"](config), torch.arange(T)[None], mask=None)
        )
        q, k, v, _, _ = nsa_inputs(nsa, x)
        n_cmp = (T - lc) // d + 1
        ck = torch.stack([nsa.k_compress(k[:, :, c * d : c * d + lc]) for c in range(n_cmp)], dim=2)  # (B,Hkv,Nc,D)
        cv = torch.stack([nsa.v_compress(v[:, :, c * d : c * d + lc]) for c in range(n_cmp)], dim=2)
        for b in range(B):
            for t in range(T):
                visible = [c for c in range(n_cmp) if c * d + lc - 1 <= t]  # every token of the block is <= t
                own = t // ls
                for g in range(H // G):
                    importance = torch.zeros(own + 1)
                    for h in range(g * G, (g + 1) * G):
                        qt = q[b, h, t]
                        if visible:
                            p = torch.softmax(ck[b, g, visible] @ qt * scale, dim=-1)
                            torch.testing.assert_close(got_cmp[b, h, t], p @ cv[b, g, visible])
                            for c, pc in zip(visible, p, strict=True):  # spread over overlapping selection blocks
                                for s in range(own + 1):
                                    overlap = min(c * d + lc, (s + 1) * ls) - max(c * d, s * ls)
                                    importance[s] += pc * max(overlap, 0) / lc
                        else:
                            assert not got_cmp[b, h, t].any()  # no complete block yet: the branch contributes 0
                    forced = [own, 0, own - 1]  # own block, initial block, previous block
                    ranked = [s for s in forced if s >= 0] + sorted(
                        (s for s in range(own + 1) if s not in forced), key=lambda s: -importance[s]
                    )
                    chosen = list(dict.fromkeys(ranked))[:n]
                    keys = [j for s in chosen for j in range(s * ls, min((s + 1) * ls, t + 1))]
                    window = list(range(max(0, t - w + 1), t + 1))
                    for h in range(g * G, (g + 1) * G):
                        for got, idx in ((got_slc, keys), (got_win, window)):
                            p = torch.softmax(k[b, g, idx] @ q[b, h, t] * scale, dim=-1)
                            torch.testing.assert_close(got[b, h, t], p @ v[b, g, idx])


# --- both variants: causality, cache, generate, training -------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_future_tokens_do_not_change_past_outputs(variant: str) -> None:
    model = tiny_model(variant)
    x = tokens(2, 48)
    for t in (0, 7, 8, 23, 40):
        perturbed = x.clone()
        perturbed[:, t + 1 :] = tokens(2, 47 - t, seed=9)
        with torch.no_grad():
            a, b = model(x).logits[:, : t + 1], model(perturbed).logits[:, : t + 1]
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cached_decode_matches_full_forward(variant: str) -> None:
    # Prefill 21 tokens, then 3-token and 1-token chunks through the cache, across NSA block boundaries.
    model = tiny_model(variant)
    x = tokens(2, 40)
    with torch.no_grad():
        full = model(x, use_cache=False).logits
    torch.testing.assert_close(cached_logits(model, x, [21, *range(24, 40)]), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_generate_with_cache_equals_without(variant: str) -> None:
    model = tiny_model(variant, initializer_range=0.2)  # peaked logits: no near-ties for greedy to flip on
    x = tokens(2, 10)
    cached, uncached = greedy(model, x, new_tokens=30), greedy(model, x, use_cache=False, new_tokens=30)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_training_reduces_the_loss_and_reaches_every_parameter(variant: str) -> None:
    model = tiny_model(variant).train()
    x = tokens(4, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(8):
        optimizer.zero_grad()
        loss = model(x, labels=x).loss
        loss.backward()
        if step == 0:
            missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
            assert not missing, missing
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_padding_tokens_never_reach_real_tokens(variant: str) -> None:
    # Left-pad row 0 by 13 tokens (more than one NSA block); whatever ids sit under the padding, real rows agree.
    model = tiny_model(variant)
    x = tokens(2, 40)
    mask = torch.ones_like(x)
    mask[0, :13] = 0
    other = x.clone()
    other[0, :13] = tokens(1, 13, seed=5)
    with torch.no_grad():
        a, b = model(x, attention_mask=mask).logits, model(other, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_save_and_auto_load_round_trip(tmp_path, variant: str) -> None:
    model = tiny_model(variant)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.attention == model.config.attention
    x = tokens(2, 20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)


# --- accounting -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kv_cache_bytes_per_token_matches_the_cache(variant: str) -> None:
    model = tiny_model(variant)
    batch, seq = 3, 11
    with torch.no_grad():
        cache = model(tokens(batch, seq), use_cache=True).past_key_values
    cached_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert cached_bytes / (batch * seq) == kv_cache_bytes_per_token(model.config, bytes_per_element=4)


def test_kv_cache_bytes_per_token_figures() -> None:
    # 2 layers, bf16: MLA caches latent (24) + rope key (8); NSA caches K and V like GQA (2 x 2 heads x 16).
    assert kv_cache_bytes_per_token(tiny_config(**MLA), 2) == 2 * (24 + 8) * 2
    assert kv_cache_bytes_per_token(tiny_config(**NSA), 2) == 2 * (2 * 2 * 16) * 2
    assert kv_cache_bytes_per_token(tiny_config(), 2) == 2 * (2 * 2 * 16) * 2  # gqa


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_flops_per_token_matches_flop_counter(variant: str) -> None:
    model = tiny_model(variant, attn_kernel="eager")
    batch, seq = 2, 40
    x = tokens(batch, seq)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, use_cache=False)
    assert counter.get_total_flops() / (batch * seq) == pytest.approx(flops_per_token(model.config, seq), rel=1e-12)

    model.train()
    with FlopCounterMode(display=False) as counter:
        model(x, labels=x).loss.backward()
    expected = flops_per_token(model.config, seq, training=True)  # 3 x forward
    if variant == "nsa":  # its block-importance matmul (2 Hkv Nc Ns per query) only ranks blocks: no backward
        n_cmp, n_sel = (seq - 8) // 4 + 1, seq // 8
        expected -= 2 * model.config.num_hidden_layers * (2 * 2 * n_cmp * n_sel)  # 0.1 % here
    assert counter.get_total_flops() / (batch * seq) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_decode_step_flops_match_flop_counter(variant: str) -> None:
    # One cached decode step after a 30-token prefill: MLA's absorbed path, NSA recompressing its cache.
    model = tiny_model(variant, attn_kernel="eager")
    config, cls = model.config, type(model.model.layers[0].self_attn)
    x = tokens(2, 31)
    with torch.no_grad():
        cache = model(x[:, :30], use_cache=True).past_key_values
        with FlopCounterMode(display=False) as counter:
            model(x[:, 30:], past_key_values=cache, use_cache=True)
    mlp_and_head = flops_per_token(config, 1) - config.num_hidden_layers * cls.flops_per_token(config, 1)
    expected = 2 * (config.num_hidden_layers * cls.forward_flops(config, 1, 31) + mlp_and_head)
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-12)


# --- config validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({**MLA, "kv_lora_rank": 0}, ["mla", "kv_lora_rank"]),
        ({**MLA, "qk_rope_head_dim": 7}, ["qk_rope_head_dim", "even"]),
        ({**MLA, "q_lora_rank": 0}, ["q_lora_rank"]),
        ({**MLA, "v_head_dim": -2}, ["v_head_dim"]),
        ({**NSA, "nsa_compress_block_size": 12}, ["nsa_compress_block_size", "max_position_embeddings"]),
        ({**NSA, "nsa_selection_block_size": 24}, ["nsa_selection_block_size", "max_position_embeddings"]),
        ({**NSA, "nsa_compress_stride": 16}, ["nsa_compress_stride", "nsa_compress_block_size"]),
        ({**NSA, "nsa_num_selected_blocks": 9}, ["nsa_num_selected_blocks", "8 selection blocks"]),
        ({**NSA, "nsa_window_size": 65}, ["nsa_window_size", "max_position_embeddings"]),
        ({**NSA, "nsa_num_selected_blocks": 0}, ["nsa_num_selected_blocks", "positive"]),
    ],
)
def test_config_errors_name_the_key(overrides: dict, named: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        tiny_config(**overrides)
    for word in named:
        assert word in str(err.value)


def test_mla_rejects_an_encoding_that_rotates_whole_heads(monkeypatch) -> None:
    class WholeHeadRotation(PositionalEncoding):
        def rotate(self, q, k, position_ids):
            return -q, -k

    monkeypatch.setitem(POSITIONAL, "whole_head", WholeHeadRotation)
    with pytest.raises(ValueError, match="mla.*whole_head"):
        tiny_config(**MLA, positional="whole_head")
    tiny_config(**NSA, positional="whole_head")  # NSA rotates whole heads like GQA: fine
