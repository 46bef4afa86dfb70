"""Compute: PCU (the paper's peak compute utilisation), the device's measured peak FLOP/s, and MFU.

PCU = (1/T) * integral of util(t) / peak dt (EfficientLLM section 5.1). On a CUDA GPU util(t) is
NVML's utilisation rate: the share of time any kernel was running, which says nothing of how well
the kernel used the chip. On the CPU it is this process's CPU time / (wall time x threads). MFU =
achieved FLOP/s / peak FLOP/s is the honest figure on both, and the peak is *measured* here by
timing large square matmuls, never a datasheet constant.

    python -c "from efficientllm.measure.compute import measure_peak_flops; print(measure_peak_flops('auto'))"
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pynvml
import torch

from ..records import atomic_write_text
from .device import NvmlGauge, device_name, nvml_handle, resolve_device, synchronize
from .timing import Clock, GaugeSampler, time_weighted_mean


class NvmlUtilizationSensor(NvmlGauge):
    """NVML GPU utilisation rate (percent of the last sample period with a kernel running), total 100."""

    def _read(self) -> tuple[float, float]:
        return float(pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu), 100.0


class UtilizationTracker:
    """PCU over a window: `with UtilizationTracker(device): ...` then `.pcu_ratio`, `.source`.

    CPU (`cpu_time`): (user + system CPU seconds of this process) / (wall seconds x `threads`),
    clamped to [0, 1]. `threads` defaults to torch's intra-op thread count, the cores the work was
    given. CPU time counts every thread of this process (the samplers' too, which is negligible) but
    not child processes such as DataLoader workers.

    CUDA (`nvml`): time-weighted mean of NVML utilisation / 100, sampled every `interval_s` on its
    own thread. Without NVML on a CUDA device the ratio is None (the CPU formula would describe the
    host, not the GPU).

    On every device it also measures how busy the rest of the machine was: `other_cpu_cores`, the CPU
    seconds every other process used during the window (the machine's busy time from `system_busy`,
    minus this process's) per wall second, in cores. 0 means the machine was ours; on a 2-core machine
    running 2 threads, 1.0 means another job took half of it, and a timing from that window says more
    about the other job than about the cell (the report's one-trial timing tests refuse it).
    """

    def __init__(
        self,
        device: torch.device | None = None,
        interval_s: float | None = 0.05,
        threads: int | None = None,
        cpu_time: Clock = time.process_time,
        clock: Clock = time.perf_counter,
        sensor: Any | None = None,
        system_busy: Clock | None = None,
    ) -> None:
        device = device if device is not None else torch.device("cpu")
        self.cpu_time = cpu_time
        self.clock = clock
        self.system_busy = system_busy or system_busy_s
        self.other_cpu_cores: float | None = None
        self.threads = threads
        self.sampler: GaugeSampler | None = None
        if sensor is None and device.type == "cuda":
            handle = nvml_handle(device)
            sensor = NvmlUtilizationSensor(handle) if handle is not None else None
        if sensor is not None:
            self.sampler = GaugeSampler([sensor], interval_s=interval_s, clock=clock)
            self.source: str | None = sensor.source
        else:
            self.source = "cpu_time" if device.type == "cpu" else None
        self.pcu_ratio: float | None = None

    def __enter__(self) -> UtilizationTracker:
        self.pcu_ratio = None
        self.other_cpu_cores = None
        self._load0 = (time.perf_counter(), self.system_busy(), time.process_time())
        if self.sampler is not None:
            self.sampler.__enter__()
        elif self.source == "cpu_time":
            self._threads = self.threads or torch.get_num_threads()
            self._wall0, self._cpu0 = self.clock(), self.cpu_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.sampler is not None:
            self.sampler.__exit__(*exc)
            mean = time_weighted_mean(self.sampler.series[0], ratio=True)
            self.pcu_ratio = None if mean is None else max(mean, 0.0)  # NVML reports 0-100 %: no clamp needed
        elif self.source == "cpu_time":
            wall, cpu = self.clock() - self._wall0, self.cpu_time() - self._cpu0
            self.pcu_ratio = cpu_utilization(cpu, wall, self._threads)
        wall0, busy0, own0 = self._load0
        self.other_cpu_cores = other_cpu_cores(self.system_busy() - busy0, time.process_time() - own0,
                                               time.perf_counter() - wall0)

    @property
    def result(self) -> dict[str, Any]:
        return {"pcu_ratio": self.pcu_ratio, "pcu_source": self.source if self.pcu_ratio is not None else None,
                "other_cpu_cores": self.other_cpu_cores}


def system_busy_s() -> float:
    """CPU seconds the whole machine has been busy since boot, summed over its CPUs (all but idle and iowait)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def other_cpu_cores(busy_s: float, own_s: float, wall_s: float) -> float | None:
    """Cores' worth of CPU that other processes used over a window: (machine busy - own CPU) / wall, at least 0.

    None for an empty window. The kernel counts CPU time in ticks (10 ms), so a window of a few ticks reads
    coarsely; a paused window's segments are averaged by their time (`window.combine_segments`)."""
    if wall_s <= 0:
        return None
    return max(busy_s - own_s, 0.0) / wall_s


def cpu_utilization(cpu_s: float, wall_s: float, threads: int) -> float | None:
    """CPU seconds / (wall seconds x threads); None for an empty window. Not clamped: a ratio above 1 means the
    process ran more threads than the denominator counts (a wrong denominator), which the row's sanity checks
    flag instead of hiding."""
    if wall_s <= 0 or threads <= 0:
        return None
    return max(cpu_s / (wall_s * threads), 0.0)


def mfu(achieved_flops_per_s: float | None, peak: float | dict[str, Any] | None) -> float | None:
    """Model FLOPs utilisation: achieved / peak FLOP/s; None (never inf) when either is unknown.

    `peak` is a FLOP/s number or the dict `measure_peak_flops` returns. Not clamped: an MFU above 1
    means the FLOP count or the peak is wrong, and that should show.
    """
    if isinstance(peak, dict):
        peak = peak.get("peak_flops_per_s")
    if achieved_flops_per_s is None or peak is None:
        return None
    value = achieved_flops_per_s / peak if peak > 0 else math.inf
    return value if math.isfinite(value) else None


def default_cache_path() -> Path:
    """$EFFICIENTLLM_CACHE_DIR, else $XDG_CACHE_HOME/efficientllm, else ~/.cache/efficientllm; + peak_flops.json."""
    root = os.environ.get("EFFICIENTLLM_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "efficientllm")
    return Path(root) / "peak_flops.json"


def _dtype_name(dtype: torch.dtype | str) -> str:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"peak FLOP/s is calibrated for floating-point compute dtypes, got {dtype!r}")
    return str(dtype).removeprefix("torch.")


Calibrate = Callable[[torch.device, torch.dtype, int, int], tuple[float, int]]
"""(device, dtype, n, repeats) -> (best seconds per timed repeat, matmuls per repeat)."""


def _timed_matmuls(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, k: int) -> float:
    synchronize(a.device)
    start = time.perf_counter()
    for _ in range(k):
        torch.mm(a, b, out=out)
    synchronize(a.device)  # a GPU matmul has only been queued until here
    return time.perf_counter() - start


def _time_matmuls(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> tuple[float, int]:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty_like(a)
    _timed_matmuls(a, b, out, 1)  # warm-up: thread pools, kernel selection, clocks
    probe = _timed_matmuls(a, b, out, 1)
    # enough matmuls per repeat for ~50 ms, so launch overhead and timer resolution vanish on a GPU
    k = max(1, math.ceil(0.05 / probe)) if probe > 0 else 1
    best = min(_timed_matmuls(a, b, out, k) for _ in range(repeats))
    del a, b, out
    if device.type == "cuda":
        torch.cuda.empty_cache()  # else the allocator keeps the operands reserved, and NVML's AMU counts them
    return best, k


def measure_peak_flops(
    device: torch.device | str,
    dtype: torch.dtype | str = torch.float32,
    n: int | None = None,
    repeats: int = 5,
    cache_path: str | os.PathLike | None = None,
    refresh: bool = False,
    calibrate: Calibrate | None = None,
) -> dict[str, Any]:
    """Peak FLOP/s of `device` at `dtype`, measured: best of `repeats` timed runs of n x n matmuls (2 n^3 FLOPs each).

    After a warm-up matmul, each repeat runs enough matmuls for ~50 ms between two device syncs.
    n defaults to 2048 on the CPU (about 1 s in all on 2 cores) and 8192 on a GPU (large enough to
    reach tensor-core peak). The result is cached in a JSON file (`default_cache_path()` unless
    `cache_path` is given) keyed by device name, dtype, n, torch version, threads and float32 matmul
    precision, so it runs once per device; `refresh=True` measures again. Calibrate outside the
    measured window: it loads the device fully. Returns peak_flops_per_s, method, n, dtype,
    device_name, threads, torch_version, cached.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    dtype_name = _dtype_name(dtype)
    if n is None:
        n = 8192 if device.type == "cuda" else 2048
    name = device_name(device)
    threads = torch.get_num_threads() if device.type == "cpu" else None
    key = "|".join(
        [
            name,
            dtype_name,
            f"n={n}",
            f"torch={torch.__version__}",
            f"threads={threads}",
            f"fp32_precision={torch.get_float32_matmul_precision()}",
        ]
    )
    path = Path(cache_path) if cache_path is not None else default_cache_path()
    cache = _read_cache(path)
    if not refresh and isinstance(cache.get(key), dict) and cache[key].get("peak_flops_per_s"):
        return {**cache[key], "cached": True}

    seconds, per_repeat = (calibrate or _time_matmuls)(device, getattr(torch, dtype_name), n, repeats)
    entry = {
        "peak_flops_per_s": 2 * n**3 * per_repeat / seconds,
        "method": "matmul_calibration",
        "n": n,
        "dtype": dtype_name,
        "device_name": name,
        "threads": threads,
        "torch_version": torch.__version__,
    }
    cache[key] = entry
    _write_cache(path, cache)
    return {**entry, "cached": False}


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, cache: dict[str, Any]) -> None:
    try:
        atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # an unwritable cache only costs a re-calibration next time
