"""Which device a cell runs on: resolve it, synchronise it, name it, and find its NVML handle.

Every tracker in `efficientllm.measure` needs the same few facts about the device: is it a GPU,
how to wait for queued work at a window edge, what to call it in a row, and (on NVIDIA GPUs)
which NVML handle reports its memory, utilisation and energy. They live here once.

    python -c "from efficientllm.measure.device import *; d = resolve_device('auto'); print(d, device_name(d))"
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Any

import pynvml
import torch


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """`auto` | `cpu` | `cuda` | `cuda:N` -> a torch.device; CUDA devices always carry an index.

    `auto` picks the current CUDA device when CUDA is available, else the CPU. Asking for CUDA
    where it is not available raises, so a GPU profile never silently measures the CPU.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = spec.strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"unsupported device {spec!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"unsupported device {spec!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available")
    index = torch.cuda.current_device() if device.index is None else device.index
    if not 0 <= index < torch.cuda.device_count():
        raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device("cuda", index)


def synchronize(device: torch.device) -> None:
    """Wait until all work queued on `device` has finished (a no-op on the CPU, which runs eagerly)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """GPU model name, or the CPU model name from /proc/cpuinfo (fallback: platform.processor())."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()


def cpu_model_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The first `model name` line of /proc/cpuinfo; platform.processor() or the machine type elsewhere."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def num_threads() -> int:
    """torch intra-op threads: the cores a CPU cell computes on."""
    return torch.get_num_threads()


def device_columns(device: torch.device) -> dict[str, Any]:
    """The row columns that describe the hardware: device, device_name, num_threads."""
    return {"device": str(device), "device_name": device_name(device), "num_threads": num_threads()}


@functools.cache
def nvml_available() -> bool:
    """Initialise NVML once per process; False (never an exception) where there is no NVIDIA driver."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    return True


def nvml_handle(device: torch.device) -> Any | None:
    """The NVML handle of a CUDA `device`, or None where NVML cannot report on it.

    NVML numbers GPUs in PCI-bus order over the whole machine, while CUDA numbers only the visible
    devices (CUDA_VISIBLE_DEVICES) in its own order (CUDA_DEVICE_ORDER), so the CUDA index is not an
    NVML index. The device UUID is the same to both; torch's own mapping is the fallback.
    """
    if device.type != "cuda" or not nvml_available():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        for prefix in ("GPU-", "MIG-", ""):
            try:
                return pynvml.nvmlDeviceGetHandleByUUID((prefix + uuid).encode())
            except pynvml.NVMLError:
                continue
    except (AttributeError, AssertionError, RuntimeError):
        pass
    try:
        return pynvml.nvmlDeviceGetHandleByIndex(torch.cuda._get_nvml_device_index(index))
    except (AttributeError, AssertionError, RuntimeError, pynvml.NVMLError):
        return None


class NvmlGauge:
    """A gauge read from NVML for one device (`nvml_handle(device)`, not a CUDA index): a failed read
    (pynvml.NVMLError) is counted in `errors` and skips that reading. Subclasses say what `_read` returns."""

    source = "nvml"

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.errors = 0

    def _read(self) -> tuple[float, float]:
        raise NotImplementedError

    def read(self) -> tuple[float, float] | None:
        try:
            return self._read()
        except pynvml.NVMLError:
            self.errors += 1
            return None
