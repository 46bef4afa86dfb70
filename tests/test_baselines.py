"""Tests for the model families (efficientllm.models.baselines) and the parameter-budget sizing (models.sizing).

Each baseline builds from the base shape at the budget, trains, saves and reloads, evaluates with use_cache=False,
and goes through the real pretraining cell; FLOPs and state sizes are checked against FlopCounterMode and the
caches transformers actually allocates. Tiny shapes (hidden 32, T=32), CPU only.

    OMP_WAIT_POLICY=PASSIVE python -m pytest tests/test_baselines.py -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import curve_losses
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, AutoTokenizer

from efficientllm.config import ConfigError, MeasureConfig, ModelConfig, PretrainConfig
from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM, count_parameters
from efficientllm.models.baselines import DEFAULT_TOLERANCE, FAMILIES, describe_variant, family_of, resolve_recipe
from efficientllm.models.sizing import KNOBS, fit_knob, non_embedding_parameters, size_to_budget
from efficientllm.records import CellId

REPO = Path(__file__).resolve().parents[1]
VOCAB = 300
T = 32
BASE = dict(hidden_size=32, intermediate_size=86, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            rope_theta=10000.0, tie_word_embeddings=True)
DATA = dict(vocab_size=VOCAB, max_position_embeddings=T, bos_token_id=0, eos_token_id=0, pad_token_id=1)

# The trainable baselines at the tiny shape. Mamba2 at state 16 sizes to 3 layers here (-4.7% of the budget).
RECIPES = {
    "mamba2": {"family": "mamba2", "state_size": 16, "param_budget": "match_base"},
    "rwkv": {"family": "rwkv", "param_budget": "match_base"},
    "gptneox": {"family": "gptneox", "param_budget": "match_base"},
}

# Hand check of the match_base budget: a decoder block is RMSNorm (C) + q, k, v, o (4 C^2 at MHA) + RMSNorm (C)
# + SwiGLU (3 C F); plus the final RMSNorm; the tied embedding is excluded. C=32, F=86, L=2:
# 2 * (32 + 4 * 32**2 + 32 + 3 * 32 * 86) + 32 = 2 * 12352 + 32 + 128 = 24864.
BASE_BUDGET = 24864


def tokens(batch: int, seq: int = T, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def build(slug: str, seed: int = 0):
    variant = resolve_recipe(BASE, RECIPES[slug], DATA)
    torch.manual_seed(seed)
    return variant, variant.build_model()


# --- sizing ---------------------------------------------------------------------------------------------------------


def test_fit_knob_finds_the_closest_grid_value() -> None:
    def count(value: int) -> int:
        return 10 * value

    assert fit_knob(count, 1000, start=1) == 100
    assert fit_knob(count, 1004, start=1) == 100  # 1000 is nearer than 1010
    assert fit_knob(count, 1006, start=1) == 101
    assert fit_knob(count, 1005, start=1) == 100  # a tie goes to the smaller value
    assert fit_knob(count, 1000, start=8, step=8) == 96  # grid 8, 16, ...: 96 -> 960, 104 -> 1040, a tie
    assert fit_knob(count, 1001, start=8, step=8) == 104
    assert fit_knob(count, 5, start=3) == 3  # below the first value: the first value
    with pytest.raises(ValueError, match="positive"):
        fit_knob(count, 0, start=1)


def test_base_budget_matches_the_hand_count() -> None:
    decoder = FAMILIES["efficientlm"]
    assert non_embedding_parameters(decoder.model_class, decoder.build_config(BASE, {}, DATA)) == BASE_BUDGET
    # and the meta-device count equals the count of a real model
    real = EfficientLMForCausalLM(EfficientLMConfig(**BASE, **DATA))
    counts = count_parameters(real)
    assert counts["total"] - counts["embedding"] == BASE_BUDGET


def test_sizing_recovers_a_known_shape() -> None:
    # Sizing the decoder's FFN to its own budget gives back F=86 exactly; sizing a GPT-NeoX to it solves the
    # closed form per layer 2*2C (two LayerNorms) + (3C^2 + 3C) + (C^2 + C) + (2CF + F + C), final LayerNorm 2C:
    # 2 * (128 + 3168 + 1056 + 32 + 65 F) + 64 = 24864  ->  F = 122.7  ->  123 (count 24822: |-42| < |+88|).
    decoder = FAMILIES["efficientlm"]
    config, sizing = size_to_budget(lambda s: decoder.build_config(s, {}, DATA), decoder.model_class,
                                    {**BASE, "intermediate_size": 1}, BASE_BUDGET, "intermediate_size", 0.01)
    assert (config.intermediate_size, sizing.non_embedding_params, sizing.relative_error) == (86, BASE_BUDGET, 0.0)
    neox = resolve_recipe(BASE, RECIPES["gptneox"], DATA)
    assert neox.config.intermediate_size == 123
    assert neox.sizing.non_embedding_params == 2 * (128 + 3168 + 1056 + 32 + 65 * 123) + 64 == 24822


@pytest.mark.parametrize("slug", sorted(RECIPES))
def test_baseline_builds_at_the_budget(slug: str) -> None:
    variant, model = build(slug)
    assert variant.sizing.target_non_embedding_params == BASE_BUDGET
    assert abs(variant.sizing.relative_error) <= DEFAULT_TOLERANCE
    counts = count_parameters(model)  # the real model has exactly the count the meta-device search saw
    assert counts["total"] - counts["embedding"] == variant.sizing.non_embedding_params
    assert model.config.vocab_size == VOCAB and family_of(model.config) is variant.family


def test_weight_decay_applies_to_linear_and_embedding_matrices_only() -> None:
    from efficientllm.pretrain import decayed

    for slug, kept in (("rwkv", "time_mix"), ("mamba2", "conv1d")):
        _, model = build(slug)
        names = {id(p): n for n, p in model.named_parameters()}
        skipped = [names[i] for i in set(names) - decayed(model)]
        assert any(kept in n for n in skipped), (slug, skipped)  # recurrence parameters are not pulled to zero
        assert all(p.dim() >= 2 for n, p in model.named_parameters() if id(p) in decayed(model))
    decoder = EfficientLMForCausalLM(EfficientLMConfig(**BASE, **DATA))
    by_shape = {id(p) for p in decoder.parameters() if p.dim() >= 2}
    assert decayed(decoder) == by_shape  # the decoder's matrices are all linear / embedding weights


def test_depth_width_recipes_in_params_match_the_budget() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    base = params["model"]
    data = {**DATA, "vocab_size": params["prepare"]["vocab_size"], "max_position_embeddings": 128}
    dw = {slug: r for slug, r in params["variants"].items() if slug.startswith("dw-")}
    assert len(dw) >= 3
    variants = {slug: resolve_recipe(base, recipe, data) for slug, recipe in dw.items()}
    shapes = {(v.config.num_hidden_layers, v.config.hidden_size) for v in variants.values()}
    assert len(shapes) == len(dw)  # every recipe a different depth / width
    for slug, v in variants.items():
        assert abs(v.sizing.relative_error) < 0.03, slug  # non-embedding params within 3% of the base's


def test_every_budgeted_recipe_in_params_resolves() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    data = {**DATA, "vocab_size": params["prepare"]["vocab_size"], "max_position_embeddings": 128}
    for slug, recipe in params["variants"].items():
        if "family" in recipe or "param_budget" in recipe:
            variant = resolve_recipe(params["model"], recipe, data)
            assert variant.sizing is None or abs(variant.sizing.relative_error) <= DEFAULT_TOLERANCE, slug


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"family": "transformer-xl"}, r"family='transformer-xl' is not implemented; allowed: \["),
        ({"family": "rwkv", "num_heads": 4}, r"unknown key 'num_heads' for family rwkv \(allowed: "),
        ({"family": "mamba2", "intermediate_size": 100}, r"family mamba2 does not use 'intermediate_size'"),
        ({"family": "gptneox", "vocab_size": 10}, "set by the prepared data"),
        ({"family": "rwkv", "context_length": 10}, "set by the prepared data"),
        ({"family": "rwkv", "size_by": "intermediate_size"}, "size_by is set but param_budget is not"),
        ({"family": "rwkv", "param_budget": -5}, "param_budget must be 'match_base' or a positive number"),
        ({"family": "rwkv", "param_budget": "half"}, "param_budget must be 'match_base' or a positive number"),
        ({"family": "mamba2", "param_budget": "match_base", "size_by": "intermediate_size"},
         r"size_by='intermediate_size' cannot size family mamba2; allowed: \['hidden_size', 'num_hidden_layers'\]"),
        ({"family": "rwkv", "param_budget": "match_base", "intermediate_size": 90},
         "sets 'intermediate_size' and also sizes by it"),
        ({"family": "mamba", "param_budget": "match_base"},  # whole layers cannot get within 10% at this size
         r"sizing by num_hidden_layers .* \(-19.8%, tolerance 10%\); size by a finer knob"),
        ({"family": "mamba2", "num_heads": 3}, r"family mamba2: .*must equal num_heads \* head_dim"),
        ({"num_key_value_heads": 3}, "divisible"),
    ],
)
def test_bad_recipes_fail_with_the_key_named(recipe: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_recipe(BASE, recipe, DATA)


def test_model_config_wraps_recipe_errors_with_the_slug() -> None:
    from efficientllm.data import train_tokenizer
    from efficientllm.pretrain import model_config, model_variant

    tok = train_tokenizer(["some text to train on, and more text"] * 20, vocab_size=300)
    base = ModelConfig(**BASE)
    assert model_config("neox", base, RECIPES["gptneox"], tok, block_len=T).model_type == "gpt_neox"
    assert model_variant("neox", base, RECIPES["gptneox"], tok, block_len=T).sizing.size_by == "intermediate_size"
    with pytest.raises(ConfigError, match=r"\[variants\] bad: family='lstm' is not implemented"):
        model_config("bad", base, {"family": "lstm"}, tok, block_len=T)


def test_knobs_are_the_documented_ones() -> None:
    assert set(KNOBS) == {"intermediate_size", "num_hidden_layers", "hidden_size"}
    for family in FAMILIES.values():
        assert family.size_by in KNOBS and family.size_by in family.shape_keys, family.name


# --- training, saving, evaluation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", sorted(RECIPES))
def test_baseline_trains_saves_reloads_and_evaluates(slug: str, tmp_path: Path) -> None:
    from efficientllm.pretrain import evaluate_perplexity

    _, model = build(slug)
    model.train()
    batch = tokens(4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(2):  # the training loop's call: input_ids and labels, .loss
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    assert all(math.isfinite(x) for x in losses) and losses[1] < losses[0]  # same batch twice: the loss drops

    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # plain transformers, no registration involved
    assert type(loaded) is type(model)
    model.eval()
    val = tokens(4, seed=1).numpy()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=batch, use_cache=False).logits,
                                   model(input_ids=batch, use_cache=False).logits)
    ours = evaluate_perplexity(model, val, batch_size=2, n_batches=2, device=torch.device("cpu"))
    theirs = evaluate_perplexity(loaded, val, batch_size=2, n_batches=2, device=torch.device("cpu"))
    assert math.isfinite(ours[1]) and ours == pytest.approx(theirs)


# --- accounting ------------------------------------------------------------------------------------------------------


def _counted_forward_flops(model: torch.nn.Module, seq: int) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=tokens(1, seq), use_cache=False)
    return counter.get_total_flops() / seq


def test_gptneox_analytic_flops_equal_flop_counter() -> None:
    variant, model = build("gptneox")
    model.set_attn_implementation("eager")  # explicit matmuls: FlopCounterMode sees the attention scores
    family = variant.family
    assert family.flops_method == "analytic"
    assert family.flops_per_token(variant.config, T) == _counted_forward_flops(model, T)
    assert family.flops_per_token(variant.config, T, training=True) == 3 * family.flops_per_token(variant.config, T)


def test_rwkv_analytic_flops_equal_flop_counter() -> None:
    variant, model = build("rwkv")
    assert variant.family.flops_per_token(variant.config, T) == _counted_forward_flops(model, T)


def test_mamba2_flops_are_counted_on_the_meta_device() -> None:
    variant, model = build("mamba2")
    family, config = variant.family, variant.config
    assert family.flops_method == "flop_counter"
    assert family.flops_per_token(config, T) == pytest.approx(_counted_forward_flops(model, T))  # meta == CPU
    projections = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert family.flops_per_token(config, T) > 2 * projections  # plus the scan's matmuls and the conv


def _cache_bytes(cache) -> int:
    total = 0
    for layer in cache.layers:
        for states in (getattr(layer, "conv_states", {}), getattr(layer, "recurrent_states", {})):
            total += sum(t.numel() * t.element_size() for t in states.values())
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            total += t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0
    return total


@pytest.mark.parametrize("slug", ["mamba2", "rwkv"])
def test_recurrent_state_bytes_match_what_transformers_allocates(slug: str) -> None:
    variant, model = build(slug)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=tokens(1, 7), use_cache=True)
    allocated = (sum(t.numel() * t.element_size() for t in out.state) if slug == "rwkv"
                 else _cache_bytes(out.cache_params))
    assert variant.family.state_bytes_per_sequence(variant.config, 4) == allocated
    assert variant.family.kv_cache_bytes_per_token(variant.config, 4) == 0.0  # constant-size state, not per token


def test_mamba_v1_state_bytes_match_what_transformers_allocates() -> None:
    variant = resolve_recipe(BASE, {"family": "mamba", "num_hidden_layers": 1, "state_size": 8}, DATA)
    model = variant.build_model().eval()
    with torch.no_grad():
        out = model(input_ids=tokens(1, 5), use_cache=True)
    assert variant.family.state_bytes_per_sequence(variant.config, 4) == _cache_bytes(out.cache_params)


def test_gptneox_kv_cache_bytes_per_token_match_the_cache() -> None:
    variant, model = build("gptneox")
    model.eval()
    with torch.no_grad():
        out = model(input_ids=tokens(1, 10), use_cache=True)
    assert variant.family.kv_cache_bytes_per_token(variant.config, 4) == _cache_bytes(out.past_key_values) / 10
    assert variant.family.state_bytes_per_sequence(variant.config, 4) == 0.0


# --- the real pretraining cell --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared-corpus stand-in: tokenizer, random train/val blocks, stats.json."""
    from efficientllm.data import train_tokenizer

    root = tmp_path_factory.mktemp("prepared")
    tok = train_tokenizer([f"document {i}: the quick brown fox jumps over the lazy dog" for i in range(40)],
                          vocab_size=VOCAB)
    tok.save_pretrained(root / "tokenizer")
    rng = np.random.default_rng(0)
    np.save(root / "train.npy", rng.integers(2, len(tok), size=(16, T), dtype=np.uint16))
    np.save(root / "val.npy", rng.integers(2, len(tok), size=(4, T), dtype=np.uint16))
    (root / "stats.json").write_text(json.dumps({"source": "test"}))
    return root


