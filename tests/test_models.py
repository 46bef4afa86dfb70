"""Tests for efficientllm.models: Llama parity, HF integration (save/load, generate, cache) and accounting.

Tiny fp32 models on CPU; the whole file runs in a few seconds.

    OMP_WAIT_POLICY=PASSIVE python -m pytest tests/test_models.py -q
"""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from conftest import cached_logits, check_left_padding, greedy, random_tokens, seeded_decoder, tiny_decoder_config
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from efficientllm.models import (
    ATTENTION,
    ATTENTION_KERNELS,
    MLP,
    POSITIONAL,
    EfficientLMConfig,
    EfficientLMForCausalLM,
    SwiGLU,
    count_parameters,
    flops_per_token,
    kv_cache_bytes_per_token,
)
from efficientllm.models.modeling import build_attention_mask

VOCAB = 211
tokens = functools.partial(random_tokens, VOCAB)  # tokens(batch, seq, seed=1)


tiny_config = functools.partial(tiny_decoder_config, vocab_size=VOCAB, max_position_embeddings=128)


def tiny_model(seed: int = 0, **overrides) -> EfficientLMForCausalLM:
    return seeded_decoder(tiny_config(**overrides), seed)


def llama_twin(model: EfficientLMForCausalLM) -> LlamaForCausalLM:
    """HF Llama with the same shapes and the same weights (parameter names are identical by design)."""
    c = model.config
    llama_config = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        max_position_embeddings=c.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        rms_norm_eps=c.rms_norm_eps,
        tie_word_embeddings=c.tie_word_embeddings,
        pad_token_id=c.pad_token_id,
        attn_implementation="eager",
    )
    llama = LlamaForCausalLM(llama_config).eval()
    llama.load_state_dict(model.state_dict(), strict=True)
    return llama


# --- parity with HF Llama -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", sorted(ATTENTION_KERNELS))
@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_logits_match_llama(kv_heads: int, kernel: str) -> None:
    model = tiny_model(num_key_value_heads=kv_heads, attn_kernel=kernel)
    llama = llama_twin(model)
    x = tokens(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, llama(x).logits)


@pytest.mark.parametrize("kernel", sorted(ATTENTION_KERNELS))
def test_padded_logits_match_llama(kernel: str) -> None:
    # Left padding with explicit positions (Llama's forward does not derive positions from the mask); compare the
    # logits of real tokens only, padded query rows are meaningless in both.
    model = tiny_model(attn_kernel=kernel)
    llama = llama_twin(model)
    x = tokens(2, 10)
    mask = torch.ones_like(x)
    mask[0, :4] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(x, attention_mask=mask, position_ids=positions).logits
        ref = llama(x, attention_mask=mask, position_ids=positions).logits
        implicit = model(x, attention_mask=mask).logits  # positions derived from the mask
    real = mask.bool()
    torch.testing.assert_close(ours[real], ref[real])
    torch.testing.assert_close(implicit[real], ref[real])


def test_attention_mask_is_causal_hides_padding_and_never_empties_a_row() -> None:
    padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    mask = build_attention_mask(padding, q_len=5, k_len=5, dtype=torch.float32, device=torch.device("cpu"))
    allowed = mask == 0  # (B, 1, Tq, Tk)
    assert allowed.shape == (2, 1, 5, 5)
    assert torch.equal(allowed[1, 0], torch.ones(5, 5, dtype=torch.bool).tril())  # unpadded row: plain causal
    assert not allowed[0, 0, 2:, :2].any()  # real queries never see padding keys
    assert allowed.any(-1).all()  # a padding query sees itself: no all-masked row, so no NaN
    # decode step: 1 new query over 5 cached + 1 new keys
    step = build_attention_mask(
        torch.cat([padding, torch.ones(2, 1, dtype=torch.long)], 1), 1, 6, torch.float32, torch.device("cpu")
    )
    assert torch.equal(step[:, 0, 0] == 0, torch.tensor([[False, False, True, True, True, True], [True] * 6]))
    assert build_attention_mask(None, 5, 5, torch.float32, torch.device("cpu")) is None  # kernels' own causal path


