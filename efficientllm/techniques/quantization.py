"""Precisions of the quantization axis: a registry from slug to the function that loads a saved model at that precision.

`PRECISIONS[slug](model_ref, device, cfg)` loads a `save_pretrained` directory (or a hub id) with transformers'
`from_pretrained` and returns a `LoadedModel`:

- `fp32`, `bf16`, `fp16`: every weight in that float dtype. bf16 is the reference cell of MCR.
- `int8`: bitsandbytes LLM.int8 (`BitsAndBytesConfig(load_in_8bit=True)`): int8 weights with one fp32 scale per
  output row; activation columns above `int8_threshold` go through an fp16 matmul (the outlier decomposition).
- `int4`: bitsandbytes NF4 (4-bit NormalFloat, QLoRA's data type), one absmax per block of 64 weights, optionally
  quantized again (double quantization); matmuls run in `compute_dtype_4bit`.
- `fp4`: the same with bitsandbytes' 4-bit float instead of NF4.

What moves: weight bytes (`weight_bytes`, measured over every tensor the model holds, quantization constants
included) and with them memory, decode speed and quality. bitsandbytes quantizes the linear layers of the decoder
blocks only; embeddings, norms and the LM head stay in `unquantized_dtype` (bf16 by default, as in the reference
cell, so the measured bytes compare like with like). On a tiny model those dominate, which is why the row carries
the nominal size (bits x parameters, as the paper computed MCR) next to the measured one.

Importing `efficientllm.models` registers our decoder with transformers' Auto classes, and bitsandbytes needs
nothing else from it: transformers swaps every `nn.Linear` it finds. On the CPU, bitsandbytes 0.50 repacks 4-bit
weights for a fused AVX512-BF16 kernel on the first inference forward, and that kernel only takes layers whose
output width is a multiple of 32 and input width a multiple of the block size; `fit_cpu_4bit_kernel` sends the
other layers (e.g. SwiGLU's 172-wide projections of the default model) to bitsandbytes' generic dequantize-then-
matmul path and says how many it sent.

A precision the device cannot run at all is `PrecisionUnsupported` (a `skipped` row with the reason): `probe`
runs one tiny matmul (float dtypes) or one tiny bitsandbytes layer on the device first, so "this device has no
such kernel" is told apart from "this model failed".

    python -c "from efficientllm.techniques.quantization import PRECISIONS; print(sorted(PRECISIONS))"
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from efficientllm.config import QuantizeConfig
from efficientllm.measure import synchronize

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""Names used in params for float dtypes."""

NOMINAL_BITS: dict[str, float] = {"fp32": 32, "bf16": 16, "fp16": 16, "int8": 8, "int4": 4, "fp4": 4}
"""Bits per weight of each precision as the paper counts them (quantization constants not included)."""

REFERENCE_PRECISION = "bf16"
"""The cell every MCR and the quality gate compare against (the paper's baseline)."""


class PrecisionUnsupported(RuntimeError):
    """The device or its backend cannot run this precision at all; the cell becomes a `skipped` row."""


@dataclass
class LoadedModel:
    """A model loaded at one precision, with what the row needs to know about how."""

    model: nn.Module
    precision: str
    """Registry slug."""
    dtype: str
    """Row `dtype` label: float32 | bfloat16 | float16 | int8 | nf4 | fp4."""
    nominal_bits: float
    """Bits per weight as the paper counts them."""
    activation_dtype: torch.dtype
    """dtype of the hidden states and the KV cache."""
    load_s: float
    """Seconds spent in from_pretrained (quantization included), device synchronised."""
    details: dict[str, Any] = field(default_factory=dict)
    """Backend settings and anything the loader had to adapt (goes into the row's `extra`)."""


Loader = Callable[[str | Path, torch.device, QuantizeConfig], LoadedModel]


# ----------------------------------------------------------------------------- capability probes


def probe_dtype(device: torch.device, dtype: torch.dtype) -> None:
    """Raise PrecisionUnsupported unless `device` runs a matmul in `dtype` natively and gets finite numbers."""
    native_bf16 = device.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=False)
    if dtype == torch.bfloat16 and not native_bf16:
        raise PrecisionUnsupported(f"{torch.cuda.get_device_name(device)} has no native bfloat16 support")
    try:
        a = torch.full((16, 16), 0.5, dtype=dtype, device=device)
        out = a @ a
        synchronize(device)
        ok = bool(torch.isfinite(out.float()).all())
    except (RuntimeError, NotImplementedError, TypeError) as e:
        raise PrecisionUnsupported(f"{dtype} matmul on {device}: {type(e).__name__}: {e}") from e
    if not ok:
        raise PrecisionUnsupported(f"{dtype} matmul on {device} gives non-finite values")