@pytest.mark.parametrize("slug", sorted(RECIPES))
def test_pretrain_cell_trains_a_baseline_unchanged(slug: str, data_dir: Path, tmp_path: Path) -> None:
    from efficientllm.pretrain import evaluate_perplexity, model_variant, pretrain_cell

    cfg = PretrainConfig(device="cpu", batch_size=2, steps=3, lr_warmup_steps=1, measure_warmup_steps=1,
                         eval_batches=2)
    measure = MeasureConfig(peak_calibration_n=128, cache_dir=str(tmp_path / "cache"))
    outcome = pretrain_cell(cell=CellId(axis="pretrain", stage="pretrain", cell=slug),
                            slug=slug, base=ModelConfig(**BASE), recipe=RECIPES[slug], cfg=cfg, measure=measure,
                            data_dir=data_dir, model_out=tmp_path / "model")
    row, extra = outcome.row, outcome.row["extra"]
    assert all(math.isfinite(x) for x in curve_losses(outcome)) and math.isfinite(row["quality_value"])
    family = FAMILIES[RECIPES[slug]["family"]]
    assert row["model"].startswith(f"{family.name}-")
    assert extra["family"] == family.name and extra["flops_method"] == family.flops_method
    assert extra["sizing"]["target_non_embedding_params"] == BASE_BUDGET
    assert extra["sizing"]["non_embedding_params"] == extra["non_embedding_params"]
    assert row["n_params"] - extra["embedding_params"] == extra["non_embedding_params"]
    variant = model_variant(slug, ModelConfig(**BASE), RECIPES[slug], AutoTokenizer.from_pretrained(
        data_dir / "tokenizer"), T)
    assert row["flops_per_token"] == family.flops_per_token(variant.config, T, training=True) > 0
    assert (row["kv_cache_bytes_per_token"] > 0) == (slug == "gptneox")
    assert (extra["state_bytes_per_sequence"] > 0) == (slug != "gptneox")
    # the saved checkpoint is the trained model: reloaded with plain transformers, it gives the row's eval loss
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    val = np.load(data_dir / "val.npy")
    eval_loss, _ = evaluate_perplexity(loaded, val, cfg.batch_size, cfg.eval_batches, torch.device("cpu"))
    assert eval_loss == pytest.approx(row["eval_loss"], rel=1e-5)


