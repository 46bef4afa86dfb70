"""Energy over a measured window: joules and AEC (the paper's average energy consumption, J / s = W).

AEC = E_total / T (EfficientLLM section 5.1). `EnergyMeter` reads a cumulative energy counter at
the window edges and picks the best counter the machine has, labelling every figure with it:
  - `nvml`: the GPU's total-energy counter (mJ since driver load; Volta and newer), CUDA devices;
  - `rapl`: Intel/AMD RAPL package counters in /sys/class/powercap (CPU packages, DRAM excluded);
  - `estimate`: this process's CPU seconds x a user-set watts per core. A model, not a measurement.
NVML or sysfs failures fall through to the next counter, or to None, never to a crash.

    python -c "from efficientllm.measure.energy import *; print(type(select_energy_counter(None, 4.0)).__name__)"
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import pynvml
import torch

from .device import nvml_handle
from .timing import Clock

RAPL_ROOT = Path("/sys/class/powercap")


class EnergyCounter(Protocol):
    """A cumulative energy reading in joules from an arbitrary origin; only differences mean anything."""

    source: str

    def read_j(self) -> float: ...


class NvmlEnergy:
    """GPU energy from nvmlDeviceGetTotalEnergyConsumption (mJ). Reads once at construction, so an
    unsupported GPU (pre-Volta, MIG instance) raises pynvml.NVMLError there, not mid-window."""

    source = "nvml"
    min_window_s = 1.0
    """The counter is refreshed about every 100 ms: a window shorter than ~10 refreshes is too coarse."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.read_j()

    def read_j(self) -> float:
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3


class RaplUnavailable(OSError):
    """No readable RAPL package domain (no powercap class, or energy_uj readable only by root)."""


_PACKAGE_DIR = re.compile(r"^intel-rapl:\d+$")


class RaplEnergy:
    """Sum of the RAPL package domains (`<root>/intel-rapl:N/energy_uj`, microjoules).

    Each counter wraps to 0 after `max_energy_range_uj`; a reading below the previous one is taken
    as one wrap. Two wraps between readings would be missed, so `EnergyMeter` re-reads RAPL every
    `poll_interval_s` (a wrap takes ~10 min even at 400 W for the usual 262 kJ range). Sub-domains
    (core, uncore, dram: `intel-rapl:N:M`) are excluded: they are inside the package or not on
    every platform, and `psys` domains overlap the packages. `root` is injectable for tests.
    """

    source = "rapl"
    needs_polling = True
    min_window_s = 0.1
    """RAPL updates about every millisecond, but reads jitter by a few: a window under ~0.1 s is too short."""

    def __init__(self, root: str | Path = RAPL_ROOT) -> None:
        root = Path(root)
        self._domains: list[tuple[Path, int]] = []
        try:
            candidates = sorted(p for p in root.iterdir() if _PACKAGE_DIR.match(p.name))
        except OSError as e:
            raise RaplUnavailable(f"no RAPL powercap class at {root}: {e}") from None
        for domain in candidates:
            name_file = domain / "name"
            if name_file.exists() and not name_file.read_text().strip().startswith("package"):
                continue
            try:
                max_range = int((domain / "max_energy_range_uj").read_text())
                int((domain / "energy_uj").read_text())
            except (OSError, ValueError):
                continue
            self._domains.append((domain / "energy_uj", max_range))
        if not self._domains:
            raise RaplUnavailable(f"no readable RAPL package domain under {root}")
        self._last = [self._raw(path) for path, _ in self._domains]
        self._total_uj = 0

    @staticmethod
    def _raw(path: Path) -> int:
        return int(path.read_text())

    def read_j(self) -> float:
        for i, (path, max_range) in enumerate(self._domains):
            raw = self._raw(path)
            delta = raw - self._last[i]
            if delta < 0:  # the counter wrapped past max_energy_range_uj back to 0
                delta += max_range
            self._total_uj += delta
            self._last[i] = raw
        return self._total_uj / 1e6


class EstimateEnergy:
    """Estimated CPU energy: this process's CPU seconds (user + system, all threads) x `watts_per_core`.

    Assumes each core-second of work draws `watts_per_core` joules, and nothing else does: no idle or
    uncore power, no DRAM, no GPU, no other processes, no frequency scaling. Use it to compare cells
    on one machine, not as a measured wattage; rows carry the label `estimate`.
    """

    source = "estimate"
    min_window_s = 0.1
    """Process CPU time advances in scheduler ticks (~10 ms): a window under ~0.1 s is too coarse."""

    def __init__(self, watts_per_core: float, cpu_time: Clock = time.process_time) -> None:
        if watts_per_core <= 0:
            raise ValueError(f"watts_per_core must be > 0, got {watts_per_core}")
        self.watts_per_core = float(watts_per_core)
        self.cpu_time = cpu_time

    def read_j(self) -> float:
        return self.cpu_time() * self.watts_per_core


def select_energy_counter(
    device: torch.device | None,
    watts_per_core: float | None = None,
    rapl_root: str | Path = RAPL_ROOT,
) -> EnergyCounter | None:
    """NVML on a CUDA device where it works, else RAPL where readable, else the estimate, else None
    (no `watts_per_core` given)."""
    if device is not None and device.type == "cuda":
        handle = nvml_handle(device)
        if handle is not None:
            try:
                return NvmlEnergy(handle)
            except pynvml.NVMLError:
                pass
    try:
        return RaplEnergy(rapl_root)
    except RaplUnavailable:
        pass
    if watts_per_core is not None:
        return EstimateEnergy(watts_per_core)
    return None


class EnergyMeter:
    """Energy of a window: `with EnergyMeter(device, watts_per_core=...) as m: ...` then `m.energy_j`, `m.aec_w`.

    `counter` defaults to `select_energy_counter(...)`. A read that fails (NVML error, vanished sysfs
    file) leaves `energy_j` None rather than raising.
    """

    def __init__(
        self,
        device: torch.device | None = None,
        watts_per_core: float | None = None,
        counter: EnergyCounter | None = None,
        clock: Clock = time.perf_counter,
        rapl_root: str | Path = RAPL_ROOT,
        poll_interval_s: float = 10.0,
    ) -> None:
        self.counter = counter if counter is not None else select_energy_counter(device, watts_per_core, rapl_root)
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.energy_j: float | None = None
        self.window_s: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def source(self) -> str | None:
        return self.counter.source if self.counter is not None else None

    def _read(self) -> float | None:
        if self.counter is None:
            return None
        try:
            return self.counter.read_j()
        except (pynvml.NVMLError, OSError, ValueError):
            return None

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            self._read()

    def __enter__(self) -> EnergyMeter:
        self.energy_j = self.window_s = None
        self._e0 = self._read()
        self._t0 = self.clock()
        if getattr(self.counter, "needs_polling", False):
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name="EnergyMeter", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.window_s = self.clock() - self._t0
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        e1 = self._read()
        if self._e0 is not None and e1 is not None and e1 >= self._e0:
            self.energy_j = e1 - self._e0  # a counter that went backwards (driver reload) gives None

    @property
    def aec_w(self) -> float | None:
        if self.energy_j is None or not self.window_s:
            return None
        return self.energy_j / self.window_s

    @property
    def result(self) -> dict[str, Any]:
        known = self.energy_j is not None
        return {"energy_j": self.energy_j, "energy_source": self.source if known else None, "aec_w": self.aec_w}
