"""Precisions: what each loader holds (dtypes, bytes), how close quantized logits stay to fp32, skipped precisions,
and MCR / the quality gate computed from hand-built rows by the report's `quantize` view."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from efficientllm.config import MatrixConfig, QuantizeConfig, load_section
from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM
from efficientllm.records import make_row, write_row
from efficientllm.techniques import quantization as q

REPO = Path(__file__).resolve().parents[1]
VOCAB = 64
STEP = 7  # the tiny model learns next = (prev - 2 + STEP) mod (VOCAB - 2) + 2


def _sequences(n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    start = torch.randint(0, VOCAB - 2, (n, 1), generator=generator)
    return (start + STEP * torch.arange(length)) % (VOCAB - 2) + 2  # (n, length), ids 2..VOCAB-1


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny EfficientLM trained for 80 steps on a deterministic sequence rule, saved with save_pretrained.

    Trained, not random: a random-init model's logits are nearly flat, so a 4-bit rounding flips its argmax on many
    positions and the top-1 check would measure noise. intermediate_size 96 is a multiple of 32 but not of the 4-bit
    block size 64, so down_proj exercises bitsandbytes' generic CPU path and the other layers its packed kernel.
    """
    cfg = EfficientLMConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                            tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    torch.manual_seed(0)
    model = EfficientLMForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        seq = _sequences(16, 32, g)
        model(input_ids=seq, labels=seq).loss.backward()
        opt.step()
        opt.zero_grad()
    out = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(out)
    return out


CPU = torch.device("cpu")


def _load(tiny_dir: Path, precision: str) -> q.LoadedModel:
    return q.PRECISIONS[precision](tiny_dir, CPU, QuantizeConfig())


def test_registry_covers_every_configured_precision():
    assert set(q.PRECISIONS) == set(q.NOMINAL_BITS)
    assert q.REFERENCE_PRECISION in q.PRECISIONS
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    matrix = load_section(REPO / "params.yaml", "matrix", params)
    for slugs in (MatrixConfig().quantize, MatrixConfig().quantize_sft, matrix.quantize, matrix.quantize_sft):
        assert set(slugs) <= set(q.PRECISIONS), slugs
        assert q.REFERENCE_PRECISION in slugs  # MCR and the quality gate need the bf16 cell


# Linear weights of the tiny model per layer: q, k, v, o (64 x 64) + gate, up (96 x 64) + down (64 x 96).
LINEAR = 2 * (4 * 64 * 64 + 3 * 96 * 64)
OUT_ROWS = 2 * (4 * 64 + 2 * 96 + 64)  # output rows of those layers (one int8 scale each)
OTHER = VOCAB * 64 + 5 * 64  # tied embedding / LM head + 5 RMSNorm weights


@pytest.mark.parametrize(
    ("precision", "dtype", "linear_dtype"),
    [("fp32", "float32", torch.float32), ("bf16", "bfloat16", torch.bfloat16), ("fp16", "float16", torch.float16),
     ("int8", "int8", torch.int8), ("int4", "nf4", torch.uint8), ("fp4", "fp4", torch.uint8)],
)
def test_weight_bytes_and_dtype_per_precision(tiny_dir, precision, dtype, linear_dtype):
    loaded = _load(tiny_dir, precision)
    model = loaded.model
    assert loaded.dtype == dtype and loaded.nominal_bits == q.NOMINAL_BITS[precision]
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == linear_dtype
    assert q.logical_param_count(model) == LINEAR + OTHER  # the same model whatever the storage
    held = q.weight_bytes(model)
    if precision in ("fp32", "bf16", "fp16"):
        bytes_per = 4 if precision == "fp32" else 2
        assert held == {"total": (LINEAR + OTHER) * bytes_per, "quantized": 0, "other": (LINEAR + OTHER) * bytes_per}
        assert held["total"] == model.get_memory_footprint()
        return
    assert held["other"] == OTHER * 2  # unquantized_dtype bf16: embeddings and norms
    if precision == "int8":
        assert held["quantized"] == LINEAR + OUT_ROWS * 4  # int8 weights + one fp32 scale per output row
        assert q._count_layers(model, "Linear8bitLt") == 14
    else:
        # 4 bits per weight + one absmax per block of 64 (1 byte with double quantization, at most a 4-byte float)
        # + per-layer code tables (16 floats; 256 more with double quantization): at most 2 KiB per layer
        assert LINEAR // 2 + LINEAR // 64 <= held["quantized"] <= LINEAR // 2 + LINEAR // 64 * 4 + 14 * 2048
        assert loaded.details["quantized_layers"] == 14
        # get_memory_footprint misses the absmax constants bitsandbytes keeps on the parameter
        assert held["total"] > model.get_memory_footprint()
    assert held["total"] < (LINEAR + OTHER) * 2  # smaller than bf16


