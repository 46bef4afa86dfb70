"""Time: per-step latency samples, their summary statistics, and periodic sampling of gauges.

`StepTimer` gives AL (the paper's average latency, mean seconds per iteration or request) and the
percentiles the paper leaves out, keeping every raw sample. `GaugeSampler` is the one background
thread the memory and utilisation trackers use to turn a reading-over-time into the paper's
window averages, (1/T) * integral of value(t) dt.

Warm-up is the caller's job: run the warm-up steps before the timer (and the MeasurementWindow)
starts counting, on the same shapes as the timed steps. Every sample a StepTimer holds is measured.

    python -c "from efficientllm.measure.timing import summarize; print(summarize([1, 2, 3, 4]))"
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

Clock = Callable[[], float]


class StepTimer:
    """Times steps: `with timer.step(): train_step()` appends one sample (seconds) to `timer.samples`.

    `sync` (e.g. `functools.partial(synchronize, device)`) is called at both edges of every step, so
    queued GPU work is inside the step it belongs to. A step that raises records no sample.
    """

    def __init__(self, sync: Callable[[], None] | None = None, clock: Clock = time.perf_counter) -> None:
        self.sync = sync
        self.clock = clock
        self.samples: list[float] = []

    @contextmanager
    def step(self) -> Iterator[None]:
        if self.sync is not None:
            self.sync()
        start = self.clock()
        yield
        if self.sync is not None:
            self.sync()
        self.samples.append(self.clock() - start)

    def summary(self) -> dict[str, float | int | None]:
        return summarize(self.samples)

    def columns(self) -> dict[str, Any]:
        """The row's latency columns: al_s, latency_s_mean/std/p50/p90/p99, latency_samples_s."""
        return latency_columns(self.samples)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of already-sorted values, linearly interpolated between ranks.

    Same as numpy's default ('linear'): rank q/100 * (n - 1), interpolated between its neighbours.
    """
    n = len(sorted_values)
    if n == 0:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    rank = q / 100 * (n - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, n - 1)
    frac = rank - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def summarize(samples: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, std, p50, p90, p99, total of latency samples; every statistic None when empty.

    std is the sample standard deviation (ddof=1): the samples estimate the spread of step times,
    and with a single sample that spread is unknown, so std is None for n < 2.
    """
    n = len(samples)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "p50": None, "p90": None, "p99": None, "total": None}
    values = sorted(float(s) for s in samples)
    total = math.fsum(values)
    mean = total / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {
        "n": n,
        "mean": mean,
        "std": std,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "total": total,
    }


def latency_columns(samples: Sequence[float]) -> dict[str, Any]:
    """Row columns from latency samples; al_s is the mean (the paper's AL)."""
    s = summarize(samples)
    return {
        "al_s": s["mean"],
        "latency_s_mean": s["mean"],
        "latency_s_std": s["std"],
        "latency_s_p50": s["p50"],
        "latency_s_p90": s["p90"],
        "latency_s_p99": s["p99"],
        "latency_samples_s": [float(x) for x in samples],
    }


class Gauge(Protocol):
    """Something read at a point in time: `read()` -> (value, total), or None when it could not be read."""

    source: str

    def read(self) -> tuple[float, float] | None: ...


Point = tuple[float, float, float]
"""One reading: (time s, value, total)."""


def time_weighted_mean(points: Sequence[Point], ratio: bool = False) -> float | None:
    """(1/T) * integral of value(t) dt over the span of `points` (trapezoid rule), or of value/total.

    Readings are taken as lying on straight lines between samples. One reading, or readings all at
    one instant, give their plain mean. No readings (or a ratio over a zero total) give None.
    """
    if not points or (ratio and any(p[2] <= 0 for p in points)):
        return None

    def y(p: Point) -> float:
        return p[1] / p[2] if ratio else p[1]

    span = points[-1][0] - points[0][0]
    if len(points) == 1 or span <= 0:
        return math.fsum(y(p) for p in points) / len(points)
    area = math.fsum((b[0] - a[0]) * (y(a) + y(b)) / 2 for a, b in zip(points, points[1:], strict=False))
    return area / span


class GaugeSampler:
    """Reads gauges at enter, every `interval_s` on a daemon thread, and at exit.

    `sample()` takes one reading of every gauge; the thread only calls it, so tests drive the
    sampling logic synchronously with a fake clock and fake gauges (`interval_s=None`: no thread).
    The thread does no torch work: gauges are psutil / NVML reads of a few microseconds, so the
    default 50 ms interval costs far less than 1% of a training loop.
    """

    def __init__(self, gauges: Sequence[Gauge], interval_s: float | None = 0.05, clock: Clock = time.perf_counter):
        self.gauges = list(gauges)
        self.interval_s = interval_s
        self.clock = clock
        self.series: list[list[Point]] = [[] for _ in self.gauges]
        """Raw readings per gauge, (time s, value, total), in gauge order."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: Exception | None = None

    def sample(self) -> None:
        now = self.clock()
        for gauge, series in zip(self.gauges, self.series, strict=True):
            reading = gauge.read()
            if reading is not None:
                series.append((now, float(reading[0]), float(reading[1])))

    def _run(self) -> None:
        assert self.interval_s is not None
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception as e:  # kept and re-raised at exit: a dead sampler must not go unnoticed
                self._error = e
                return

    def __enter__(self) -> GaugeSampler:
        self.series = [[] for _ in self.gauges]
        self._error = None
        self._stop.clear()
        self.sample()
        if self.interval_s is not None and self.interval_s > 0:
            self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None = None, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.sample()
        if self._error is not None and exc_type is None:
            raise RuntimeError(f"{type(self).__name__} thread failed: {self._error!r}") from self._error

    def first_with_data(self) -> int | None:
        """Index of the first gauge that produced any reading (the primary one, unless it failed)."""
        return next((i for i, s in enumerate(self.series) if s), None)


class Phases:
    """Wall time of a cell's phases, with one progress line per phase on stderr, so a long cell is never silent.

        phases = Phases("quantize@int4")
        with phases("load"):
            model = load()
        row["extra"]["phase_s"] = phases.seconds      # {"load_s": 3.2, ...}
    """

    def __init__(self, label: str, clock: Clock = time.perf_counter, stream: Any = None) -> None:
        self.label = label
        self.clock = clock
        self.stream = stream
        self.seconds: dict[str, float] = {}
        self._open: tuple[str, float] | None = None

    def start(self, name: str) -> None:
        """End the phase running (if any) and start `name`: for straight-line code (`phases.start("train")`)."""
        import sys

        self.stop()
        print(f"{self.label}: {name} ...", file=self.stream if self.stream is not None else sys.stderr, flush=True)
        self._open = (name, self.clock())

    def stop(self) -> None:
        """End the phase running, if any."""
        if self._open is not None:
            name, start = self._open
            self.seconds[f"{name.replace(' ', '_')}_s"] = self.clock() - start
            self._open = None

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop()
