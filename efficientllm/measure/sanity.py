"""Sanity checks on every row: numbers that physics forbids are flagged, never silently reported.

A row is checked against this machine's measured ceilings (never datasheet guesses):

- `flops`: the achieved FLOP/s (analytic FLOPs of the measured work / window time) <= the measured peak
  (`measure_peak_flops`): MFU <= 1;
- `bandwidth` (inference): the bytes one decode step must read (the weights, plus the KV cache of every sequence)
  / TPOT <= the measured memory bandwidth (`measure_bandwidth`, a STREAM-like copy of a buffer far larger than
  the caches, cached per device like the FLOP peak). Skipped for a model small enough to live in the caches
  (`CACHE_RESIDENT_BYTES`), whose reads never reach memory;
- `utilisation`: PCU <= 1 (CPU time over threads x wall; above 1 the denominator is wrong);
- `power`: the mean power <= the device's limit (NVML's enforced power limit on a GPU; the estimate's own ceiling,
  busy cores x watts per core, on a CPU; none known for RAPL).

`check_row(row, ceilings)` returns `{"ok": bool, "violations": [...], "checks": {name: {value, bound, ok}}}`, which
the measured-cell lifecycle (stages/cells.py) stores as `extra.sanity` of every ok row; the report lists the rows
that break a bound.

    python -c "from efficientllm.measure.sanity import measure_bandwidth; print(measure_bandwidth('cpu'))"
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .device import device_name, nvml_handle, resolve_device, synchronize

CACHE_RESIDENT_BYTES = 64 * 2**20
"""Below this many bytes read per decode step the data can stay in the caches: the bandwidth bound is skipped."""
COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 2 * 2**30}
"""Bytes of the buffer the bandwidth calibration copies: far beyond any cache of the device."""


@dataclass(frozen=True)
class Ceilings:
    """What this machine can do, measured: the bounds a row's implied figures must respect."""

    peak_flops_per_s: float | None = None
    bandwidth_bytes_per_s: float | None = None
    power_limit_w: float | None = None


def measure_bandwidth(device: torch.device | str, cache_path: str | os.PathLike | None = None,
                      repeats: int = 5) -> dict[str, Any]:
    """Memory bandwidth of `device`, measured: the best of `repeats` copies of a COPY_BYTES buffer, counting the
    bytes read and written (2 x size / time), cached by device name, size and torch version."""
    device = resolve_device(device) if isinstance(device, str) else device
    size = COPY_BYTES.get(device.type, COPY_BYTES["cpu"])
    threads = torch.get_num_threads() if device.type == "cpu" else None
    key = f"{device_name(device)}|copy={size}|torch={torch.__version__}|threads={threads}"
    path = Path(cache_path) if cache_path is not None else Path(".cache/efficientllm/bandwidth.json")
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache, dict) and isinstance(cache.get(key), dict):
        return {**cache[key], "cached": True}
    src = torch.empty(size // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: pages touched, kernels loaded
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    entry = {"bandwidth_bytes_per_s": 2 * size / best, "method": "copy", "bytes": size,
             "device_name": device_name(device), "threads": threads, "torch_version": torch.__version__}
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    from efficientllm.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(cache, indent=1) + "\n")
    return {**entry, "cached": False}


def power_limit_w(device: torch.device) -> float | None:
    """The device's power ceiling: NVML's enforced limit on a GPU; None elsewhere (no limit is known for RAPL, and
    the CPU estimate is CPU time x watts per core, bounded by the utilisation check)."""
    handle = nvml_handle(device) if device.type == "cuda" else None
    if handle is None:
        return None
    import pynvml

    try:
        return pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0  # milliwatts
    except pynvml.NVMLError:
        return None


def ceilings_for(row: dict[str, Any]) -> Ceilings:
    """The measured ceilings of the device a row ran on (the bandwidth calibration is cached)."""
    device = torch.device(row["device"]) if row.get("device") else None
    if device is None or device.type not in ("cpu", "cuda"):
        return Ceilings(row.get("peak_flops_per_s"))
    count = row.get("device_count") or 1
    bandwidth = measure_bandwidth(device)["bandwidth_bytes_per_s"] if row.get("tpot_s_p50") else None
    limit = power_limit_w(device)
    return Ceilings(row.get("peak_flops_per_s"), bandwidth, None if limit is None else limit * count)


def _check(value: float | None, bound: float | None, margin: float = 1.0) -> dict[str, Any] | None:
    if value is None or bound is None:
        return None
    return {"value": value, "bound": bound, "ok": bool(value <= bound * margin)}


def decode_read_bytes(row: dict[str, Any]) -> float | None:
    """Bytes one decode step must read: the weights, and the KV cache of every sequence at its mean length."""
    weights = row.get("model_size_bytes")
    if weights is None:
        return None
    kv = row.get("kv_cache_bytes_per_token") or 0.0
    context = (row.get("seq_len") or 0) + ((row.get("extra") or {}).get("max_new_tokens") or 0) / 2
    return float(weights + kv * context * (row.get("batch_size") or 1))


def check_row(row: dict[str, Any], ceilings: Ceilings) -> dict[str, Any]:
    """The sanity checks of one row (module docstring); `ok` is False when any bound is broken."""
    checks: dict[str, dict[str, Any] | None] = {
        "flops": _check(row.get("achieved_flops_per_s"), ceilings.peak_flops_per_s),
        "mfu": _check(row.get("mfu"), 1.0),
        "utilisation": _check(row.get("pcu_ratio"), 1.0),
        "power": _check(row.get("aec_w"), ceilings.power_limit_w),
    }
    read = decode_read_bytes(row) if row.get("tpot_s_p50") else None
    if read is not None and read >= CACHE_RESIDENT_BYTES:
        checks["bandwidth"] = _check(read / row["tpot_s_p50"], ceilings.bandwidth_bytes_per_s)
    elif read is not None:
        checks["bandwidth"] = {"value": read / row["tpot_s_p50"], "bound": None, "ok": True,
                               "note": f"{read / 2**20:.1f} MiB per step can stay in the caches: no bound"}
    done = {k: v for k, v in checks.items() if v is not None}
    violations = [f"{k}: {v['value']:.4g} > {v['bound']:.4g}" for k, v in done.items() if not v["ok"]]
    return {"ok": not violations, "violations": violations, "checks": done}
