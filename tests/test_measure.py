"""Tests of the measurement core: each tracker's logic with fake clocks and sensors, one real CPU window.

No sleeps and no assertions on real timings: clocks, CPU times, memory, utilisation and energy
readings are scripted, so every expected value below is computed by hand in its comment.

    OMP_WAIT_POLICY=PASSIVE python -m pytest tests/test_measure.py -q
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest
import torch

from efficientllm import provenance, records
from efficientllm.measure import compute, device, energy, memory, metrics, timing
from efficientllm.measure.window import WINDOW_COLUMNS, MeasurementWindow

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)  # only ever handed to code paths that must not touch CUDA itself


class FakeClock:
    """Returns the scripted times in order, one per call."""

    def __init__(self, times: Iterable[float]) -> None:
        self._times = iter(times)
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return next(self._times)


class FakeGauge:
    """Returns scripted (value, total) readings; None entries are failed reads."""

    def __init__(self, readings: Iterable[tuple[float, float] | None], source: str = "fake") -> None:
        self._readings = iter(readings)
        self.source = source

    def read(self) -> tuple[float, float] | None:
        return next(self._readings)


class SignallingGauge:
    """Reading n is (n, 10.0). From read ``signal_at`` on it sets ``signalled`` (a test waits on it for the sampler
    thread, instead of sleeping); given an ``error``, it raises that at read ``signal_at``."""

    source = "signalling"

    def __init__(self, signal_at: int, error: Exception | None = None) -> None:
        self.reads = 0
        self.signal_at, self.error = signal_at, error
        self.signalled = threading.Event()

    def read(self) -> tuple[float, float]:
        self.reads += 1
        if self.reads >= self.signal_at:
            self.signalled.set()
        if self.error is not None and self.reads == self.signal_at:
            raise self.error
        return float(self.reads), 10.0


# --- timing -------------------------------------------------------------------------------------


def test_step_timer_syncs_at_both_edges_and_records_fake_clock_samples():
    events: list[str] = []
    times = iter([10.0, 10.5, 20.0, 22.0])

    def clock() -> float:
        events.append("clock")
        return next(times)

    timer = timing.StepTimer(sync=lambda: events.append("sync"), clock=clock)
    with timer.step():
        events.append("work")
    with timer.step():
        pass
    assert events[:5] == ["sync", "clock", "work", "sync", "clock"]
    assert timer.samples == [0.5, 2.0]


def test_step_timer_records_nothing_for_a_failed_step():
    timer = timing.StepTimer(clock=FakeClock([0.0, 1.0]))
    with pytest.raises(ZeroDivisionError), timer.step():
        1 / 0  # noqa: B018
    assert timer.samples == []


def test_summarize_known_data():
    # 1..10 shuffled. numpy.percentile (linear): p50 = 5.5, p90 = 9.1, p99 = 9.91;
    # sample std (ddof=1) = sqrt(82.5 / 9) = 3.0276503540974917
    s = timing.summarize([7, 1, 10, 3, 5, 2, 9, 4, 8, 6])
    assert s["n"] == 10 and s["mean"] == 5.5 and s["total"] == 55.0
    assert s["p50"] == pytest.approx(5.5) and s["p90"] == pytest.approx(9.1) and s["p99"] == pytest.approx(9.91)
    assert s["std"] == pytest.approx(math.sqrt(82.5 / 9))


def test_summarize_empty_and_single():
    assert timing.summarize([]) == dict(n=0, mean=None, std=None, p50=None, p90=None, p99=None, total=None)
    one = timing.summarize([0.25])
    assert one["n"] == 1 and one["mean"] == one["p50"] == one["p99"] == 0.25 and one["std"] is None


def test_latency_columns_are_schema_columns():
    cols = timing.latency_columns([0.1, 0.3])
    assert set(cols) <= set(records.COLUMNS)
    assert cols["al_s"] == pytest.approx(0.2) and cols["latency_samples_s"] == [0.1, 0.3]


def test_time_weighted_mean_trapezoid():
    # (t, v): (0, 100), (1, 100), (3, 400): area = 1*100 + 2*(100+400)/2 = 600 over 3 s -> 200
    pts = [(0.0, 100.0, 1000.0), (1.0, 100.0, 1000.0), (3.0, 400.0, 1000.0)]
    assert timing.time_weighted_mean(pts) == pytest.approx(200.0)
    assert timing.time_weighted_mean(pts, ratio=True) == pytest.approx(0.2)
    assert timing.time_weighted_mean([(5.0, 7.0, 10.0)]) == 7.0
    assert timing.time_weighted_mean([]) is None
    assert timing.time_weighted_mean([(0.0, 1.0, 0.0), (1.0, 1.0, 0.0)], ratio=True) is None


def test_gauge_sampler_thread_samples_and_stops():
    gauge = SignallingGauge(signal_at=3)
    sampler = timing.GaugeSampler([gauge], interval_s=0.001)
    with sampler:
        assert gauge.signalled.wait(timeout=10), "sampler thread never sampled"
    assert sampler._thread is None
    values = [p[1] for p in sampler.series[0]]
    assert len(values) >= 4 and values == sorted(values)  # enter + >= 2 thread reads + exit


def test_gauge_sampler_reraises_a_thread_failure_at_exit():
    gauge = SignallingGauge(signal_at=2, error=KeyError("sensor bug"))  # read 2: the thread's first reading
    sampler = timing.GaugeSampler([gauge], interval_s=0.001)
    with pytest.raises(RuntimeError, match="sensor bug"), sampler:
        assert gauge.signalled.wait(timeout=10)


# --- memory -------------------------------------------------------------------------------------


def test_memory_sampler_time_weighted_mean_and_peak_from_scripted_samples():
    sensor = FakeGauge([(100.0, 1000.0), (100.0, 1000.0), (400.0, 1000.0)])
    sampler = memory.MemorySampler(interval_s=None, sensors=[sensor], clock=FakeClock([0.0, 1.0, 3.0]))
    with sampler:  # enter reads at t=0
        sampler.sample()  # what the thread does, here at t=1
    # exit reads at t=3; same numbers as test_time_weighted_mean_trapezoid
    assert sampler.amu_bytes == pytest.approx(200.0)
    assert sampler.amu_ratio == pytest.approx(0.2)
    assert sampler.peak_bytes == 400.0
    assert sampler.source == "fake"
    assert sampler.samples == [(0.0, 100.0, 1000.0), (1.0, 100.0, 1000.0), (3.0, 400.0, 1000.0)]
    assert sampler.result == {"amu_bytes": pytest.approx(200.0), "amu_ratio": pytest.approx(0.2), "amu_source": "fake"}


def test_memory_sampler_falls_back_to_next_sensor_when_primary_fails():
    dead = FakeGauge([None, None], source="nvml")
    rss = FakeGauge([(10.0, 100.0), (30.0, 100.0)], source="rss")
    sampler = memory.MemorySampler(interval_s=None, sensors=[dead, rss], clock=FakeClock([0.0, 2.0]))
    with sampler:
        pass
    assert sampler.source == "rss" and sampler.amu_bytes == pytest.approx(20.0) and sampler.peak_bytes == 30.0


def test_rss_sensor_reads_this_process():
    used, total = memory.RssSensor().read()
    assert 0 < used < total
    via_psutil, _ = memory.RssSensor(statm=None).read()
    assert abs(used - via_psutil) < 64 * 2**20  # same process moments apart; only allocation in between differs


def test_rss_peak_from_fake_proc(tmp_path: Path):
    (tmp_path / "clear_refs").write_text("")
    (tmp_path / "status").write_text("Name:\tpython\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n")
    with memory.RssPeak(tmp_path) as peak:
        pass
    assert (tmp_path / "clear_refs").read_text() == "5"
    assert peak.peak_bytes == 2048 * 1024
    with memory.RssPeak(tmp_path / "missing") as peak:  # reset not possible -> no peak, caller falls back
        pass
    assert peak.peak_bytes is None


# --- compute ------------------------------------------------------------------------------------


def test_cpu_utilization_from_fake_cpu_times():
    # 3 CPU-seconds over 2 wall seconds on 2 threads -> 3 / (2 * 2) = 0.75
    util = compute.UtilizationTracker(CPU, threads=2, cpu_time=FakeClock([1.0, 4.0]), clock=FakeClock([0.0, 2.0]))
    with util:
        pass
    assert util.result == {"pcu_ratio": 0.75, "pcu_source": "cpu_time", "other_cpu_cores": util.other_cpu_cores}
    # more CPU time than threads x wall (threads the denominator does not count) shows: 5 / (2 x 1) = 2.5, not a
    # clamped 1.0 that would hide the wrong denominator (the row's sanity checks flag a ratio above 1)
    util = compute.UtilizationTracker(CPU, threads=1, cpu_time=FakeClock([0.0, 5.0]), clock=FakeClock([0.0, 2.0]))
    with util:
        pass
    assert util.pcu_ratio == 2.5


def test_other_processes_cpu_over_the_window():
    # the machine was busy 3.0 CPU-seconds over 2 wall seconds, 1.0 of them ours: others used 1 core
    assert compute.other_cpu_cores(3.0, 1.0, 2.0) == 1.0
    assert compute.other_cpu_cores(1.0, 1.2, 2.0) == 0.0  # tick rounding never gives a negative load
    assert compute.other_cpu_cores(1.0, 0.0, 0.0) is None  # an empty window
    # a real window: this process spins 0.3 s while a fake machine clock says 0.6 s more were busy
    busy = iter([100.0, 100.6 + 0.3])
    util = compute.UtilizationTracker(CPU, threads=1, system_busy=lambda: next(busy))
    with util:
        t0 = time.process_time()
        while time.process_time() - t0 < 0.3:
            pass
    assert util.other_cpu_cores == pytest.approx(0.6 / 0.3, rel=0.25)
    # and the real machine counter moves with our own work: others' share stays far below our spin
    util = compute.UtilizationTracker(CPU, threads=1)
    with util:
        t0 = time.process_time()
        while time.process_time() - t0 < 0.3:
            pass
    assert 0.0 <= util.other_cpu_cores < 2.0


def test_gpu_utilization_time_weighted_from_fake_nvml_sensor():
    # util 40% at t=0, 80% at t=1, 80% at t=2: area = (40+80)/2 + 80 = 140 over 2 s -> 70% -> 0.7
    sensor = FakeGauge([(40.0, 100.0), (80.0, 100.0), (80.0, 100.0)], source="nvml")
    util = compute.UtilizationTracker(CUDA, interval_s=None, sensor=sensor, clock=FakeClock([0.0, 1.0, 2.0]))
    with util:
        util.sampler.sample()
    assert util.result == {"pcu_ratio": pytest.approx(0.7), "pcu_source": "nvml",
                           "other_cpu_cores": util.other_cpu_cores}


def test_peak_flops_cache_hit_does_not_recompute(tmp_path: Path):
    calls = []

    def calibrate(dev, dtype, n, repeats):
        calls.append((dev, dtype, n, repeats))
        return 0.5, 2  # best repeat 0.5 s for 2 matmuls

    cache = tmp_path / "peak.json"
    first = compute.measure_peak_flops(CPU, torch.float32, n=100, repeats=3, cache_path=cache, calibrate=calibrate)
    # 2 * 100^3 FLOPs per matmul x 2 matmuls / 0.5 s = 8e6 FLOP/s
    assert first["peak_flops_per_s"] == pytest.approx(8e6) and first["cached"] is False
    assert first["method"] == "matmul_calibration" and first["n"] == 100 and first["dtype"] == "float32"
    assert first["device_name"] == device.device_name(CPU)
    second = compute.measure_peak_flops(CPU, "float32", n=100, cache_path=cache, calibrate=calibrate)
    assert len(calls) == 1 and second["cached"] is True and second["peak_flops_per_s"] == first["peak_flops_per_s"]
    compute.measure_peak_flops(CPU, torch.bfloat16, n=100, cache_path=cache, calibrate=calibrate)
    compute.measure_peak_flops(CPU, torch.float32, n=100, cache_path=cache, calibrate=calibrate, refresh=True)
    assert len(calls) == 3  # another dtype and a refresh both measure


def test_peak_flops_real_small_calibration(tmp_path: Path):
    peak = compute.measure_peak_flops(CPU, n=128, repeats=2, cache_path=tmp_path / "p.json")
    assert peak["peak_flops_per_s"] > 0 and math.isfinite(peak["peak_flops_per_s"])
    with pytest.raises(ValueError):
        compute.measure_peak_flops(CPU, torch.int8, cache_path=tmp_path / "p.json")


def test_mfu_none_for_unknown_peak():
    assert compute.mfu(1e9, None) is None
    assert compute.mfu(1e9, 0.0) is None
    assert compute.mfu(None, 2e9) is None
    assert compute.mfu(1e9, 2e9) == 0.5
    assert compute.mfu(1e9, {"peak_flops_per_s": 4e9}) == 0.25
    assert compute.mfu(1e9, {"peak_flops_per_s": None}) is None


# --- energy -------------------------------------------------------------------------------------


def _rapl_domain(root: Path, name: str, label: str, energy_uj: int, max_uj: int) -> Path:
    d = root / name
    d.mkdir()
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d / "energy_uj"


def test_rapl_wrap_around_on_fake_sysfs(tmp_path: Path):
    pkg0 = _rapl_domain(tmp_path, "intel-rapl:0", "package-0", 900_000, 1_000_000)
    pkg1 = _rapl_domain(tmp_path, "intel-rapl:1", "package-1", 100_000, 1_000_000)
    _rapl_domain(tmp_path, "intel-rapl:0:0", "core", 5, 1_000_000)  # inside the package: ignored
    _rapl_domain(tmp_path, "intel-rapl:2", "psys", 5, 1_000_000)  # overlaps the packages: ignored
    _rapl_domain(tmp_path, "intel-rapl-mmio:0", "package-0", 5, 1_000_000)  # duplicate interface: ignored
    counter = energy.RaplEnergy(tmp_path)
    meter = energy.EnergyMeter(counter=counter, clock=FakeClock([0.0, 2.0]), poll_interval_s=3600)
    with meter:
        pkg0.write_text("200000\n")  # wrapped: 900000 -> 1000000 -> 0 -> 200000 = 300000 uJ
        pkg1.write_text("600000\n")  # 500000 uJ
    # 0.8 J over 2 s
    assert meter.energy_j == pytest.approx(0.8) and meter.aec_w == pytest.approx(0.4)
    assert meter.result == {"energy_j": pytest.approx(0.8), "energy_source": "rapl", "aec_w": pytest.approx(0.4)}
    pkg0.write_text("300000\n")
    assert counter.read_j() == pytest.approx(0.9)  # keeps accumulating across reads (what the poll thread does)


def test_rapl_unreadable_is_unavailable(tmp_path: Path):
    with pytest.raises(energy.RaplUnavailable):
        energy.RaplEnergy(tmp_path / "no-powercap")
    with pytest.raises(energy.RaplUnavailable):
        energy.RaplEnergy(tmp_path)  # class present, no package domains


def test_estimate_energy_from_fake_cpu_time():
    # 2.5 CPU-seconds x 4 W per core = 10 J over 5 s of wall time -> 2 W
    counter = energy.EstimateEnergy(4.0, cpu_time=FakeClock([10.0, 12.5]))
    meter = energy.EnergyMeter(counter=counter, clock=FakeClock([0.0, 5.0]))
    with meter:
        pass
    assert meter.result == {"energy_j": 10.0, "energy_source": "estimate", "aec_w": 2.0}
    with pytest.raises(ValueError):
        energy.EstimateEnergy(0.0)


def test_energy_meter_without_counter_reports_none(tmp_path: Path):
    meter = energy.EnergyMeter(CPU, watts_per_core=None, rapl_root=tmp_path)
    with meter:
        pass
    assert meter.result == {"energy_j": None, "energy_source": None, "aec_w": None}


# --- NVML paths, with pynvml faked or absent ----------------------------------------------------


@pytest.fixture
def no_nvml(monkeypatch):
    """NVML as on a machine without an NVIDIA driver, whatever this machine has."""

    def fail():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    device.nvml_available.cache_clear()
    yield
    device.nvml_available.cache_clear()


def test_nvml_unavailable_degrades_to_rss_estimate_and_no_pcu(no_nvml, tmp_path: Path):
    assert device.nvml_handle(CUDA) is None
    sensors = memory.memory_sensors(CUDA)
    assert [s.source for s in sensors] == ["rss"]
    counter = energy.select_energy_counter(CUDA, watts_per_core=4.0, rapl_root=tmp_path)
    assert isinstance(counter, energy.EstimateEnergy)
    util = compute.UtilizationTracker(CUDA, interval_s=None)
    with util:
        pass
    assert util.result == {"pcu_ratio": None, "pcu_source": None, "other_cpu_cores": util.other_cpu_cores}


def test_fake_nvml_sensors_and_mid_window_errors(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(memory, "nvml_handle", lambda dev: "h0")
    monkeypatch.setattr(energy, "nvml_handle", lambda dev: "h0")
    monkeypatch.setattr(compute, "nvml_handle", lambda dev: "h0")
    mem_reads = iter([SimpleNamespace(used=2e9, total=8e9), pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)])

    def get_memory_info(handle):
        value = next(mem_reads)
        if isinstance(value, Exception):
            raise value
        return value

    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", get_memory_info)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", lambda h: SimpleNamespace(gpu=55, memory=10))
    energy_mj = iter([1_000_000, 1_000_000, 1_250_000])  # probe, enter, exit: 250 J
    monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", lambda h: next(energy_mj))

    sensors = memory.memory_sensors(CUDA)
    assert [s.source for s in sensors] == ["nvml", "rss"]
    assert sensors[0].read() == (2e9, 8e9)
    assert sensors[0].read() is None and sensors[0].errors == 1  # an NVML error skips the reading

    util = compute.UtilizationTracker(CUDA, interval_s=None)
    assert util.source == "nvml" and util.sampler.gauges[0].read() == (55.0, 100.0)

    meter = energy.EnergyMeter(CUDA, clock=FakeClock([0.0, 10.0, 20.0, 30.0]), rapl_root=tmp_path)
    with meter:
        pass
    assert meter.result == {"energy_j": 250.0, "energy_source": "nvml", "aec_w": 25.0}

    def broken(h):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", broken)
    # unsupported at selection time -> the next backend; failing mid-window -> None, no crash
    assert isinstance(energy.select_energy_counter(CUDA, 4.0, rapl_root=tmp_path), energy.EstimateEnergy)
    with meter:
        pass
    assert meter.result == {"energy_j": None, "energy_source": None, "aec_w": None}


# --- metrics ------------------------------------------------------------------------------------


def test_metrics_values():
    assert metrics.tt_tokens_per_param_s(1e6, 1e8, 10.0) == pytest.approx(1e-3)
    assert metrics.st_samples_per_param_s(500, 1e6, 5.0) == pytest.approx(1e-4)
    assert metrics.it_tokens_per_s(256, 2.0) == 128.0
    assert metrics.tokens_per_s(256, 2.0) == 128.0
    assert metrics.aec_w(100.0, 4.0) == 25.0
    assert metrics.tokens_per_j(1000, 250.0) == 4.0
    assert metrics.achieved_flops_per_s(1e12, 2.0) == 5e11


def test_metrics_zero_and_none_denominators():
    assert metrics.tt_tokens_per_param_s(1e6, 0, 10.0) is None
    assert metrics.tt_tokens_per_param_s(1e6, 1e8, 0.0) is None
    assert metrics.tt_tokens_per_param_s(None, 1e8, 1.0) is None
    assert metrics.st_samples_per_param_s(10, None, 1.0) is None
    assert metrics.it_tokens_per_s(10, 0) is None
    assert metrics.aec_w(None, 1.0) is None and metrics.aec_w(5.0, 0.0) is None
    assert metrics.tokens_per_j(10, 0.0) is None


# --- the composite window and provenance --------------------------------------------------------


def test_real_measurement_window_on_cpu(tmp_path: Path):
    a = torch.randn(256, 256)
    timer = timing.StepTimer()
    # an empty rapl_root makes the energy source the estimate on any machine
    with MeasurementWindow("cpu", interval_s=0.01, watts_per_core=4.0, rapl_root=tmp_path) as win:
        for _ in range(20):
            with timer.step():
                a @ a
    r = win.result
    assert tuple(r) == WINDOW_COLUMNS and set(r) <= set(records.COLUMNS)
    assert r["amu_source"] == "rss" and r["pcu_source"] == "cpu_time"
    assert r["peak_mem_source"] == "rss" and r["energy_source"] == "estimate"
    assert r["window_s"] > 0 and r["window_s"] >= sum(timer.samples)
    assert 0 < r["amu_bytes"] <= r["peak_mem_bytes"]
    assert 0 < r["amu_ratio"] <= 1
    assert 0 <= r["pcu_ratio"] <= 1
    assert r["energy_j"] >= 0 and r["aec_w"] == pytest.approx(r["energy_j"] / r["window_s"])
    row = records.make_row(axis="pretrain", status="ok", **r, **timer.columns())
    assert row["amu_source"] == "rss"


def test_window_stops_trackers_when_the_body_fails(tmp_path: Path):
    win = MeasurementWindow("cpu", interval_s=0.001, watts_per_core=4.0, rapl_root=tmp_path)
    with pytest.raises(RuntimeError, match="boom"), win:
        raise RuntimeError("boom")
    assert win.memory._thread is None
    assert tuple(win.result) == WINDOW_COLUMNS


def test_resolve_device_and_names():
    assert device.resolve_device("cpu") == CPU
    assert device.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError):
        device.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError):
            device.resolve_device("cuda:0")
    device.synchronize(CPU)  # no-op
    assert device.device_name(CPU)
    cols = device.device_columns(CPU)
    assert cols["device"] == "cpu" and cols["num_threads"] == torch.get_num_threads()


def test_cpu_model_name_fallback(tmp_path: Path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Fake CPU 9000\n")
    assert device.cpu_model_name(tmp_path / "cpuinfo") == "Fake CPU 9000"
    assert device.cpu_model_name(tmp_path / "missing")  # platform fallback, never empty


def test_provenance_fields(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "Passive")
    p = provenance.provenance(cwd=tmp_path)  # not a git repository
    expected = {
        "git_sha",
        "git_dirty",
        "python_version",
        "torch_version",
        "transformers_version",
        "peft_version",
        "hostname",
        "omp_wait_policy",
        "timestamp_utc",
    }
    assert set(p) == expected and expected <= set(records.COLUMNS)
    assert p["omp_wait_policy"] == "passive"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert provenance.provenance(cwd=tmp_path)["omp_wait_policy"] is None
    assert p["git_sha"] is None and p["git_dirty"] is None
    assert p["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert datetime.fromisoformat(p["timestamp_utc"]).utcoffset().total_seconds() == 0
    assert provenance.package_version("no-such-distribution-xyz") is None


def test_a_paused_window_keeps_its_other_load_figure():
    """A window paused between steps (checkpoint saves) has several segments, some a few ms long: the figure is
    their time-weighted mean, never lost to one short segment."""
    with MeasurementWindow(CPU, interval_s=None, watts_per_core=4.0) as w:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.2:
            pass
        with w.paused():
            pass
        with w.paused():
            pass
    other = w.result["other_cpu_cores"]
    assert other is not None and other >= 0.0
