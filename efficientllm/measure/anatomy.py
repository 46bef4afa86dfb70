"""Memory anatomy: where a cell's bytes go, counted tensor by tensor, the same way on every device.

AMU and peak memory say how much the process (CPU: its resident set) or the device (GPU) held. On a CPU that is
mostly the runtime: the imported libraries alone hold ~0.5 GB beside a 1 MB model, so "which variant uses less
memory" cannot be read from RSS. Anatomy counts the tensors themselves:

- `mem_weights_bytes`: parameters and buffers (each storage once: tied weights, quantized packs and their
  constants included);
- `mem_grads_bytes`: the gradients a training step holds (one per trained parameter, its dtype and shape);
- `mem_optimizer_bytes`: the optimizer's state tensors (AdamW: two moments per trained parameter);
- `mem_activations_bytes`: the tensors one micro-batch's forward saves for its backward (a saved-tensors hook
  counts them, parameters excluded: they are weights);
- `mem_kv_cache_bytes`: the KV cache of one inference request at its full length, from the cache's tensors;
- `mem_other_bytes`: the measured peak (allocator peak on CUDA, RSS growth above the process before the model
  was built on the CPU) minus the parts above: workspace, allocator slack, temporaries. It can be negative on the
  CPU, where pages of the counted tensors may be shared or not yet resident.

    python -c "import torch; from efficientllm.measure.anatomy import saved_activation_bytes as s; \\
        m = torch.nn.Linear(64, 64); print(s(lambda: m(torch.randn(8, 64)).sum(), m))"
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

ANATOMY_COLUMNS = ("mem_weights_bytes", "mem_grads_bytes", "mem_optimizer_bytes", "mem_activations_bytes",
                   "mem_kv_cache_bytes", "mem_other_bytes")
"""The row columns of a memory anatomy (bytes); the parts a cell does not have are 0, the unknown ones None."""


def _local(t: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP2 DTensor) tensor's local shard: the bytes this rank holds."""
    return t.to_local() if hasattr(t, "to_local") else t


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    t = _local(t)
    try:
        return str(t.device), t.untyped_storage().data_ptr()
    except RuntimeError:  # a storage with no data pointer (freed, or a wrapper): count the tensor by itself
        return str(t.device), id(t)


def _nbytes(t: torch.Tensor) -> int:
    t = _local(t)
    try:
        return t.untyped_storage().nbytes()
    except RuntimeError:
        return t.numel() * t.element_size()


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views and tied tensors once; a sharded tensor's local
    shard)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            seen.setdefault(_storage_key(t), _nbytes(t))
    return sum(seen.values())


def weight_bytes(model: nn.Module) -> int:
    """Parameters and buffers of `model`, each storage once."""
    return storage_bytes([*model.parameters(), *model.buffers()])


def grad_bytes(model: nn.Module) -> int:
    """The gradients a training step holds: one per trained parameter, of its dtype and (local) shape."""
    return sum(_local(p).numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """The optimizer's state tensors (after a step: AdamW's moments), each storage once."""
    return storage_bytes(v for state in optimizer.state.values() for v in state.values()
                         if isinstance(v, torch.Tensor))


def saved_activation_bytes(forward: Callable[[], Any], model: nn.Module) -> int:
    """Bytes of the tensors `forward()` saves for the backward, the model's own weights excluded.

    Runs `forward` once with gradients enabled and a saved-tensors hook that notes every saved tensor; the graph
    is dropped without a backward, and the torch RNG state is restored, so nothing of the run changes.
    """
    weights = {_storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if _storage_key(t) not in weights:
            saved.append(t)
        return t

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = forward()
        del out
    return storage_bytes(saved)


def _tensors_in(obj: Any, seen: set[int], depth: int = 0) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth > 6 or id(obj) in seen or isinstance(obj, str | bytes | int | float | bool | type(None)):
        return
    else:
        seen.add(id(obj))
        if isinstance(obj, dict):
            items: Iterable[Any] = obj.values()
        elif isinstance(obj, list | tuple | set):
            items = obj
        else:
            items = vars(obj).values() if hasattr(obj, "__dict__") else ()
        for item in items:
            yield from _tensors_in(item, seen, depth + 1)


def cache_bytes(cache: Any) -> int:
    """Bytes of every tensor a KV cache object holds (transformers' Cache classes, our latent / compressed caches,
    legacy tuples), each storage once."""
    return storage_bytes(_tensors_in(cache, set()))


def training_anatomy(model: nn.Module, optimizer: torch.optim.Optimizer,
                     activations: int | None) -> dict[str, int | None]:
    """The anatomy of a training step (no KV cache); `mem_other_bytes` is filled in against the measured peak."""
    return {"mem_weights_bytes": weight_bytes(model), "mem_grads_bytes": grad_bytes(model),
            "mem_optimizer_bytes": optimizer_bytes(optimizer), "mem_activations_bytes": activations,
            "mem_kv_cache_bytes": 0, "mem_other_bytes": None}


def with_rest(parts: dict[str, int | None], peak_bytes: float | None) -> dict[str, Any]:
    """`parts` with `mem_other_bytes` = the measured peak minus the counted parts (None when either is unknown)."""
    counted = [v for k, v in parts.items() if k != "mem_other_bytes"]
    known = peak_bytes is not None and all(v is not None for v in counted)
    return {**parts, "mem_other_bytes": float(peak_bytes - sum(counted)) if known else None}


def above_baseline(window: dict[str, Any], baseline_bytes: float | None) -> dict[str, Any]:
    """A window's columns with a CPU RSS peak taken above `baseline_bytes` (the process's RSS before the cell built
    its model): what the cell added, not the ~0.5 GB runtime. Source `rss_delta`; other peaks unchanged."""
    if window.get("peak_mem_source") != "rss" or baseline_bytes is None or window.get("peak_mem_bytes") is None:
        return window
    return {**window, "peak_mem_bytes": max(0.0, window["peak_mem_bytes"] - baseline_bytes),
            "peak_mem_source": "rss_delta"}