def probe_bitsandbytes(device: torch.device, kind: str, **layer_kwargs: Any) -> None:
    """Raise PrecisionUnsupported unless bitsandbytes can quantize and run one 64x64 layer of `kind` on `device`.

    kind: `int8` (Linear8bitLt) or `4bit` (Linear4bit; `quant_type`, `compute_dtype` in layer_kwargs).
    """
    try:
        import bitsandbytes as bnb

        if kind == "int8":
            layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False, **layer_kwargs)
        elif kind == "4bit":
            layer = bnb.nn.Linear4bit(64, 64, bias=False, **layer_kwargs)
        else:
            raise ValueError(f"unknown bitsandbytes probe kind {kind!r}")
        layer = layer.to(device)  # quantizes the weight
        with torch.no_grad():
            out = layer(torch.randn(2, 64, device=device))
        synchronize(device)
    except ImportError as e:
        raise PrecisionUnsupported(f"bitsandbytes is not importable: {e}") from e
    except (RuntimeError, NotImplementedError, AssertionError, AttributeError, TypeError) as e:
        raise PrecisionUnsupported(f"bitsandbytes {kind} on {device}: {type(e).__name__}: {e}") from e
    if not bool(torch.isfinite(out.float()).all()):
        raise PrecisionUnsupported(f"bitsandbytes {kind} on {device} gives non-finite values")


# ----------------------------------------------------------------------------- loaders


def _from_pretrained(model_ref: str | Path, device: torch.device, revision: str | None,
                     **kwargs: Any) -> tuple[nn.Module, float]:
    from transformers import AutoModelForCausalLM

    import efficientllm.models  # noqa: F401  (registers model_type "efficientlm" with the Auto classes)

    synchronize(device)
    t0 = time.perf_counter()
    # safetensors only, local folder or hub: a pickle checkpoint (pytorch_model.bin) could run code when loaded
    model = AutoModelForCausalLM.from_pretrained(str(model_ref), revision=revision, device_map={"": str(device)},
                                                 use_safetensors=True, **kwargs)
    synchronize(device)
    model.eval()
    return model, time.perf_counter() - t0


def load_float(model_ref: str | Path, device: torch.device, cfg: QuantizeConfig, *, precision: str,
               dtype: torch.dtype, revision: str | None = None) -> LoadedModel:
    """Every weight in `dtype` (fp32 / bf16 / fp16)."""
    probe_dtype(device, dtype)
    model, load_s = _from_pretrained(model_ref, device, revision, dtype=dtype)
    return LoadedModel(model, precision, str(dtype).removeprefix("torch."), NOMINAL_BITS[precision], dtype, load_s,
                       {"backend": "torch"})