def test_decoder_rows_keep_their_fields() -> None:
    extra = describe_variant(resolve_recipe(BASE, {"attention": "gqa"}, DATA), 4)
    assert {k: extra[k] for k in ("family", "attention", "positional", "mlp", "sizing", "num_key_value_heads")} == {
        "family": "efficientlm", "attention": "gqa", "positional": "rope", "mlp": "swiglu", "sizing": None,
        "num_key_value_heads": 2}


def test_module_level_accounting_dispatches_on_the_config() -> None:
    from efficientllm.models import accounting, baselines

    decoder = EfficientLMConfig(**BASE, **DATA)
    assert baselines.flops_per_token(decoder, T, training=True) == accounting.flops_per_token(decoder, T, True)
    assert baselines.kv_cache_bytes_per_token(decoder, 2) == accounting.kv_cache_bytes_per_token(decoder, 2)
    for slug in RECIPES:
        variant = resolve_recipe(BASE, RECIPES[slug], DATA)
        family = variant.family
        assert baselines.flops_per_token(variant.config, T) == family.flops_per_token(variant.config, T)
        assert baselines.kv_cache_bytes_per_token(variant.config, 2) == family.kv_cache_bytes_per_token(
            variant.config, 2)
        assert baselines.state_bytes_per_sequence(variant.config, 2) == family.state_bytes_per_sequence(
            variant.config, 2)


