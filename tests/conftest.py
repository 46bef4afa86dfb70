"""Shared fixtures: a throwaway copy of the repository with a reduced params file, and a runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARED_DATA = REPO.parent / "shared" / "data"

# Never copied: environments, caches and pipeline outputs.
_SKIP = {".venv", ".git", ".cache", ".prefect", ".pytest_cache", ".ruff_cache", "data/prepared", "data/sft", "models",
         "data/cloze", "results", "reports", "tmp"}

# A params profile small enough for a test: the same stages and cells, tiny shapes.
TINY_OVERRIDES = {
    "prepare": {"vocab_size": 320, "block_len": 32, "max_docs": 400, "val_fraction": 0.1},
    "model": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "num_key_value_heads": 2},
    "pretrain": {"batch_size": 4, "steps": 6, "lr_warmup_steps": 2, "measure_warmup_steps": 2, "eval_batches": 2},
    "measure": {"peak_calibration_n": 128},
    # fine-tuning: one cell (lora on arith), a few steps; sft.max_seq_len stays 128 (RoPE base, any position)
    "matrix": {"pretrain": ["mha"], "finetune_methods": ["lora"], "finetune_datasets": ["arith"],
               "quantize": ["bf16", "int4"], "quantize_sft": ["bf16"],  # the bf16 reference + one bitsandbytes cell
               "import_model": [], "quantize_real": [],  # the real model: tests/test_real_model_e2e.py
               "pretrain_vision": ["mha"], "finetune_vision": ["lora"],  # the vision axis: one cell each
               "sweep_attention": ["mha", "mqa"], "sweep_precision": ["bf16"]},  # scaling maps: a crossover to read
    "sft": {"datasets": {"arith": {"source": "arith", "n_examples": 48}}, "max_eval_examples": 8},
    "finetune": {"steps": 3, "measure_warmup_steps": 1, "eval_examples": 4, "gen_eval_examples": 2,
                 "max_new_tokens": 8},
    # quantization: a tiny workload, few eval documents; prompt 8 + 4 new tokens fit the 32 positions
    "quantize": {"batch_size": 2, "prompt_len": 8, "max_new_tokens": 4, "min_runs": 2, "min_duration_s": 0.0,
                 "ppl_blocks": 4, "memory_budget_mib": 1.0},
    "eval": {"limit": 8, "batch_size": 8,
             # the arithmetic task generates up to 64 tokens, more than the tiny base's 32 positions
             "tasks": {"quantize": ["efficientllm_cloze"], "quantize_sft": ["efficientllm_cloze"],
                       "quantize_hub": ["efficientllm_cloze"]}},
    "cloze": {"context_words": 12, "continuation_words": 2, "max_choice_chars": 16},  # byte-level: ~1 token / char
    # the vision axis: a 2-head DiT of width 32, a few steps, 4 samples per class judged after 2 DDIM steps
    "vision_eval": {"classifier_hidden": 16, "classifier_epochs": 20, "samples_per_class": 4, "sample_steps": 2,
                    "grid_per_class": 2},
    "pretrain_vision": {"batch_size": 8, "steps": 4, "lr_warmup_steps": 1, "measure_warmup_steps": 1,
                        "hidden_size": 32, "num_attention_heads": 2},
    "finetune_vision": {"batch_size": 8, "steps": 3, "lr_warmup_steps": 1, "measure_warmup_steps": 1},
    # scaling maps: a width-32 one-layer decoder and a one-block SmolLM2-config Llama at 3 points each
    "sweep": {"contexts": [8, 16], "batch_sizes": [1, 2], "grid": "lines", "max_new_tokens": 3, "min_runs": 1,
              "vocab_size": 320, "variant_overrides": {}, "precision_num_hidden_layers": 1,
              "shape": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "num_key_value_heads": 2}},
}


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(OMP_WAIT_POLICY="PASSIVE", DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PATH=f"{BIN}{os.pathsep}{e.get('PATH', '')}")
    e.pop("EFFICIENTLLM_PARAMS", None)
    return e


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def write_params(repo: Path, overrides: dict) -> dict:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(params.get(section), dict):
            params[section].update(values)
        else:
            params[section] = values
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def copy_repo(dst: Path) -> Path:
    def ignore(d: str, names: list[str]) -> set[str]:
        rel = Path(d).relative_to(REPO)
        return {n for n in names if (rel / n).as_posix() in _SKIP or n == "__pycache__" or n.startswith(".reports.")}

    shutil.copytree(REPO, dst, ignore=ignore)
    run(["git", "init", "-q"], dst)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], dst)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "snapshot"], dst)
    return dst


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    """A copy of the repository with the tiny params profile (git-initialised; DVC is already in .dvc/)."""
    repo = copy_repo(tmp_path / "repo")
    write_params(repo, TINY_OVERRIDES)
    return repo


# --- tiny-model helpers shared by the model tests ------------------------------------------------------------------


def random_tokens(vocab: int, batch: int, seq: int, seed: int = 1) -> torch.Tensor:
    """Seeded token ids in [3, vocab): ids 0-2 are pad / bos / eos in the tiny test configs."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, seq), generator=g)