class _DropInt8CastNotice(logging.Filter):
    """bitsandbytes logs 'inputs will be cast ... to float16' on *every* int8 matmul of a non-fp16 input; inside a
    timed decode loop that is thousands of log records. The fact is recorded once in the row instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will be cast from" not in record.getMessage()


def load_int8(model_ref: str | Path, device: torch.device, cfg: QuantizeConfig, *,
              revision: str | None = None) -> LoadedModel:
    """bitsandbytes LLM.int8: int8 linear weights (row-wise absmax scales) with fp16 outlier columns."""
    from transformers import BitsAndBytesConfig

    probe_bitsandbytes(device, "int8", threshold=cfg.int8_threshold)
    bnb_log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastNotice) for f in bnb_log.filters):
        bnb_log.addFilter(_DropInt8CastNotice())
    rest = DTYPES[cfg.unquantized_dtype]
    qcfg = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=cfg.int8_threshold)
    model, load_s = _from_pretrained(model_ref, device, revision, dtype=rest, quantization_config=qcfg)
    details = {"backend": "bitsandbytes", "method": "llm.int8", "int8_threshold": cfg.int8_threshold,
               "unquantized_dtype": cfg.unquantized_dtype, "quantized_layers": _count_layers(model, "Linear8bitLt"),
               "activation_cast": "int8 matmul inputs are cast to float16 by bitsandbytes"}
    return LoadedModel(model, "int8", "int8", NOMINAL_BITS["int8"], rest, load_s, details)


def load_4bit(model_ref: str | Path, device: torch.device, cfg: QuantizeConfig, *, precision: str, quant_type: str,
              revision: str | None = None) -> LoadedModel:
    """bitsandbytes 4-bit weights (`nf4` or `fp4`), blockwise absmax, matmuls in `cfg.compute_dtype_4bit`."""
    from transformers import BitsAndBytesConfig

    compute = DTYPES[cfg.compute_dtype_4bit]
    probe_dtype(device, compute)
    probe_bitsandbytes(device, "4bit", quant_type=quant_type, compute_dtype=compute)
    rest = DTYPES[cfg.unquantized_dtype]
    qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_compute_dtype=compute,
                              bnb_4bit_use_double_quant=cfg.double_quant_4bit)
    model, load_s = _from_pretrained(model_ref, device, revision, dtype=rest, quantization_config=qcfg)
    details = {"backend": "bitsandbytes", "method": quant_type, "compute_dtype": cfg.compute_dtype_4bit,
               "double_quant": cfg.double_quant_4bit, "unquantized_dtype": cfg.unquantized_dtype,
               "quantized_layers": _count_layers(model, "Linear4bit"), **fit_cpu_4bit_kernel(model)}
    return LoadedModel(model, precision, quant_type, NOMINAL_BITS[precision], rest, load_s, details)


PRECISIONS: dict[str, Loader] = {
    "fp32": functools.partial(load_float, precision="fp32", dtype=torch.float32),
    "bf16": functools.partial(load_float, precision="bf16", dtype=torch.bfloat16),
    "fp16": functools.partial(load_float, precision="fp16", dtype=torch.float16),
    "int8": load_int8,
    "int4": functools.partial(load_4bit, precision="int4", quant_type="nf4"),
    "fp4": functools.partial(load_4bit, precision="fp4", quant_type="fp4"),
}
"""Precision slug -> loader `(model_ref, device, cfg, *, revision=None) -> LoadedModel`."""


def _count_layers(model: nn.Module, class_name: str) -> int:
    return sum(1 for m in model.modules() if type(m).__name__ == class_name)


def fit_cpu_4bit_kernel(model: nn.Module, block_n: int = 32) -> dict[str, Any]:
    """Send 4-bit layers that bitsandbytes' packed CPU kernel cannot take to its generic path; returns the counts.

    bitsandbytes 0.50 repacks a Linear4bit's weight on its first CPU inference forward (when the CPU has
    AVX512-BF16) into tiles of `block_n` output rows, and reshapes the absmax per input block; a layer whose output
    width is not a multiple of 32, or input width not a multiple of the quantization block size, fails there with
    an AssertionError. Those layers keep the generic dequantize-then-matmul path, which gives the same numbers.
    """
    packed, generic = 0, []
    for name, module in model.named_modules():
        if type(module).__name__ != "Linear4bit" or not getattr(module, "support_avx512bf16_for_cpu", False):
            continue
        blocksize = getattr(getattr(module.weight, "quant_state", None), "blocksize", 64)
        if module.out_features % block_n or module.in_features % blocksize:
            module.support_avx512bf16_for_cpu = False
            generic.append(name)
        else:
            packed += 1
    return {"cpu_packed_kernel_layers": packed, "cpu_generic_kernel_layers": len(generic)}


# ----------------------------------------------------------------------------- bytes and parameters


def _quant_constants(module: nn.Module) -> Iterator[torch.Tensor]:
    """The tensors a bitsandbytes layer keeps outside its registered parameters: a 4-bit weight's absmax and code
    (and the nested level of double quantization), an int8 layer's row scales. bitsandbytes moves the int8 scales
    from the weight (`weight.SCB`) to the layer's matmul state (`state.SCB`) on the first forward, so both are
    looked at."""
    weight = getattr(module, "weight", None)
    qs = getattr(weight, "quant_state", None)
    if qs is not None:
        yield from (t for t in (getattr(qs, "absmax", None), getattr(qs, "code", None), getattr(qs, "offset", None))
                    if isinstance(t, torch.Tensor))
        state2 = getattr(qs, "state2", None)
        if state2 is not None:
            yield from (t for t in (getattr(state2, "absmax", None), getattr(state2, "code", None))
                        if isinstance(t, torch.Tensor))
    for holder in (weight, getattr(module, "state", None)):
        for name in ("SCB", "CB"):
            t = getattr(holder, name, None) if holder is not None else None
            if isinstance(t, torch.Tensor):
                yield t


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes the model's weights occupy as held: every parameter, buffer and quantization constant, each once.

    `get_memory_footprint()` counts parameters and buffers only, so it leaves out bitsandbytes' absmax / scale
    tensors (kept on the parameter or the layer's state, not registered with the module). A tensor seen before at
    the same address, size and dtype (a tied embedding and LM head, int8 `state.CB` aliasing the weight) counts
    once. Returns total, quantized (bitsandbytes layers: weights and constants) and other bytes.
    """
    seen: set[tuple[str, int, int, torch.dtype]] = set()
    quantized = other = 0

    def add(t: torch.Tensor) -> int:
        # the tensor's own bytes, not its storage's: a loader may hand out views into one big buffer
        key = (str(t.device), t.data_ptr(), t.numel(), t.dtype)
        if key in seen:
            return 0
        seen.add(key)
        return t.numel() * t.element_size()

    for module in model.modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if type(module).__name__ in ("Linear4bit", "Linear8bitLt", "LinearFP4", "LinearNF4"):
            quantized += sum(add(t) for t in own) + sum(add(t) for t in _quant_constants(module))
        else:
            other += sum(add(t) for t in own)
    return {"total": quantized + other, "quantized": quantized, "other": other}