@pytest.mark.parametrize("kernel", sorted(ATTENTION_KERNELS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_left_padding_stays_finite_in_half_precision(kernel: str, dtype: torch.dtype) -> None:
    # Smoke test: padded rows in half precision give finite logits everywhere (padding queries included).
    model = tiny_model(attn_kernel=kernel, initializer_range=0.5).to(dtype)
    x = tokens(2, 10)
    mask = torch.ones_like(x)
    mask[0, :6] = 0
    with torch.no_grad():
        logits = model(x, attention_mask=mask).logits
    assert torch.isfinite(logits).all()


def test_loss_matches_llama() -> None:
    model = tiny_model()
    llama = llama_twin(model)
    x = tokens(2, 12)
    labels = x.clone()
    labels[:, :3] = -100  # ignored prompt tokens
    with torch.no_grad():
        ours, ref = model(x, labels=labels), llama(x, labels=labels)
    torch.testing.assert_close(ours.loss, ref.loss)
    assert ours.aux_loss is None
    # and it is the plain shifted cross-entropy
    manual = torch.nn.functional.cross_entropy(ours.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(ours.loss, manual)


def test_parameter_count_matches_llama() -> None:
    for tie in (False, True):
        model = tiny_model(tie_word_embeddings=tie)
        counts = count_parameters(model)
        assert counts["total"] == llama_twin(model).num_parameters()
        assert counts["trainable"] == counts["active"] == counts["total"]
        assert counts["embedding"] == VOCAB * 64
    assert count_parameters(tiny_model(tie_word_embeddings=False))["total"] - counts["total"] == VOCAB * 64


# --- transformers integration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_save_and_auto_load_round_trip(tmp_path, tie: bool) -> None:
    model = tiny_model(tie_word_embeddings=tie)
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in files and "config.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))], files

    assert type(AutoConfig.from_pretrained(tmp_path)) is EfficientLMConfig
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is EfficientLMForCausalLM
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tie
    x = tokens(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)


def test_generate_with_cache_equals_without() -> None:
    model = tiny_model(initializer_range=0.2)  # peaked logits: no near-ties for greedy to flip on
    x = tokens(2, 6)
    cached, uncached = greedy(model, x, use_cache=True), greedy(model, x, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("kernel", sorted(ATTENTION_KERNELS))
def test_left_padded_batch_generate_matches_single(kernel: str) -> None:
    model = tiny_model(initializer_range=0.2, attn_kernel=kernel)
    check_left_padding(model, tokens(1, 4, seed=2), tokens(1, 7, seed=3))


def test_cached_decode_matches_full_forward() -> None:
    # Prefill 7 tokens, then feed 3 one at a time through the cache: logits equal the full 10-token forward.
    model = tiny_model()
    x = tokens(2, 10)
    with torch.no_grad():
        full = model(x, use_cache=False).logits
    torch.testing.assert_close(cached_logits(model, x, [7, 8, 9]), full)


# --- accounting -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_flops_per_token_matches_flop_counter(kv_heads: int) -> None:
    model = tiny_model(num_key_value_heads=kv_heads, attn_kernel="eager")
    batch, seq = 2, 16
    x = tokens(batch, seq)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, use_cache=False)
    assert counter.get_total_flops() / (batch * seq) == flops_per_token(model.config, seq)

    model.train()
    with FlopCounterMode(display=False) as counter:
        model(x, labels=x).loss.backward()
    assert counter.get_total_flops() / (batch * seq) == flops_per_token(model.config, seq, training=True)


def test_attn_kernel_is_switchable_on_a_built_model() -> None:
    # sdpa for speed, then eager to count FLOPs, on the same weights.
    model = tiny_model()
    x = tokens(2, 8)
    with torch.no_grad():
        fast = model(x).logits
        model.config.attn_kernel = "eager"
        counted = model(x).logits
    torch.testing.assert_close(fast, counted)


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_kv_cache_bytes_per_token_matches_dynamic_cache(kv_heads: int) -> None:
    model = tiny_model(num_key_value_heads=kv_heads)
    batch, seq = 3, 7
    with torch.no_grad():
        cache = model(tokens(batch, seq), use_cache=True).past_key_values
    assert len(cache.layers) == model.config.num_hidden_layers
    cached_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert cached_bytes / (batch * seq) == kv_cache_bytes_per_token(model.config, bytes_per_element=4)
    assert kv_cache_bytes_per_token(model.config, 2) == 2 * 2 * kv_heads * 16 * 2  # 2 x L x Hkv x D x bytes


# --- config validation and registries --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"attention": "flash9"}, ["attention", "flash9", "gqa"]),
        ({"positional": "alibi"}, ["positional", "rope"]),
        ({"mlp": "kan"}, ["mlp", "swiglu"]),
        ({"attn_kernel": "flex"}, ["attn_kernel", "eager", "sdpa"]),
        ({"num_attention_heads": 4, "num_key_value_heads": 3}, ["num_attention_heads", "num_key_value_heads"]),
        ({"hidden_size": 0}, ["hidden_size"]),
        ({"num_hidden_layers": -1}, ["num_hidden_layers"]),
        ({"vocab_size": 0}, ["vocab_size"]),
        ({"hidden_size": 66, "num_attention_heads": 4}, ["hidden_size", "num_attention_heads"]),
        ({"head_dim": 15}, ["head_dim"]),  # rope needs an even head_dim
        ({"num_kv_heads": 2}, ["num_kv_heads", "num_key_value_heads"]),  # typo: raises with a hint, not silent MHA
    ],
)
def test_config_errors_name_the_key(overrides: dict, named: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        tiny_config(**overrides)
    for word in named:
        assert word in str(err.value)


def test_config_mutation_is_checked_before_building() -> None:
    config = tiny_config()
    config.attention = "nope"
    with pytest.raises(ValueError, match="attention"):
        EfficientLMForCausalLM(config)


@pytest.mark.parametrize(
    ("attention", "positional", "mlp"), list(itertools.product(sorted(ATTENTION), sorted(POSITIONAL), sorted(MLP)))
)
def test_every_registered_combination_trains_and_generates(attention: str, positional: str, mlp: str) -> None:
    # A name in a registry that does not build, train and decode fails here, not in a user's run.
    model = tiny_model(attention=attention, positional=positional, mlp=mlp).train()
    x = tokens(2, 8)
    out = model(x, labels=x)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert greedy(model.eval(), x[:, :4], new_tokens=3).shape == (2, 3)


class _AuxProbeMLP(SwiGLU):
    """SwiGLU that also emits a constant aux loss: checks the seam an MoE load-balancing loss will use."""

    def forward(self, x):
        out, _ = super().forward(x)
        return out, x.new_tensor(0.25)


def test_mlp_aux_loss_reaches_outputs_and_loss(monkeypatch) -> None:
    monkeypatch.setitem(MLP, "aux_probe", _AuxProbeMLP)
    torch.manual_seed(0)
    probe = EfficientLMForCausalLM(tiny_config(mlp="aux_probe")).eval()
    dense = tiny_model(0)
    dense.load_state_dict(probe.state_dict())
    x = tokens(2, 8)
    with torch.no_grad():
        with_aux, without = probe(x, labels=x), dense(x, labels=x)
    assert with_aux.aux_loss.item() == pytest.approx(0.25 * 2)  # summed over the 2 layers
    torch.testing.assert_close(with_aux.loss, without.loss + with_aux.aux_loss)


def test_activation_checkpointing_recomputes_and_gives_the_same_gradients() -> None:
    x = tokens(2, 8)
    grads, mlp_calls = [], []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        calls: list[int] = []
        # a pre-hook: the non-reentrant recompute stops early, before the MLP's forward returns
        model.model.layers[0].mlp.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        model(x, labels=x).loss.backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad)
        mlp_calls.append(len(calls))
    assert mlp_calls == [1, 2]  # the checkpointed block ran again in backward
    torch.testing.assert_close(grads[0], grads[1])
