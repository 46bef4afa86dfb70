"""Memory over a measured window: AMU (the paper's average memory utilisation) and peak memory.

AMU = (1/T) * integral of mem_used(t) / mem_total dt (EfficientLLM section 5.1). `MemorySampler`
reads memory gauges on a background thread and reports both the time-weighted mean bytes and the
mean ratio. Sources: `nvml` (device memory used / total on a CUDA GPU: the whole device, so one
measured cell per device) or `rss` (resident set of this process / physical RAM, on the CPU).
Peaks come from the allocator (`TorchCudaPeak`, source `torch`) or the kernel's RSS high-water mark
(`RssPeak`, source `rss`), both reset at the window start, so a peak never depends on a sample
landing on a spike.

    python -c "from efficientllm.measure import *; m = MemorySampler(); m.__enter__(); m.__exit__(); print(m.stats)"
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import pynvml
import torch

from .device import NvmlGauge, nvml_handle
from .timing import Clock, Gauge, GaugeSampler, Point, time_weighted_mean


class RssSensor:
    """Resident set size of this process; total = physical memory (psutil.virtual_memory().total).

    On Linux it reads /proc/self/statm directly (open, read, close: about half the cost of a psutil
    call, which matters on a thread that wakes 20 times a second); elsewhere, or if that fails,
    psutil's memory_info().rss, the same number.
    """

    source = "rss"

    def __init__(self, process: psutil.Process | None = None, statm: str | None = "/proc/self/statm") -> None:
        self._process = process or psutil.Process()
        self._total = float(psutil.virtual_memory().total)
        self._statm = statm if process is None and statm and os.path.exists(statm) else None
        self._page_bytes = os.sysconf("SC_PAGE_SIZE") if self._statm else 0

    def read(self) -> tuple[float, float] | None:
        if self._statm is not None:
            try:
                fd = os.open(self._statm, os.O_RDONLY)
                try:
                    resident_pages = int(os.read(fd, 256).split()[1])  # statm: size resident shared ...
                finally:
                    os.close(fd)
                return float(resident_pages * self._page_bytes), self._total
            except (OSError, ValueError, IndexError):
                self._statm = None
        try:
            return float(self._process.memory_info().rss), self._total
        except psutil.Error:
            return None


class NvmlMemorySensor(NvmlGauge):
    """Memory used / total of one GPU as NVML reports it (all processes on the device, CUDA context included).

    Takes an NVML handle (`device.nvml_handle(device)`), not a CUDA index: the two numberings differ
    under CUDA_VISIBLE_DEVICES. A failed read (pynvml.NVMLError) skips that reading.
    """

    def _read(self) -> tuple[float, float]:
        info = pynvml.nvmlDeviceGetMemoryInfo(self.handle)
        return float(info.used), float(info.total)


def memory_sensors(device: torch.device) -> list[Gauge]:
    """NVML device memory then host RSS on a CUDA device (when NVML can see it); host RSS alone otherwise."""
    handle = nvml_handle(device)
    if handle is not None:
        return [NvmlMemorySensor(handle), RssSensor()]
    return [RssSensor()]


def memory_stats(points: Sequence[Point]) -> dict[str, float | None]:
    """amu_bytes (time-weighted mean used), amu_ratio (time-weighted mean used/total), peak_bytes (max reading)."""
    return {
        "amu_bytes": time_weighted_mean(points),
        "amu_ratio": time_weighted_mean(points, ratio=True),
        "peak_bytes": max((p[1] for p in points), default=None),
    }


class MemorySampler(GaugeSampler):
    """Samples memory gauges over a window (at enter, every `interval_s`, at exit).

    `sensors` default to `memory_sensors(device)`. The results (`amu_bytes`, `amu_ratio`,
    `peak_bytes`, `source`) come from the first sensor that produced readings, so a GPU whose NVML
    reads all fail reports host RSS, labelled `rss`, rather than nothing. `series` keeps every reading.
    """

    def __init__(
        self,
        interval_s: float | None = 0.05,
        sensors: Sequence[Gauge] | None = None,
        clock: Clock = time.perf_counter,
        device: torch.device | None = None,
    ) -> None:
        if sensors is None:
            sensors = memory_sensors(device if device is not None else torch.device("cpu"))
        super().__init__(sensors, interval_s=interval_s, clock=clock)

    @property
    def samples(self) -> list[Point]:
        """Raw readings (time s, used bytes, total bytes) of the reporting sensor."""
        i = self.first_with_data()
        return [] if i is None else self.series[i]

    @property
    def source(self) -> str | None:
        i = self.first_with_data()
        return None if i is None else self.gauges[i].source

    @property
    def stats(self) -> dict[str, float | None]:
        return memory_stats(self.samples)

    @property
    def amu_bytes(self) -> float | None:
        return self.stats["amu_bytes"]

    @property
    def amu_ratio(self) -> float | None:
        return self.stats["amu_ratio"]

    @property
    def peak_bytes(self) -> float | None:
        return self.stats["peak_bytes"]

    @property
    def result(self) -> dict[str, Any]:
        s = self.stats
        return {"amu_bytes": s["amu_bytes"], "amu_ratio": s["amu_ratio"], "amu_source": self.source}


class TorchCudaPeak:
    """Peak bytes allocated by torch's CUDA caching allocator in the window (source `torch`).

    Resets the allocator's peak counter at enter and reads max_memory_allocated at exit. This counts
    tensors, not the allocator's cached-but-free blocks or the CUDA context (NVML sees those).
    """

    source = "torch"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes: float | None = None

    def __enter__(self) -> TorchCudaPeak:
        self.peak_bytes = None
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_bytes = float(torch.cuda.max_memory_allocated(self.device))


_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)


class RssPeak:
    """Peak resident set of this process in the window, from the kernel's high-water mark (source `rss`).

    Linux keeps VmHWM in /proc/self/status and resets it when "5" is written to /proc/self/clear_refs
    (kernel >= 4.0), so the peak is exact, not sampled. Where the reset is not allowed or there is no
    /proc, `peak_bytes` stays None and the caller falls back to the sampled maximum.
    """

    source = "rss"

    def __init__(self, proc_self: str | Path = "/proc/self") -> None:
        self.proc_self = Path(proc_self)
        self.peak_bytes: float | None = None
        self._reset = False

    def __enter__(self) -> RssPeak:
        self.peak_bytes = None
        try:
            (self.proc_self / "clear_refs").write_text("5")
            self._reset = True
        except OSError:
            self._reset = False
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._reset:
            return
        try:
            match = _HWM.search((self.proc_self / "status").read_text())
        except OSError:
            match = None
        self.peak_bytes = float(match.group(1)) * 1024 if match else None
