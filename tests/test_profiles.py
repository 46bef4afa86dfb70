"""Tests for profiles: the paper-scale profile's shapes (parameter counts on the meta device), its validation
against params.yaml, and the `dvc exp run -S` overrides it generates (applied with DVC's own Hydra code).

OMP_WAIT_POLICY=PASSIVE python -m pytest tests/test_profiles.py -q
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
import yaml
from conftest import REPO

import efficientllm.pipeline.profiles as profiles
from efficientllm.cli import main as cli_main
from efficientllm.config import ConfigError, ModelConfig, parse_section, read_params
from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM
from efficientllm.models.accounting import count_parameters
from efficientllm.pipeline.profiles import deep_merge, hydra_overrides, hydra_value, load_profile, merged_params

QWEN_VOCAB = 151936  # rows of Qwen2.5's embedding (config.json vocab_size of every Qwen2.5 size)


def qwen25_parameters(*, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int = QWEN_VOCAB,
                      qkv_bias: bool = True) -> int:
    """Parameters of a Qwen2.5 decoder with tied embeddings, counted from its architecture (modeling_qwen2.py):
    embedding V x d (shared with the LM head); per layer q (d x H*hd), k and v (d x Hkv*hd each), all three with
    biases, o (H*hd x d, no bias), SwiGLU gate/up/down (3 x d x F), two RMSNorm weights (2d); a final norm (d)."""
    hd = hidden // heads
    attn = hidden * heads * hd + 2 * hidden * kv_heads * hd + heads * hd * hidden
    bias = heads * hd + 2 * kv_heads * hd if qkv_bias else 0
    per_layer = attn + bias + 3 * hidden * ffn + 2 * hidden
    return vocab * hidden + layers * per_layer + hidden


# Qwen2.5 shapes (config.json of Qwen/Qwen2.5-{0.5B,1.5B,3B}; Qwen2.5 technical report, arXiv 2412.15115, table 1)
# and the sizes Qwen publishes for them (model cards: total / non-embedding, in billions, rounded to 2 decimals).
PAPER = {
    "0.5b": ({"layers": 24, "hidden": 896, "heads": 14, "kv_heads": 2, "ffn": 4864}, 0.49, 0.36),
    "1.5b": ({"layers": 28, "hidden": 1536, "heads": 12, "kv_heads": 2, "ffn": 8960}, 1.54, 1.31),
    "3b": ({"layers": 36, "hidden": 2048, "heads": 16, "kv_heads": 2, "ffn": 11008}, 3.09, 2.77),
}


@pytest.fixture(scope="module")
def paper():
    return load_profile("paper-pretrain", root=REPO)


@pytest.fixture(scope="module")
def base_params():
    return read_params(REPO / "params.yaml")


def test_formula_reproduces_qwens_exact_counts():
    # The exact totals of the released checkpoints (sum of numel over their safetensors, tied head counted once).
    assert qwen25_parameters(**PAPER["0.5b"][0]) == 494_032_768
    assert qwen25_parameters(**PAPER["1.5b"][0]) == 1_543_714_304
    assert qwen25_parameters(**PAPER["3b"][0]) == 3_085_938_688


@pytest.mark.parametrize("size", list(PAPER))
def test_paper_shapes_on_meta_device_match_qwen25(paper, base_params, size):
    shape, total_b, non_embedding_b = PAPER[size]
    merged = merged_params(base_params, paper.overrides(size))
    model = parse_section(ModelConfig, "model", merged["model"])
    assert (model.num_hidden_layers, model.hidden_size, model.num_attention_heads, model.num_key_value_heads,
            model.intermediate_size) == tuple(shape.values())
    assert merged["prepare"]["vocab_size"] == QWEN_VOCAB and merged["prepare"]["block_len"] == 8192
    cfg = EfficientLMConfig(**dataclasses.asdict(model), vocab_size=QWEN_VOCAB, max_position_embeddings=8192)
    with torch.device("meta"):  # no memory, no init work: a 3B model in well under a second
        lm = EfficientLMForCausalLM(cfg)
    counts = count_parameters(lm)
    # Our decoder is Qwen2.5 without the q/k/v biases (Llama's attention): exactly the formula without them.
    assert counts["total"] == qwen25_parameters(**shape, qkv_bias=False)
    assert counts["embedding"] == QWEN_VOCAB * shape["hidden"]  # tied: the LM head adds nothing
    assert round(counts["total"] / 1e9, 2) == total_b
    assert round((counts["total"] - counts["embedding"]) / 1e9, 2) == non_embedding_b


def test_paper_profile_settings(paper, base_params):
    for size in paper.sizes:
        merged = merged_params(base_params, paper.overrides(size))
        pre, pt = merged["prepare"], merged["pretrain"]
        assert pre["source"] == "fineweb_edu" and pre["source_paths"] == [] and pre["hub_config"] == "sample-10BT"
        assert pt["dtype"] == "bfloat16" and pt["nproc_per_node"] > 1 and pt["device"] == "cuda"
        assert pt["batch_size"] % (pt["nproc_per_node"] * pt["micro_batch_size"]) == 0
        # the token budget read from the hub covers the training tokens (GPT-2 tokens ~ ours, with margin)
        assert pre["max_source_tokens"] >= 1.1 * pt["steps"] * pt["batch_size"] * pre["block_len"]
    assert paper.overrides("0.5b")["pretrain"]["parallelism"] == "ddp"
    assert {paper.overrides(s)["pretrain"]["parallelism"] for s in ("1.5b", "3b")} == {"fsdp"}
    assert paper.env == {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}


def _apply_like_dvc(params_file, cmd: list[str]) -> dict:
    """What `dvc exp run -S ...` does to params.yaml: group the -S values by file, check none is a sweep, apply."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides, to_hydra_overrides

    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-S"]
    by_file = to_path_overrides(sets)
    assert list(by_file) == ["params.yaml"]
    assert not any(o.is_sweep_override() for o in to_hydra_overrides(by_file["params.yaml"]))
    apply_overrides(params_file, by_file["params.yaml"])
    return yaml.safe_load(params_file.read_text())