def test_shape_scales_keep_head_dim_and_valid_head_groups() -> None:
    from efficientllm.models.sizing import scale_depth, scale_width

    mha = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": 2}
    assert scale_depth(mha, 4)["num_hidden_layers"] == 8 and scale_depth(mha, 0.1)["num_hidden_layers"] == 1
    # MHA: kv heads follow the query heads; head_dim 16 stays
    assert {k: scale_width(mha, 0.75)[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads")} == {
        "hidden_size": 48, "num_attention_heads": 3, "num_key_value_heads": 3}
    # Qwen2.5-0.5B's 14 query / 2 KV heads of 64: x1.5 = 21 query heads -> the nearest multiple of 2, rounding
    # 10.5 groups half up -> 22 heads (hidden 1408); x0.5 = 7 -> 3.5 groups -> 8 heads; KV heads stay 2
    qwen = {"hidden_size": 896, "num_attention_heads": 14, "num_key_value_heads": 2, "num_hidden_layers": 24}
    assert (scale_width(qwen, 1.5)["hidden_size"], scale_width(qwen, 1.5)["num_attention_heads"]) == (1408, 22)
    assert scale_width(qwen, 0.5)["num_attention_heads"] == 8 and scale_width(qwen, 0.5)["num_key_value_heads"] == 2
    assert scale_width(qwen, 0.01)["num_attention_heads"] == 2  # never fewer than one group
    with pytest.raises(ValueError, match="width_scale must be a positive number"):
        resolve_recipe(BASE, {"width_scale": 0}, DATA)
