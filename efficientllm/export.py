"""Export a pretrained variant to a standard architecture, so it loads with plain transformers (or vLLM, or the
llama.cpp converters) without this package.

A decoder whose components all exist in Llama (attention ``gqa``, which covers MHA, GQA and MQA; positional ``rope``;
MLP ``swiglu``) is numerically a ``LlamaForCausalLM`` with the same parameter names, so the export is a config
translation plus the same tensors. Before anything is written the exported model's logits are compared with the
source model's on a fixed random batch (``torch.testing.assert_close``): a component that silently diverged from
Llama fails the export instead of producing a wrong checkpoint. Any other variant (MLA, NSA, learned or relative
positions, MoE, ...) is refused with a message naming the component that has no standard equivalent.

    efficientllm export models/pretrain/mha exports/mha-llama --format llama
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from efficientllm.atomic import atomic_dir

LLAMA_COMPONENTS: dict[str, tuple[str, ...]] = {
    "attention": ("gqa",),  # MHA (kv heads = heads), GQA, MQA (one kv head)
    "positional": ("rope",),
    "mlp": ("swiglu",),
}
"""EfficientLMConfig component field -> the values Llama implements."""


class ExportError(ValueError):
    """The model cannot be exported to the requested format; the message says why."""


def llama_config(config: Any) -> Any:
    """The ``LlamaConfig`` equivalent to an EfficientLMConfig; ExportError naming the first non-Llama component."""
    from transformers import LlamaConfig

    if getattr(config, "model_type", None) != "efficientlm":
        raise ExportError(
            f"only EfficientLM decoders can be exported; this is model_type {config.model_type!r}, which is "
            f"already a transformers architecture (load it with AutoModelForCausalLM)"
        )
    for field, allowed in LLAMA_COMPONENTS.items():
        value = getattr(config, field)
        if value not in allowed:
            raise ExportError(
                f"{field}={value!r} has no equivalent in the standard Llama architecture (which has "
                f"{field}={' or '.join(map(repr, allowed))}); only gqa/mqa/mha attention + rope + swiglu export"
            )
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        hidden_act="silu",
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=config.tie_word_embeddings,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )


def to_llama(model: torch.nn.Module) -> torch.nn.Module:
    """A ``LlamaForCausalLM`` holding copies of ``model``'s weights (same names, same dtype), in eval mode."""
    from transformers import LlamaForCausalLM

    config = llama_config(model.config)
    dtype = next(model.parameters()).dtype
    config.dtype = dtype
    llama = LlamaForCausalLM(config).to(dtype)
    state = model.state_dict()
    missing, unexpected = llama.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"weights do not map onto Llama: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    return llama.eval()


def check_logits(source: torch.nn.Module, exported: torch.nn.Module, seq_len: int = 16, seed: int = 0) -> None:
    """Raise ExportError unless both models give the same logits (assert_close, the dtype's default tolerance)."""
    vocab = source.config.vocab_size
    seq_len = min(seq_len, source.config.max_position_embeddings)
    ids = torch.randint(0, vocab, (2, seq_len), generator=torch.Generator().manual_seed(seed))
    ids = ids.to(next(source.parameters()).device)
    was_training = source.training
    source.eval()
    with torch.no_grad():
        ours, theirs = source(input_ids=ids).logits, exported(input_ids=ids).logits
    source.train(was_training)
    try:
        torch.testing.assert_close(theirs, ours)
    except AssertionError as e:
        first = str(e).strip().splitlines()[0]
        raise ExportError(
            f"the exported model's logits differ from the source model's ({first}); nothing written"
        ) from None


def _load_source(model_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a saved EfficientLM directory; config problems fail before any weight is read."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import efficientllm.models  # noqa: F401  (registers model_type "efficientlm" with the Auto classes)

    if (model_dir / "FAILED.json").exists():
        error = json.loads((model_dir / "FAILED.json").read_text()).get("error", "")
        raise ExportError(f"{model_dir} is the marker of a failed pretraining cell, not a model: "
                          f"{error.strip().splitlines()[-1] if error.strip() else 'no error recorded'}")
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {model_dir} (expected a save_pretrained model directory)")
    llama_config(AutoConfig.from_pretrained(model_dir))  # refuses non-standard components before loading weights
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"no tokenizer in {model_dir}: {e}") from None
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return model, tokenizer


def export_llama(model_dir: str | Path, out_dir: str | Path, *, verify: bool = True) -> Path:
    """Write ``model_dir`` (an EfficientLM checkpoint) to ``out_dir`` as a plain Llama checkpoint: safetensors,
    config.json (model_type "llama"), generation config and the tokenizer. Atomic: all or nothing."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model, tokenizer = _load_source(model_dir)
    llama = to_llama(model)
    if verify:
        check_logits(model, llama)
    with atomic_dir(out_dir) as tmp:
        llama.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir


EXPORT_FORMATS: dict[str, Callable[..., Path]] = {
    "llama": export_llama,
}
"""Export format -> function(model_dir, out_dir, verify=...) -> out_dir."""


def export(model_dir: str | Path, out_dir: str | Path, fmt: str = "llama", *, verify: bool = True,
           overwrite: bool = False) -> Path:
    """Export ``model_dir`` to ``out_dir`` in format ``fmt`` (a key of EXPORT_FORMATS)."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; allowed: {sorted(EXPORT_FORMATS)}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    if out_dir.resolve() == model_dir.resolve():
        raise ExportError("OUT_DIR must differ from MODEL_DIR")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} exists and is not empty (pass --overwrite to replace it)")
    return EXPORT_FORMATS[fmt](model_dir, out_dir, verify=verify)