def expected_weight_bytes(model: nn.Module) -> dict[str, Any]:
    """The bytes the weights should take, from the split of quantized and unquantized parameters and the format's
    constants; `weight_bytes` (what is actually held) is checked against it.

    - bitsandbytes 4-bit (NF4 / FP4): 4 bits per weight, plus one absmax per block of `blocksize` weights at the
      width the layer holds it: with double quantization 8 bits plus one fp32 per group of the nested blocksize
      (256) blocks (4 + 8/64 + 32/16384 = 4.127 bits per weight at blocksize 64), else fp32. On a CPU with
      AVX512-BF16, bitsandbytes repacks a layer for its fused kernel on the first forward: the double quantization
      is undone and the absmax held in bf16 (4 + 16/64 = 4.25 bits per weight), so the figure depends on when it
      is taken (the quantize cell takes both after its passes, in the layout the kernels use);
    - bitsandbytes int8 (LLM.int8): 8 bits per weight plus one fp32 scale per output row;
    - every other parameter (embeddings, norms, a head left unquantized; every parameter of a float model) at its
      dtype, a tied one once.
    Each 4-bit layer adds its lookup tables (the 4-bit code; with double quantization the nested 8-bit map and its
    offset). Buffers (e.g. rotary frequencies) are not in the expectation. Returns
    `expected_weight_bytes` and `weight_split`: parameters and expected bytes on each side, and the quantized side's
    expected bits per weight.
    """
    quantized_params = quantized_bytes = 0.0
    seen: set[int] = set()
    rest_params = rest_bytes = 0
    for module in model.modules():
        kind = type(module).__name__
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        weight = getattr(module, "weight", None)
        if kind in ("Linear4bit", "LinearFP4", "LinearNF4") and weight is not None:
            n = logical_numel(weight)
            qs = weight.quant_state
            blocks = math.ceil(n / qs.blocksize)
            tables = [qs.code, *((qs.state2.code, qs.offset) if qs.nested else ())]  # per layer, not per block
            constants = (blocks * qs.absmax.element_size() + sum(_nbytes(t) for t in tables)
                         + (4 * math.ceil(blocks / qs.state2.blocksize) if qs.nested else 0))
            quantized_params += n
            quantized_bytes += n / 2 + constants
            own = [p for p in own if p is not weight]
        elif kind == "Linear8bitLt" and weight is not None:
            quantized_params += weight.numel()
            quantized_bytes += weight.numel() + 4 * module.out_features
            own = [p for p in own if p is not weight]
        rest_params += sum(p.numel() for p in own)
        rest_bytes += sum(p.numel() * p.element_size() for p in own)
    split = {"quantized_params": int(quantized_params), "quantized_bytes": int(quantized_bytes),
             "quantized_bits_per_weight": 8 * quantized_bytes / quantized_params if quantized_params else None,
             "unquantized_params": rest_params, "unquantized_bytes": rest_bytes}
    return {"expected_weight_bytes": int(quantized_bytes) + rest_bytes, "weight_split": split}


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def logical_numel(p: torch.Tensor) -> int:
    """Elements a parameter stands for: a packed bitsandbytes 4-bit weight counts its original shape."""
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else p.numel()


def logical_param_count(model: nn.Module) -> int:
    """Parameters as the unquantized model has them (a packed 4-bit weight counts its original shape), tied once."""
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n += logical_numel(p)
    return n


def nominal_weight_bytes(n_params: int, bits: float) -> float:
    """bits / 8 x parameters: the size the paper's nominal MCR assumes."""
    return n_params * bits / 8
