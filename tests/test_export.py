"""Tests for efficientllm.export and `efficientllm export`: Llama parity without our package, and clear refusals.

The parity check loads the exported checkpoints in a separate Python process in which importing efficientllm is
impossible, so nothing of ours (Auto registration included) can take part in loading them.

    OMP_WAIT_POLICY=PASSIVE python -m pytest tests/test_export.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientllm import cli
from efficientllm.export import LLAMA_COMPONENTS, ExportError, export, llama_config
from efficientllm.models import ATTENTION, MLP, POSITIONAL, EfficientLMConfig, EfficientLMForCausalLM

REGISTRIES = {"attention": ATTENTION, "positional": POSITIONAL, "mlp": MLP}

# Loads each exported dir with plain transformers and saves its logits; `import efficientllm` raises in here.
LOADER = """
import sys
sys.modules["efficientllm"] = None  # any import of our package now fails
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
ids, out = torch.load(sys.argv[1]), {}
for d in sys.argv[3:]:
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    AutoTokenizer.from_pretrained(d)
    with torch.no_grad():
        out[d] = (type(model).__name__, model(input_ids=ids).logits)
torch.save(out, sys.argv[2])
"""


@pytest.fixture(scope="module")
def tokenizer():
    from efficientllm.data import train_tokenizer

    return train_tokenizer([f"line {i}: export me to llama, please" for i in range(30)], vocab_size=280)


def save_model(path: Path, tokenizer, seed: int = 0, **overrides) -> EfficientLMForCausalLM:
    kwargs = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    config = EfficientLMConfig(**{**kwargs, **overrides})
    torch.manual_seed(seed)
    model = EfficientLMForCausalLM(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return model


def test_exported_llama_gives_our_logits_without_our_package(tmp_path: Path, tokenizer) -> None:
    cases = {"mha": dict(num_key_value_heads=4), "gqa": dict(tie_word_embeddings=True),
             "mqa": dict(num_key_value_heads=1, rope_theta=500.0)}
    ids = torch.randint(0, len(tokenizer), (2, 20), generator=torch.Generator().manual_seed(3))
    ours, exported = {}, []
    for i, (name, overrides) in enumerate(cases.items()):
        model = save_model(tmp_path / name, tokenizer, seed=i, **overrides)
        with torch.no_grad():
            ours[name] = model(input_ids=ids).logits
        out = export(tmp_path / name, tmp_path / f"{name}-llama")
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
        assert not any(k in config for k in ("attention", "positional", "mlp", "attn_kernel"))  # nothing of ours
        exported.append(str(out))
    torch.save(ids, tmp_path / "ids.pt")
    subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / "ids.pt"), str(tmp_path / "out.pt"), *exported],
                   check=True, capture_output=True, text=True, timeout=300)
    theirs = torch.load(tmp_path / "out.pt")
    for name in cases:
        cls, logits = theirs[str(tmp_path / f"{name}-llama")]
        assert cls == "LlamaForCausalLM"
        torch.testing.assert_close(logits, ours[name])


def test_every_non_llama_component_is_refused_by_name() -> None:
    refused = 0
    for field, registry in REGISTRIES.items():
        for value in sorted(set(registry) - set(LLAMA_COMPONENTS[field])):
            config = EfficientLMConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                       num_attention_heads=4, max_position_embeddings=64, **{field: value})
            with pytest.raises(ExportError, match=rf"{field}='{value}' has no equivalent in the standard Llama"):
                llama_config(config)
            refused += 1
    assert refused >= 1


def test_cli_refuses_a_non_standard_variant_and_writes_nothing(tmp_path: Path, tokenizer, capsys) -> None:
    save_model(tmp_path / "learned", tokenizer, positional="learned")
    code = cli.main(["export", str(tmp_path / "learned"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert "efficientllm export: error: positional='learned' has no equivalent in the standard Llama" in err
    assert not (tmp_path / "out").exists()


def test_cli_exports_a_standard_variant(tmp_path: Path, tokenizer, capsys) -> None:
    save_model(tmp_path / "gqa", tokenizer)
    assert cli.main(["export", str(tmp_path / "gqa"), str(tmp_path / "out"), "--format", "llama"]) == 0
    assert "wrote llama checkpoint" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "out").iterdir()}
    # a second export into the now non-empty folder needs --overwrite
    assert cli.main(["export", str(tmp_path / "gqa"), str(tmp_path / "out")]) == cli.EXIT_USAGE
    assert "exists and is not empty" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "gqa"), str(tmp_path / "out"), "--overwrite"]) == 0


def test_baselines_failed_cells_and_unknown_formats_are_refused(tmp_path: Path, tokenizer) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64)).save_pretrained(tmp_path / "neox")
    with pytest.raises(ExportError, match="model_type 'gpt_neox', which is already a transformers architecture"):
        export(tmp_path / "neox", tmp_path / "out")
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "FAILED.json").write_text(json.dumps({"status": "failed", "error": "boom\nValueError: x"}))
    with pytest.raises(ExportError, match="marker of a failed pretraining cell.*ValueError: x"):
        export(tmp_path / "failed", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        export(tmp_path / "missing", tmp_path / "out")
    save_model(tmp_path / "gqa", tokenizer)
    with pytest.raises(ExportError, match=r"unknown export format 'gguf'; allowed: \['llama'\]"):
        export(tmp_path / "gqa", tmp_path / "out", "gguf")
    assert not (tmp_path / "out").exists()


def test_a_logits_mismatch_stops_the_export(tmp_path: Path, tokenizer, monkeypatch) -> None:
    from efficientllm import export as exporting

    save_model(tmp_path / "gqa", tokenizer)
    real = exporting.to_llama

    def broken(model):  # a conversion that drifted from our model: one weight off
        llama = real(model)
        with torch.no_grad():
            llama.model.layers[0].self_attn.q_proj.weight.mul_(1.5)
        return llama

    monkeypatch.setattr(exporting, "to_llama", broken)
    with pytest.raises(ExportError, match="logits differ from the source model's .*nothing written"):
        export(tmp_path / "gqa", tmp_path / "out")
    assert not (tmp_path / "out").exists()