# Tolerances (relative logit error ||q - ref|| / ||ref||, and top-1 agreement), measured on this trained model:
# int8 ~0.01 / 1.0, nf4 ~0.14 / 1.0, fp4 ~0.15 / 1.0 (bf16 unquantized parts included). The bounds leave ~3x room.
@pytest.mark.parametrize(("precision", "max_rel_err", "min_top1"),
                         [("bf16", 0.03, 0.99), ("int8", 0.05, 0.98), ("int4", 0.35, 0.95), ("fp4", 0.35, 0.95)])
def test_quantized_logits_close_to_fp32(tiny_dir, precision, max_rel_err, min_top1):
    x = _sequences(4, 24, torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = _load(tiny_dir, "fp32").model(input_ids=x).logits.float()
        out = _load(tiny_dir, precision).model(input_ids=x).logits.float()
    rel = float((out - ref).norm() / ref.norm())
    top1 = float((out.argmax(-1) == ref.argmax(-1)).float().mean())
    assert rel <= max_rel_err, rel
    assert top1 >= min_top1, top1


def test_probe_turns_a_missing_kernel_into_precision_unsupported():
    q.probe_dtype(CPU, torch.float32)  # runs
    with pytest.raises(q.PrecisionUnsupported, match="Bool"):
        q.probe_dtype(CPU, torch.bool)  # CPU has no bool matmul kernel: the real "cannot run" path
    with pytest.raises(ValueError, match="unknown bitsandbytes probe kind"):
        q.probe_bitsandbytes(CPU, "int3")  # a caller's mistake, not a device limit


def test_cpu_4bit_kernel_fit_sends_misfit_layers_to_the_generic_path(tiny_dir):
    from bitsandbytes.functional import has_avx512bf16

    details = _load(tiny_dir, "int4").details
    if has_avx512bf16():  # the packed kernel exists: down_proj (input 96, not a multiple of 64) cannot use it
        assert (details["cpu_packed_kernel_layers"], details["cpu_generic_kernel_layers"]) == (12, 2)
    else:  # no packed kernel on this CPU: every layer is on the generic path already, nothing to send
        assert (details["cpu_packed_kernel_layers"], details["cpu_generic_kernel_layers"]) == (0, 0)


# ----------------------------------------------------------------------------- skipped rows


@pytest.fixture
def stage_repo(tmp_path, tiny_dir, monkeypatch):
    """The files stages.quantize reads, laid out as in the repository (tiny model as models/pretrain/mha)."""
    from efficientllm.data.tokenizer import train_tokenizer

    docs = [f"document {i} says that value {i} is {i * 3} and more words follow here" for i in range(12)]
    prepared = tmp_path / "data/prepared"
    prepared.mkdir(parents=True)
    tok = train_tokenizer(docs, 300)
    tok.save_pretrained(prepared / "tokenizer")
    (prepared / "val_docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (prepared / "stats.json").write_text(json.dumps({"block_len": 64, "source": "test"}))
    shutil.copytree(tiny_dir, tmp_path / "models/pretrain/mha")
    tok.save_pretrained(tmp_path / "models/pretrain/mha")  # the pretrain stage saves the tokenizer with the model
    shutil.copytree(REPO / "tasks", tmp_path / "tasks")
    (tmp_path / "data/cloze").mkdir()
    (tmp_path / "data/cloze/test.jsonl").write_text(json.dumps({"context": "a", "choices": ["b", "c"], "label": 0}))
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_precision_the_device_cannot_run_becomes_a_skipped_row(stage_repo, monkeypatch):
    from stages import quantize as stage

    def cannot(*args, **kwargs):
        raise q.PrecisionUnsupported("this device has no fp16 matmul")

    monkeypatch.setitem(q.PRECISIONS, "fp16", cannot)
    assert stage.main(["--stage", "quantize", "--precision", "fp16", "--model", "base",
                       "--model-dir", "models/pretrain/mha"]) == 0
    row = json.loads((stage_repo / "results/quantize/base-fp16/row.json").read_text())
    assert row["status"] == "skipped" and row["axis"] == "quantize" and row["technique"] == "fp16"
    assert row["error"].startswith("PrecisionUnsupported: this device has no fp16 matmul")
    assert json.loads((stage_repo / "results/quantize/base-fp16/samples.json").read_text())["status"] == "skipped"


def test_bad_params_are_config_errors_and_write_nothing(stage_repo):
    from efficientllm.config import ConfigError
    from stages import quantize as stage

    args = ["--stage", "quantize", "--model", "base", "--model-dir", "models/pretrain/mha"]
    with pytest.raises(ConfigError, match="unknown precision 'int3'"):
        stage.main([*args, "--precision", "int3"])
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["quantize"]["prompt_len"] = 60  # 60 + 16 new tokens > the model's 64 positions
    (stage_repo / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="exceeds the model's max_position_embeddings=64"):
        stage.main([*args, "--precision", "bf16"])
    assert not (stage_repo / "results").exists()


# ----------------------------------------------------------------------------- MCR in SQL


def _row(cell: str, precision: str, quality: float, size: float, **extra) -> dict:
    return make_row(run_id=cell, axis="quantize", stage="quantize", cell=cell, technique=precision,
                    model="pretrain/mha", status="ok", trial=0, quality_metric="efficientllm_cloze.acc_mutual_info",
                    quality_value=quality, model_size_bytes=size, timestamp_utc="2026-01-01T00:00:00+00:00",
                    extra={"precision": precision, "nominal_bits": q.NOMINAL_BITS[precision],
                           "quality_gate_ratio": 0.99, **extra})


def test_mcr_and_quality_gate_from_hand_built_rows(tmp_path):
    from efficientllm.report.views import connect

    # bf16: 0.40 at 1000 bytes; int4: 0.39 at 400 bytes; int8: 0.40 at 600 bytes; fp32: 0.40 at 2000 bytes.
    rows = [_row("base-bf16", "bf16", 0.40, 1000.0), _row("base-int4", "int4", 0.39, 400.0),
            _row("base-int8", "int8", 0.40, 600.0), _row("base-fp32", "fp32", 0.40, 2000.0)]
    files = [write_row(tmp_path / r["cell"] / "row.json", r) for r in rows]
    con = connect(files)
    got = {c: (n, m, g) for c, n, m, g in con.execute(
        "SELECT cell, mcr_nominal, mcr_measured, passes_quality_gate FROM quantize").fetchall()}
    # int4: nominal (16 / 4) x (0.39 / 0.40) = 3.9; measured (1000 / 400) x 0.975 = 2.4375; 0.975 < 0.99: fails
    assert got["base-int4"][0] == pytest.approx(3.9)
    assert got["base-int4"][1] == pytest.approx(2.4375)
    assert got["base-int4"][2] is False
    # int8: (16 / 8) x 1 = 2; (1000 / 600) x 1; passes. fp32: (16 / 32) x 1 = 0.5. bf16 against itself: 1.
    assert got["base-int8"][:2] == (pytest.approx(2.0), pytest.approx(1000 / 600)) and got["base-int8"][2] is True
    assert got["base-fp32"][0] == pytest.approx(0.5)
    assert got["base-bf16"] == (pytest.approx(1.0), pytest.approx(1.0), True)


def test_nominal_bytes():
    assert q.nominal_weight_bytes(1000, 4) == 500
    assert np.isclose(q.nominal_weight_bytes(3, 16), 6)


def test_hub_model_cell_end_to_end_offline(stage_repo, tmp_path_factory):
    """The quantize_hub path on a local stand-in for a hub id: a tiny transformers Llama (not our decoder), with
    its own workload section, measured and scored in-process."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from stages import quantize as stage

    tok = AutoTokenizer.from_pretrained(stage_repo / "data/prepared/tokenizer")
    hub_dir = tmp_path_factory.mktemp("hub") / "tiny-llama"
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(hub_dir)
    tok.save_pretrained(hub_dir)
    params = yaml.safe_load((stage_repo / "params.yaml").read_text())
    params["quantize_hub"] = {"models": {"tiny": {"id": str(hub_dir), "revision": None}}, "batch_size": 2,
                              "prompt_len": 8, "max_new_tokens": 3, "min_runs": 2, "min_duration_s": 0.0,
                              "ppl_blocks": 2, "memory_budget_mib": 0.5}
    params["eval"]["limit"] = 1
    (stage_repo / "params.yaml").write_text(yaml.safe_dump(params))

    assert stage.main(["--stage", "quantize_hub", "--precision", "bf16", "--hub-model", "tiny"]) == 0
    row = json.loads((stage_repo / "results/quantize/tiny-bf16/row.json").read_text())
    assert row["status"] == "ok", row["error"]
    assert row["stage"] == "quantize_hub" and row["model"] == str(hub_dir) and row["dtype"] == "bfloat16"
    assert row["batch_size"] == 2 and row["seq_len"] == 8 and row["extra"]["model_revision"] is None
    assert row["kv_cache_bytes_per_token"] == 2 * 1 * 1 * 16 * 2  # K, V x 1 layer x 1 KV head x head_dim 16 x bf16
    assert row["mcr_nominal"] == 1.0 and row["model_size_bytes"] == q.weight_bytes(
        q.PRECISIONS["bf16"](hub_dir, CPU, QuantizeConfig()).model)["total"]
    samples = json.loads((stage_repo / "results/quantize/tiny-bf16/samples.json").read_text())
    assert len(samples["requests"]) == row["steps"] >= 2 and all(len(r["decode_s"]) == 2 for r in samples["requests"])


def test_paper_profile_names_the_papers_models_and_leaderboard_tasks():
    from efficientllm.config import EvalConfig, QuantizeHubConfig, parse_section, read_params
    from efficientllm.pipeline.profiles import load_profile, merged_params

    profile = load_profile(REPO / "profiles/paper-quantize.yaml")
    base = read_params(REPO / "params.yaml")
    ids = set()
    for size in profile.sizes:
        merged = merged_params(base, profile.overrides(size))
        hub = parse_section(QuantizeHubConfig, "quantize_hub", merged["quantize_hub"])
        ev = parse_section(EvalConfig, "eval", merged["eval"])
        (slug,) = merged["matrix"]["quantize_hub"]
        ids.add(hub.models[slug]["id"])
        assert hub.device == "cuda" and q.REFERENCE_PRECISION in merged["matrix"]["quantize"]
        assert ev.tasks["quantize_hub"] == ["leaderboard_mmlu_pro", "leaderboard_bbh", "leaderboard_gpqa",
                                            "leaderboard_ifeval", "leaderboard_math_hard", "leaderboard_musr"]
    assert len(ids) == 9 and {"deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "01-ai/Yi-34B", "microsoft/phi-4"} <= ids
