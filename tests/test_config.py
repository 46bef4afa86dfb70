"""Config validation: every section of params.yaml parses, and bad values name section, key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from efficientllm.config import (
    SECTIONS,
    ConfigError,
    MatrixConfig,
    PrepareConfig,
    PretrainConfig,
    load_section,
    load_variant,
    parse_section,
)

REPO = Path(__file__).resolve().parents[1]


def test_default_params_parse_every_section():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name in SECTIONS:
        assert name in params, f"params.yaml lacks section [{name}]"
        load_section(REPO / "params.yaml", name, params)


def test_every_matrix_slug_has_a_recipe_the_model_accepts():
    """Every default pretrain cell resolves to a model config at the default block length (a bad recipe fails CI)."""
    from efficientllm.data import train_tokenizer
    from efficientllm.pretrain import model_variant

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    matrix = load_section(REPO / "params.yaml", "matrix", params)
    base = load_section(REPO / "params.yaml", "model", params)
    block_len = load_section(REPO / "params.yaml", "prepare", params).block_len
    tok = train_tokenizer(["some text to train a tokenizer on"] * 20, vocab_size=300)
    for slug in matrix.pretrain:
        recipe = load_variant(REPO / "params.yaml", slug, params)
        variant = model_variant(slug, base, recipe, tok, block_len)
        assert variant.config.vocab_size == len(tok), slug


@pytest.mark.parametrize(
    ("cls", "section", "raw", "needle"),
    [
        (PrepareConfig, "prepare", {"vocab_sise": 10}, "[prepare] unknown key 'vocab_sise'"),
        (PrepareConfig, "prepare", {"vocab_size": 100}, "[prepare] vocab_size: 100 must be >= 260"),
        (PrepareConfig, "prepare", {"vocab_size": "big"}, "[prepare] vocab_size: expected an integer"),
        (PrepareConfig, "prepare", {"source": "reddit"}, "[prepare] source: 'reddit' is not one of stdlib_docs"),
        (PrepareConfig, "prepare", {"val_fraction": 0.0}, "[prepare] val_fraction: 0.0 must be > 0.0"),
        (PrepareConfig, "prepare", {"val_fraction": 0.9}, "[prepare] val_fraction: 0.9 must be <= 0.5"),
        (PrepareConfig, "prepare", {"source_paths": "a.txt"}, "[prepare] source_paths: expected a list"),
        (PretrainConfig, "pretrain", {"batch_size": -1}, "[pretrain] batch_size: -1 must be >= 1"),
        (PretrainConfig, "pretrain", {"batch_size": True}, "[pretrain] batch_size: expected an integer"),
        (PretrainConfig, "pretrain", {"lr": 0}, "[pretrain] lr: 0.0 must be > 0.0"),
        (PretrainConfig, "pretrain", {"steps": 5, "measure_warmup_steps": 5}, "measure_warmup_steps=5 must be < steps"),
        (MatrixConfig, "matrix", {"pretrain": []}, "[matrix] pretrain: the list is empty"),
        (MatrixConfig, "matrix", {"pretrain": ["Bad Slug"]}, "[matrix] pretrain: bad slug 'Bad Slug'"),
        (MatrixConfig, "matrix", {"pretrain": ["a", "a"]}, "[matrix] pretrain: duplicate slugs"),
    ],
)
def test_bad_values_name_section_and_key(cls, section, raw, needle):
    with pytest.raises(ConfigError) as e:
        parse_section(cls, section, raw)
    assert needle in str(e.value)


def test_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match=r"\[pretrain\]: expected a mapping"):
        parse_section(PretrainConfig, "pretrain", [1, 2])


def test_lists_become_tuples_and_configs_are_frozen():
    cfg = parse_section(PrepareConfig, "prepare", {"source_paths": ["a.txt", "b.jsonl"]})
    assert cfg.source_paths == ("a.txt", "b.jsonl")
    with pytest.raises(AttributeError):
        cfg.vocab_size = 5  # type: ignore[misc]


def test_missing_file_section_and_variant(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_section(tmp_path / "nope.yaml", "prepare")
    p = tmp_path / "params.yaml"
    p.write_text("prepare: {}\nvariants:\n  mha: {attention: gqa}\n")
    with pytest.raises(ConfigError, match=r"missing section \[pretrain\]"):
        load_section(p, "pretrain")
    with pytest.raises(ConfigError,
                       match=r"\[variants\] unknown variant 'mla' \(did you mean 'mha'\?\) \(defined: mha\)"):
        load_variant(p, "mla")
    p.write_text("prepare: {}\npretrian: {steps: 5}\n")
    with pytest.raises(ConfigError, match=r"unknown section 'pretrian'"):
        load_section(p, "prepare")
    p.write_text("prepare: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_section(p, "prepare")


def test_recipe_keys_checked_against_the_model(tmp_path):
    from transformers import PreTrainedTokenizerFast

    from efficientllm.config import ModelConfig
    from efficientllm.data import train_tokenizer
    from efficientllm.pretrain import model_config

    tok: PreTrainedTokenizerFast = train_tokenizer(["some text to train on"] * 20, vocab_size=300)
    base = ModelConfig()
    cfg = model_config("gqa2", base, {"num_key_value_heads": 2}, tok, block_len=32)
    assert cfg.num_key_value_heads == 2 and cfg.vocab_size == len(tok) and cfg.max_position_embeddings == 32
    with pytest.raises(ConfigError, match=r"\[variants\] x: unknown key 'n_kv_heads'"):
        model_config("x", base, {"n_kv_heads": 2}, tok, block_len=32)
    with pytest.raises(ConfigError, match=r"\[variants\] x: .*divisible"):
        model_config("x", base, {"num_key_value_heads": 3}, tok, block_len=32)
    with pytest.raises(ConfigError, match=r"\[variants\] x: attention='flash9' is not implemented"):
        model_config("x", base, {"attention": "flash9"}, tok, block_len=32)
    with pytest.raises(ConfigError, match="set by the prepared data"):
        model_config("x", base, {"vocab_size": 10}, tok, block_len=32)