@pytest.mark.parametrize("size", ["0.5b", "3b"])
def test_generated_overrides_give_the_merged_params(paper, base_params, tmp_path, size):
    params_file = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params_file)
    cmd = profiles.dvc_exp_command(paper, size, extra_set=["++pretrain.steps=7"])
    assert cmd[:5] == ["dvc", "exp", "run", "--name", f"paper-pretrain-{size}"]
    applied = _apply_like_dvc(params_file, cmd)
    expected = deep_merge(base_params, deep_merge(paper.overrides(size), {"pretrain": {"steps": 7}}))
    assert applied == expected


def test_hydra_values_round_trip_through_dvc(tmp_path):
    tricky = {"s1": "sample-10BT", "s2": "it's", "s3": "a b, c", "s4": "x: y", "s5": "1e5", "s6": "true",
              "s7": "null", "s8": "3", "s9": "", "s10": "[x]", "s11": "é/ü", "s12": "HuggingFaceFW/fineweb-edu",
              "i": -3, "f": 0.00016, "f2": 1000000.0, "b": False, "n": None, "lst": ["a", 1, 2.5, None],
              "empty": [], "nested": {"k": {"j": "v"}}}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"report": {"title": "x"}}))
    cmd = []
    for o in hydra_overrides({"report": tricky}):
        cmd += ["-S", o]
    applied = _apply_like_dvc(params_file, cmd)
    assert applied["report"] == {"title": "x", **tricky}
    for bad in ("a\\b", "${x}"):
        with pytest.raises(ConfigError, match="not supported in profile strings"):
            hydra_value(bad)
    with pytest.raises(ConfigError, match="would come back from DVC as a string"):
        hydra_value(1e-05)  # ruamel writes 1e-05, PyYAML reads that as a string
    with pytest.raises(ConfigError, match="keys must be non-empty"):
        hydra_overrides({"a.b": 1})


def test_cli_dry_run_list_and_run(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert cli_main(["profile", "paper-pretrain", "--size", "all", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line, size in zip(lines, ["0.5b", "1.5b", "3b"], strict=True):
        assert line.startswith("HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 dvc exp run --name paper-pretrain-" + size)
        assert "-S ++prepare.source=fineweb_edu" in line and "-S ++prepare.block_len=8192" in line

    assert cli_main(["profile", "--list"]) == 0
    assert "paper-pretrain:" in capsys.readouterr().out

    ran = []

    class Done:
        returncode = 0

    monkeypatch.setattr(profiles.subprocess, "run", lambda cmd, env: ran.append((cmd, env)) or Done())
    assert cli_main(["profile", "paper-pretrain", "--size", "1.5b", "--queue", "-S", "++pretrain.steps=10"]) == 0
    (cmd, env), = ran
    assert cmd[:5] == ["dvc", "exp", "run", "--name", "paper-pretrain-1.5b"] and cmd[-1] == "--queue"
    assert cmd[-3:-1] == ["-S", "++pretrain.steps=10"] and "++pretrain.parallelism=fsdp" in cmd
    assert env["HF_HUB_OFFLINE"] == "0" and env["HF_DATASETS_OFFLINE"] == "0"


def test_bad_profiles_fail_with_the_key_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert cli_main(["profile", "no-such-profile", "--dry-run"]) == 2
    assert "profile 'no-such-profile' not found" in capsys.readouterr().err
    assert cli_main(["profile", "paper-pretrain", "--size", "7b", "--dry-run"]) == 2
    assert "unknown size '7b' (sizes: 0.5b, 1.5b, 3b)" in capsys.readouterr().err

    cases = {
        "unknown_top.yaml": ({"params": {}, "extras": 1}, "unknown key 'extras'"),
        "unknown_section.yaml": ({"params": {"pretrian": {"steps": 1}}}, "unknown params section 'pretrian'"),
        "bad_size.yaml": ({"params": {}, "sizes": {"s": {}}, "default_size": "m"}, "default_size 'm' is not one"),
        "bad_env.yaml": ({"params": {}, "env": {"X": 0}}, "env must map names to strings"),
        "bad_value.yaml": ({"params": {"pretrain": {"parallelism": "zero3"}}}, "[pretrain] parallelism: 'zero3'"),
        "bad_key.yaml": ({"params": {"pretrain": {"nprocs": 2}}}, "[pretrain] unknown key 'nprocs'"),
        "bad_split.yaml": ({"params": {"pretrain": {"batch_size": 6, "nproc_per_node": 4}}},
                           "batch_size=6 must be a multiple of nproc_per_node=4"),
        "bad_matrix.yaml": ({"params": {"matrix": {"pretrain": ["nope"]}}}, "nope not defined in [variants]"),
    }
    for name, (body, message) in cases.items():
        path = tmp_path / name
        path.write_text(yaml.safe_dump(body))
        assert cli_main(["profile", str(path), "--dry-run"]) == 2, name
        assert message in capsys.readouterr().err, name