def greedy(model, input_ids, attention_mask=None, use_cache=True, new_tokens=8) -> torch.Tensor:
    """The `new_tokens` ids greedy decoding appends (fixed length: no early eos stop)."""
    out = model.generate(input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, use_cache=use_cache, pad_token_id=0)
    return out[:, input_ids.shape[1]:]


def curve_losses(outcome) -> list[float]:
    """The training losses of a cell's outcome, from its loss.csv (6 significant digits, as the stage writes it)."""
    import csv
    import io

    return [float(r["loss"]) for r in csv.DictReader(io.StringIO(outcome.files["loss.csv"]))]


# --- tiny EfficientLM decoders: the model tests' configs and bases -------------------------------------------------

TINY_DECODER = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
"""The shape the model tests start from (each file adds its vocabulary and the keys it exercises)."""


def tiny_decoder_config(**overrides):
    """An EfficientLMConfig of TINY_DECODER with ``overrides`` on top; ids 0-2 are pad / bos / eos, as in
    random_tokens."""
    from efficientllm.models import EfficientLMConfig

    return EfficientLMConfig(**{**TINY_DECODER, **overrides})


def seeded_decoder(config, seed: int = 0):
    """EfficientLMForCausalLM(config) in eval mode, its weights drawn after torch.manual_seed(seed)."""
    from efficientllm.models import EfficientLMForCausalLM

    torch.manual_seed(seed)
    return EfficientLMForCausalLM(config).eval()


def save_arith_base(path: str = "base") -> None:
    """The finetune tests' base, saved to ``path`` with its tokenizer: a 400-token BPE trained on 64 arith examples
    and a 2-layer, width-32 decoder with tied embeddings, weights from seed 0."""
    from efficientllm.data import train_tokenizer
    from efficientllm.data.arith import arith
    from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM

    texts = [r["instruction"] + " " + r["output"] for r in arith(n_examples=64, seed=0)]
    tok = train_tokenizer(texts, 400)
    torch.manual_seed(0)
    config = EfficientLMConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id)
    EfficientLMForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)


def cached_logits(model, input_ids: torch.Tensor, splits: list[int]) -> torch.Tensor:
    """The logits of ``input_ids`` fed through the KV cache in chunks cut at the positions ``splits`` (a prefill, then
    the rest), concatenated over positions: a cache that works gives the logits of one full forward."""
    out, steps = None, []
    with torch.no_grad():
        for chunk in input_ids.tensor_split(splits, dim=1):
            out = model(chunk, past_key_values=None if out is None else out.past_key_values, use_cache=True)
            steps.append(out.logits)
    return torch.cat(steps, dim=1)


def check_left_padding(model, short: torch.Tensor, long: torch.Tensor, new_tokens: int = 8) -> None:
    """Assert that greedy decoding of the batch [``short`` left-padded to the length of ``long`` ; ``long``], with its
    attention mask, gives each row what decoding it alone gives."""
    pad = long.shape[1] - short.shape[1]
    batch = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.long), short], dim=1), long])
    mask = torch.ones_like(batch)
    mask[0, :pad] = 0
    together = greedy(model, batch, attention_mask=mask, new_tokens=new_tokens)
    assert torch.equal(together[0:1], greedy(model, short, new_tokens=new_tokens))
    assert torch.equal(together[1:2], greedy(model, long, new_tokens=new_tokens))


def energy_source_here(device: str = "cpu") -> str | None:
    """The energy source a window on `device` gets on this machine (nvml, rapl, or the estimate): the labelling rule
    the tests assert, so they hold where a machine has RAPL or NVML too."""
    from efficientllm.measure.energy import select_energy_counter

    counter = select_energy_counter(torch.device(device), watts_per_core=4.0)
    return counter.source if counter is not None else None

