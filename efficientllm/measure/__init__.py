"""Measurement core: the trackers and metric functions behind every number in a row.

One context manager per job: `StepTimer` (latency, AL), `MemorySampler` (AMU), `TorchCudaPeak` /
`RssPeak` (peak memory), `UtilizationTracker` (PCU), `EnergyMeter` (energy, AEC), composed by
`MeasurementWindow` into row columns; `measure_peak_flops` + `mfu` (MFU); `metrics` (TT, ST, IT,
tokens/J, MCR). Every figure carries its source label: nvml, rapl, estimate, torch, rss or cpu_time
(what produced a row, git and versions, is efficientllm.provenance). Sensors and clocks are injectable for tests.

    python -c "from efficientllm.measure.window import demo; demo()"
"""

from .compute import UtilizationTracker, measure_peak_flops, mfu
from .device import device_columns, device_name, num_threads, resolve_device, synchronize
from .energy import EnergyMeter, EstimateEnergy, NvmlEnergy, RaplEnergy, select_energy_counter
from .memory import MemorySampler, NvmlMemorySensor, RssPeak, RssSensor, TorchCudaPeak
from .timing import StepTimer, latency_columns, summarize
from .window import WINDOW_COLUMNS, MeasurementWindow

__all__ = [
    "WINDOW_COLUMNS",
    "EnergyMeter",
    "EstimateEnergy",
    "MeasurementWindow",
    "MemorySampler",
    "NvmlEnergy",
    "NvmlMemorySensor",
    "RaplEnergy",
    "RssPeak",
    "RssSensor",
    "StepTimer",
    "TorchCudaPeak",
    "UtilizationTracker",
    "device_columns",
    "device_name",
    "latency_columns",
    "measure_peak_flops",
    "mfu",
    "num_threads",
    "resolve_device",
    "select_energy_counter",
    "summarize",
    "synchronize",
]
