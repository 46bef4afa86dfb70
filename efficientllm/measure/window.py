"""One measured window: memory, utilisation, peak memory and energy together, as row columns.

The training and inference loops wrap their timed steps in a `MeasurementWindow`; on exit
`window.result` holds the paper's AMU, PCU and AEC (and peak memory, energy, window length) under
their row-schema names, each with its source. The window synchronises the device at both edges
and resets the peak-memory counter at the start (DESIGN.md, measurement rules). Warm-up steps go
before the window, on the same shapes.

    with MeasurementWindow(device, watts_per_core=4.0) as win:
        for step in range(steps):
            with timer.step():
                train_step()
    row.update(win.result)

    python -c "from efficientllm.measure.window import demo; demo()"    # one second of matmuls, measured
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from .compute import UtilizationTracker
from .device import resolve_device, synchronize
from .energy import RAPL_ROOT, EnergyMeter
from .memory import MemorySampler, RssPeak, TorchCudaPeak
from .metrics import aec_w
from .timing import Clock

WINDOW_COLUMNS = (
    "amu_bytes",
    "amu_ratio",
    "amu_source",
    "pcu_ratio",
    "pcu_source",
    "other_cpu_cores",
    "peak_mem_bytes",
    "peak_mem_source",
    "energy_j",
    "energy_source",
    "aec_w",
    "window_s",
)
"""The keys of `MeasurementWindow.result`, all of them row-schema columns."""


class MeasurementWindow:
    """Runs MemorySampler, UtilizationTracker, a peak-memory tracker and EnergyMeter over one window.

    Trackers are built (NVML / RAPL probed) in the constructor, outside the window; any of them can
    be injected instead. Peak memory: torch's allocator peak on CUDA (`torch`), the kernel's RSS
    high-water mark on the CPU (`rss`), else the sampled maximum with the sampler's source.
    `watts_per_core` is only used where neither NVML nor RAPL energy is readable (the `estimate`).
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        interval_s: float | None = 0.05,
        watts_per_core: float | None = None,
        *,
        clock: Clock = time.perf_counter,
        memory: MemorySampler | None = None,
        utilization: UtilizationTracker | None = None,
        energy: EnergyMeter | None = None,
        peak: TorchCudaPeak | RssPeak | None = None,
        sync: Callable[[], None] | None = None,
        rapl_root: str | Path = RAPL_ROOT,
    ) -> None:
        self.device = resolve_device(device)
        self.clock = clock
        self.sync = sync if sync is not None else functools.partial(synchronize, self.device)
        self.memory = memory or MemorySampler(interval_s=interval_s, clock=clock, device=self.device)
        self.utilization = utilization or UtilizationTracker(self.device, interval_s=interval_s, clock=clock)
        self.energy = energy or EnergyMeter(
            self.device, watts_per_core=watts_per_core, clock=clock, rapl_root=rapl_root
        )
        if peak is None:
            peak = TorchCudaPeak(self.device) if self.device.type == "cuda" else RssPeak()
        self.peak = peak
        self.result: dict[str, Any] = dict.fromkeys(WINDOW_COLUMNS)
        self._stack: ExitStack | None = None

    def __enter__(self) -> MeasurementWindow:
        self.result = dict.fromkeys(WINDOW_COLUMNS)
        self._segments: list[dict[str, Any]] = []
        self.paused_s = 0.0
        self._open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self._close(exc_type, exc, tb)
        self.result = combine_segments(self._segments)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the work done inside out of every window figure (e.g. a checkpoint save between steps).

        The window closes a segment (device synchronised, trackers stopped) and opens a new one afterwards; the
        result combines the segments: times and energy add up, AMU and PCU are their time-weighted means, the
        peak is the highest. `paused_s` accumulates the time left out.
        """
        assert self._stack is not None, "MeasurementWindow.paused() outside the window"
        self._close(None, None, None)
        t0 = self.clock()
        try:
            yield
        finally:
            self.paused_s += self.clock() - t0
            self._open()

    def _open(self) -> None:
        self.sync()  # work queued before the window must not land inside it
        with ExitStack() as stack:  # if one tracker fails to start, the ones already started stop
            for tracker in (self.peak, self.memory, self.utilization, self.energy):
                stack.enter_context(tracker)
            self._stack = stack.pop_all()
        self._t0 = self.clock()

    def _close(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        assert self._stack is not None, "MeasurementWindow exited without being entered"
        try:
            if exc_type is None:
                self.sync()  # the window ends when the device has finished its work
            window_s = self.clock() - self._t0
        finally:
            stack, self._stack = self._stack, None
            stack.__exit__(exc_type, exc, tb)
        self._segments.append(self._collect(window_s))

    def _collect(self, window_s: float) -> dict[str, Any]:
        peak_bytes, peak_source = self.peak.peak_bytes, self.peak.source
        sampled_peak = self.memory.peak_bytes
        if peak_bytes is None:
            peak_bytes, peak_source = sampled_peak, self.memory.source
        elif peak_source == self.memory.source and sampled_peak is not None:
            peak_bytes = max(peak_bytes, sampled_peak)
        result = {
            **self.memory.result,
            **self.utilization.result,
            "peak_mem_bytes": peak_bytes,
            "peak_mem_source": peak_source if peak_bytes is not None else None,
            "energy_j": self.energy.energy_j,
            "energy_source": self.energy.source if self.energy.energy_j is not None else None,
            "aec_w": aec_w(self.energy.energy_j, window_s),
            "window_s": window_s,
        }
        return result


def _weighted(segments: list[dict[str, Any]], key: str) -> float | None:
    values = [(s[key], s["window_s"]) for s in segments]
    if any(v is None for v, _ in values):
        return None
    total = sum(w for _, w in values)
    return sum(v * w for v, w in values) / total if total > 0 else values[0][0]


def combine_segments(segments: list[dict[str, Any]]) -> dict[str, Any]:
    """One window's columns from its segments (a window paused k times has k + 1): window_s and energy_j add up,
    AMU / PCU are time-weighted means, the peak is the highest; one segment is returned as it is."""
    if len(segments) == 1:
        return segments[0]
    first = segments[0]
    window_s = sum(s["window_s"] for s in segments)
    energies = [s["energy_j"] for s in segments]
    energy_j = None if any(e is None for e in energies) else sum(energies)
    peaks = [s["peak_mem_bytes"] for s in segments if s["peak_mem_bytes"] is not None]
    return {
        **first,
        "amu_bytes": _weighted(segments, "amu_bytes"),
        "amu_ratio": _weighted(segments, "amu_ratio"),
        "pcu_ratio": _weighted(segments, "pcu_ratio"),
        "other_cpu_cores": _weighted([s for s in segments if s["other_cpu_cores"] is not None] or segments[:1],
                                     "other_cpu_cores"),
        "peak_mem_bytes": max(peaks) if peaks else None,
        "energy_j": energy_j,
        "energy_source": first["energy_source"] if energy_j is not None else None,
        "aec_w": aec_w(energy_j, window_s),
        "window_s": window_s,
    }


def demo(seconds: float = 1.0) -> dict[str, Any]:
    """Measure `seconds` of 512 x 512 matmuls on the default device; print and return the columns."""
    import json

    from .timing import StepTimer

    device = resolve_device("auto")
    a = torch.randn(512, 512, device=device)
    timer = StepTimer(sync=functools.partial(synchronize, device))
    with MeasurementWindow(device, watts_per_core=4.0) as win:
        while sum(timer.samples) < seconds:
            with timer.step():
                a @ a
    columns = {**win.result, **timer.columns()}
    columns.pop("latency_samples_s")
    print(json.dumps(columns, indent=1))
    return columns
