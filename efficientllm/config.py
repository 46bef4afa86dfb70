"""Typed configuration: one frozen dataclass per `params.yaml` section.

The library never reads params.yaml itself; stages call `load_section(path, name)` for exactly the
sections dvc.yaml declares for them and pass the dataclasses on. Every field has a docstring under
it and, where it has one, a unit in its name. Unknown keys, missing keys, wrong types and values out
of range raise `ConfigError` naming the section, the key and what is allowed.

    python -c "from efficientllm.config import load_section; print(load_section('params.yaml', 'pretrain'))"
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class ConfigError(ValueError):
    """A params value that cannot be used; the message names section, key and what is allowed."""


def _meta(*, choices: tuple | None = None, min: float | None = None, max: float | None = None,
          min_exclusive: bool = False) -> dict:
    return {"choices": choices, "min": min, "max": max, "min_exclusive": min_exclusive}


@dataclass(frozen=True)
class MatrixConfig:
    """The DVC matrices: the cells each stage runs (a slug per cell)."""

    pretrain: tuple[str, ...] = ("mha",)
    """Pretraining recipe slugs, each defined in the `variants` section."""

    def __post_init__(self) -> None:
        for stage in ("pretrain",):
            slugs = getattr(self, stage)
            if not slugs:
                raise ConfigError(f"[matrix] {stage}: the list is empty")
            for slug in slugs:
                if not SLUG_RE.match(slug):
                    raise ConfigError(f"[matrix] {stage}: bad slug {slug!r} (lowercase letters, digits, - and _)")
            if len(set(slugs)) != len(slugs):
                raise ConfigError(f"[matrix] {stage}: duplicate slugs in {list(slugs)}")


@dataclass(frozen=True)
class PrepareConfig:
    source: str = field(default="stdlib_docs", metadata=_meta(choices=("stdlib_docs", "text_files")))
    """Corpus source slug: `stdlib_docs` (the documentation every CPython carries; offline) or `text_files`."""
    source_paths: tuple[str, ...] = ()
    """Files for the `text_files` source (.txt, or .jsonl with a `text` field)."""
    vocab_size: int = field(default=2048, metadata=_meta(min=260))
    """Byte-level BPE vocabulary size, special tokens included."""
    block_len: int = field(default=128, metadata=_meta(min=8))
    """Tokens per packed training block (the pretraining sequence length)."""
    val_fraction: float = field(default=0.05, metadata=_meta(min=0.0, max=0.5, min_exclusive=True))
    """Share of documents held out for validation perplexity."""
    min_doc_chars: int = field(default=200, metadata=_meta(min=1))
    """Documents shorter than this are dropped."""
    max_docs: int | None = field(default=None, metadata=_meta(min=2))
    """Cap on documents read from the source (None: all)."""
    seed: int = 1234
    """Seed of the train/validation split."""


@dataclass(frozen=True)
class ModelConfig:
    """The base decoder shape every pretraining variant starts from (transformers' names)."""

    hidden_size: int = field(default=64, metadata=_meta(min=1))
    """Model width d_model."""
    intermediate_size: int = field(default=172, metadata=_meta(min=1))
    """Hidden size of the MLP (SwiGLU inner width)."""
    num_hidden_layers: int = field(default=2, metadata=_meta(min=1))
    """Decoder blocks."""
    num_attention_heads: int = field(default=4, metadata=_meta(min=1))
    """Query heads."""
    num_key_value_heads: int = field(default=4, metadata=_meta(min=1))
    """Key/value heads (= query heads: MHA; 1: MQA; between: GQA)."""
    rope_theta: float = field(default=10000.0, metadata=_meta(min=0.0, min_exclusive=True))
    """RoPE base frequency."""
    tie_word_embeddings: bool = True
    """Share the input embedding and the LM head."""


@dataclass(frozen=True)
class PretrainConfig:
    device: str = "auto"
    """auto | cpu | cuda | cuda:N (auto: cuda when available)."""
    batch_size: int = field(default=8, metadata=_meta(min=1))
    """Sequences per optimizer step."""
    steps: int = field(default=60, metadata=_meta(min=1))
    """Optimizer steps (the token budget is steps x batch_size x block_len, equal for every variant)."""
    lr: float = field(default=3e-3, metadata=_meta(min=0.0, min_exclusive=True))
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = field(default=0.1, metadata=_meta(min=0.0, max=1.0))
    """Cosine schedule floor as a fraction of lr."""
    lr_warmup_steps: int = field(default=10, metadata=_meta(min=0))
    """Linear learning-rate warm-up steps."""
    weight_decay: float = field(default=0.1, metadata=_meta(min=0.0))
    """AdamW weight decay on matrices (not on norms and biases)."""
    grad_clip: float = field(default=1.0, metadata=_meta(min=0.0))
    """Gradient-norm clipping (0: off)."""
    measure_warmup_steps: int = field(default=5, metadata=_meta(min=0))
    """Steps excluded from the measured window (same shapes as the timed steps)."""
    eval_batches: int = field(default=8, metadata=_meta(min=1))
    """Validation batches for perplexity (fixed blocks, the same for every variant)."""
    seed: int = 1234
    """Seed of model init and batch order."""

    def __post_init__(self) -> None:
        if self.measure_warmup_steps >= self.steps:
            raise ConfigError(
                f"[pretrain] measure_warmup_steps={self.measure_warmup_steps} must be < steps={self.steps}"
            )


@dataclass(frozen=True)
class MeasureConfig:
    sample_interval_s: float = field(default=0.05, metadata=_meta(min=0.001))
    """Background sampling interval of memory (and GPU utilisation)."""
    cpu_watts_per_core: float = field(default=4.0, metadata=_meta(min=0.0, min_exclusive=True))
    """Power per busy core for the CPU energy *estimate* (used only without NVML or RAPL)."""
    peak_calibration_n: int | None = field(default=None, metadata=_meta(min=64))
    """Matrix size of the matmul calibration that measures peak FLOP/s (None: 2048 on CPU, 8192 on GPU)."""
    cache_dir: str = ".cache/efficientllm"
    """Where the peak-FLOP/s calibration is cached (per device, dtype, threads, torch version)."""


@dataclass(frozen=True)
class ReportConfig:
    title: str = "efficientllm report"
    """Title of reports/index.md."""


SECTIONS: dict[str, type] = {
    "matrix": MatrixConfig,
    "prepare": PrepareConfig,
    "model": ModelConfig,
    "pretrain": PretrainConfig,
    "measure": MeasureConfig,
    "report": ReportConfig,
}


# ----------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(section: str, key: str, tp: Any, value: Any) -> Any:
    """Check `value` against the annotation `tp`; returns the value converted (lists -> tuples)."""
    where = f"[{section}] {key}"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(section, key, inner[0], value)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(section, f"{key}[{i}]", item_tp, v) for i, v in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {_type_name(tp)} for {where}")


def _check_range(section: str, key: str, meta: Mapping, value: Any) -> None:
    if value is None:
        return
    where = f"[{section}] {key}"
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
        op = ">" if meta.get("min_exclusive") else ">="
        raise ConfigError(f"{where}: {value!r} must be {op} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{where}: {value!r} must be <= {hi}")


def parse_section(cls: type, section: str, raw: Any) -> Any:
    """Build the dataclass `cls` from the mapping `raw`, validating every key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{section}]: expected a mapping of keys, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"[{section}] unknown key {unknown[0]!r} (allowed: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"[{section}] missing key {name!r}")
            continue
        value = _coerce(section, name, hints[name], raw[name])
        _check_range(section, name, f.metadata, value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[{section}] {e}") from None


def read_params(path: str | Path) -> dict[str, Any]:
    """The whole params file as a mapping; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"params file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"params file {path}: expected a mapping of sections")
    return data


def load_section(path: str | Path, name: str, params: Mapping[str, Any] | None = None) -> Any:
    """Parse one section of the params file into its dataclass."""
    if name not in SECTIONS:
        raise ConfigError(f"unknown params section {name!r} (known: {', '.join(SECTIONS)})")
    params = read_params(path) if params is None else params
    if name not in params:
        raise ConfigError(f"params file {path}: missing section [{name}]")
    return parse_section(SECTIONS[name], name, params[name])


def load_variant(path: str | Path, slug: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The recipe of one pretraining variant: its overrides of the base `model` shape.

    The keys are checked against the model config by the caller (`efficientllm.pretrain.model_config`),
    which knows the registered components; here only the slug and the shape of the section are.
    """
    params = read_params(path) if params is None else params
    variants = params.get("variants")
    if not isinstance(variants, Mapping):
        raise ConfigError(f"params file {path}: missing section [variants] (a mapping slug -> recipe)")
    if slug not in variants:
        raise ConfigError(f"[variants] unknown variant {slug!r} (defined: {', '.join(variants) or 'none'})")
    recipe = variants[slug]
    if recipe is None:
        return {}
    if not isinstance(recipe, Mapping):
        raise ConfigError(f"[variants] {slug}: expected a mapping of model keys, got {recipe!r}")
    return dict(recipe)
