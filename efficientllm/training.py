"""The one measured training loop: pretraining and fine-tuning cells both run `train_measured`.

What every training cell shares lives here, once: the learning-rate schedule (linear warm-up, then cosine to a
floor), the measured window and its trackers, the step timer (device synchronised at both edges of every step),
the cell guards (NaN/inf loss, `timeout_s`, `memory_limit_mb`), checkpoint save / resume, the loss curve, the
peak-FLOP/s calibration and the training columns of the row (AL and its percentiles, AMU, PCU, AEC, energy,
MFU, tokens/s, tokens/J). An axis passes only what differs: its model, optimizer and one optimizer step's
forward/backward (`step_fn`), and what its throughput counts.

The measured window is the steps after `warmup_steps` warm-up steps of the same shapes; a resumed run warms up
again after resuming (its first steps are cold: caches, allocator, autotuning). Checkpoint saves happen between
steps with the window paused, so no window figure (time, energy, memory, utilisation) includes disk I/O; the
time they took is `checkpoint_s`.

    python -m stages.pretrain --variant mha        # a pretraining cell, through this loop
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from efficientllm.checkpoint import CellGuard, Checkpointer, TrainingDiverged
from efficientllm.config import MeasureConfig
from efficientllm.distributed import DistContext, aggregate_windows, is_sharded, per_device_summary, window_payload
from efficientllm.measure import (
    MeasurementWindow,
    StepTimer,
    device_name,
    measure_peak_flops,
    metrics,
    mfu,
    num_threads,
    synchronize,
)
from efficientllm.measure.anatomy import above_baseline, saved_activation_bytes, training_anatomy, with_rest
from efficientllm.measure.timing import latency_columns

TRAIN_LOSS_LAST_STEPS = 5
"""`train_loss_final` is the mean loss of this many last steps."""


def warmup_cosine(steps: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up over `warmup` steps to the peak, then cosine decay to `min_ratio` of it at
    the last step (pretraining and fine-tuning both)."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def checkpointer_for(checkpoint_dir: Path | None, every_steps: int, model: torch.nn.Module, key: Callable[[], str],
                     dist: DistContext, trainable_only: bool = False) -> Checkpointer | None:
    """The cell's Checkpointer, or None (no folder, `checkpoint_every_steps: 0`, or a sharded model).

    One process or DDP checkpoint (every replica holds the whole state: rank 0 saves it, every rank resumes from
    it); an FSDP run would need every rank's shard, so it does not. `key()` (the trajectory's identity: it may hash
    data files and weights) runs once, on rank 0, and is broadcast.
    """
    if checkpoint_dir is None or not every_steps or is_sharded(model):
        return None
    return Checkpointer(checkpoint_dir, dist.broadcast(key() if dist.is_main else None), every_steps,
                        trainable_only=trainable_only)


def measured_peak(device: torch.device, dtype: torch.dtype, measure: MeasureConfig,
                  dist: DistContext) -> tuple[dict[str, Any], float | None]:
    """(the calibration record, peak FLOP/s summed over the ranks' devices or None when unknown).

    One calibration, on rank 0: ranks run the same device model, and CPU ranks would contend for cores.
    """
    peak = None
    if dist.is_main:
        peak = measure_peak_flops(device, dtype, n=measure.peak_calibration_n,
                                  cache_path=Path(measure.cache_dir) / "peak_flops.json")
    peak = dist.broadcast(peak)
    total = peak["peak_flops_per_s"] * dist.world_size if peak["peak_flops_per_s"] else None
    return peak, total


@dataclass
class StepWork:
    """What one optimizer step did on this rank (returned by the axis's `step_fn`)."""

    loss: torch.Tensor
    """The step's mean training loss on this rank, detached, on the device (one sync per step, in the loop)."""
    tokens: int
    """Tokens the throughput columns count, over the global batch (pretraining: every token; fine-tuning: the
    response tokens, label != -100)."""
    computed_tokens: int
    """Token positions the model ran over the global batch, padding included: the FLOPs of MFU."""


@dataclass
class LoopResult:
    """A finished training loop: its curve and its measured window."""

    curve: list[dict[str, float]]
    """One record per step (this run's and, after a resume, the checkpoint's): step, loss, lr, the progress count,
    step_s."""
    start: int
    """Steps done before this process (resumed from a checkpoint; 0 otherwise)."""
    window_start: int
    """The first measured step."""
    window: dict[str, Any]
    """MeasurementWindow columns (rank 0: summed over every rank's device)."""
    step_s: list[float]
    """Latency samples of the measured steps, s."""
    tokens: int
    """Counted tokens of the measured steps (StepWork.tokens summed)."""
    computed_tokens: int
    """Computed token positions of the measured steps (StepWork.computed_tokens summed)."""
    checkpoint_s: float
    """Wall time of the checkpoint saves, excluded from every window figure."""
    memory: dict[str, Any] = field(default_factory=dict)
    """The memory anatomy of a step (efficientllm.measure.anatomy), this rank's."""
    evals: list[tuple[int, float]] = field(default_factory=list)
    """(steps done, validation loss) of every periodic evaluation (`evaluate_every`), in order."""
    per_device: list[dict[str, Any]] | None = field(default=None)
    """Each rank's own window figures (several processes only)."""


def train_measured(step_fn: Callable[[int], StepWork], *, section: str, model: torch.nn.Module,
                   optimizer: torch.optim.Optimizer, scheduler: Any, steps: int, warmup_steps: int,
                   clip_params: list[torch.nn.Parameter], grad_clip: float, dist: DistContext,
                   measure: MeasureConfig, progress: tuple[str, int], guard: CellGuard,
                   checkpointer: Checkpointer | None = None, scaler: Any = None,
                   probe: Callable[[], Any] | None = None, evaluate: Callable[[], float] | None = None,
                   evaluate_every: int = 0) -> LoopResult:
    """Run optimizer steps 0..steps-1 (resuming after the last checkpoint of `checkpointer`), measuring the window.

    `step_fn(step)` runs the forward and backward of every micro-batch of step `step` (gradients accumulated, not
    applied); the loop clips `clip_params` to `grad_clip` (0: off), steps the optimizer and the scheduler, and
    checks the loss (TrainingDiverged on NaN/inf, the same on every rank), the time and the memory (`guard`).
    `progress` = (curve column, amount per step), e.g. ("tokens", batch x seq_len): the curve records the
    cumulative count. `scaler` (a torch.amp.GradScaler, float16 compute): `step_fn` backpropagates scaled losses,
    the loop unscales before clipping and lets the scaler skip steps whose gradients overflowed. Under several
    processes every rank calls this; rank 0 saves checkpoints. After the loop, outside the window, `probe` (one
    micro-batch's forward, returning anything) is run once under a saved-tensors hook for the activation bytes of
    the memory anatomy (None: not measured, e.g. under FSDP, whose forward is a collective). `evaluate` (the
    validation loss) runs every `evaluate_every` steps with the window paused, for the equal-quality figures.
    """
    device = dist.device
    timer = StepTimer(sync=lambda: synchronize(device))
    window = MeasurementWindow(device, interval_s=measure.sample_interval_s,
                               watts_per_core=measure.cpu_watts_per_core)
    curve: list[dict[str, float]] = []
    evals: list[tuple[int, float]] = []
    start = 0
    if checkpointer is not None:
        state = checkpointer.load(model, optimizer, scheduler)
        if state is not None:
            start, curve = int(state["steps_done"]), list(state["curve"])
            evals = [(int(s), float(v)) for s, v in state.get("evals", [])]
    window_start = warmup_steps
    if start:  # a resumed run warms up again: its first steps are cold
        window_start = min(start + warmup_steps, steps - 1)
    progress_name, per_step = progress
    tokens = computed = 0
    checkpoint_s = 0.0
    with contextlib.ExitStack() as stack:
        for step in range(start, steps):
            if step == window_start:
                stack.enter_context(window)
            with timer.step():
                work = step_fn(step)
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(clip_params, grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss = dist.mean(work.loss)  # the global batch's loss, the same on every rank (so is the NaN check)
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss} at step {step} (lr {scheduler.get_last_lr()[0]:.3g})")
            if step >= window_start:
                tokens += work.tokens
                computed += work.computed_tokens
            curve.append({"step": step, "loss": loss, "lr": scheduler.get_last_lr()[0],
                          progress_name: (step + 1) * per_step, "step_s": timer.samples[-1]})
            if evaluate is not None and evaluate_every and (step + 1) % evaluate_every == 0:
                with window.paused() if step >= window_start else contextlib.nullcontext():
                    evals.append((step + 1, evaluate()))  # every rank: evaluation may be a collective
            if checkpointer is not None and dist.is_main and checkpointer.due(step + 1, steps):
                t0 = time.perf_counter()
                with window.paused() if step >= window_start else contextlib.nullcontext():
                    checkpointer.save(step + 1, model, optimizer, scheduler, {"curve": curve, "evals": evals})
                checkpoint_s += time.perf_counter() - t0
            guard.check(step)
    payloads = dist.gather(window_payload(window.result, dist))
    win = aggregate_windows(payloads) if payloads else window.result  # rank 0: every device; others: their own
    activations = saved_activation_bytes(probe, model) if probe is not None else None
    return LoopResult(curve=curve, start=start, window_start=window_start, window=win,
                      step_s=timer.samples[window_start - start:], tokens=tokens, computed_tokens=computed,
                      checkpoint_s=checkpoint_s, memory=training_anatomy(model, optimizer, activations), evals=evals,
                      per_device=per_device_summary(payloads) if payloads and dist.distributed else None)


def to_target(result: LoopResult, target_loss: float | None, per_step: int) -> dict[str, Any] | None:
    """Efficiency at equal quality: the training time, tokens and energy spent when the validation loss first
    reached `target_loss` (from the periodic evaluations). Time is the sum of the step times up to that step (the
    evaluations excluded); energy is the window's mean power x that time (labelled: not a meter reading at that
    step). None when there were no evaluations."""
    if target_loss is None or not result.evals:
        return None
    hit = next(((steps, loss) for steps, loss in result.evals if loss <= target_loss), None)
    out: dict[str, Any] = {"target_val_loss": target_loss, "reached": hit is not None,
                           "evals": [{"steps": s, "val_loss": v} for s, v in result.evals]}
    if hit is not None:
        train_s = sum(r["step_s"] for r in result.curve if r["step"] < hit[0])
        aec = result.window.get("aec_w")
        out.update(steps=hit[0], val_loss=hit[1], tokens=hit[0] * per_step, train_s=train_s,
                   energy_j=aec * train_s if aec is not None else None,
                   energy_method="window mean power x training time to the target")
    return out


def training_columns(result: LoopResult, *, flops_per_token: float, peak_total: float | None, dist: DistContext,
                     warmup_steps: int, rss_baseline: float | None = None) -> dict[str, Any]:
    """The row columns every training cell has, from its loop: device, window, latency, MFU, tokens/s, tokens/J,
    memory anatomy.

    MFU counts the FLOPs of every computed position (padding included: the device ran them); tokens/s and
    tokens/J count `result.tokens` (what the axis says a token is). One process on the CPU: the peak is the RSS
    above `rss_baseline` (the process before the cell built its model); several processes keep the summed RSS
    (each rank's runtime included) and leave `mem_other_bytes` unknown.
    """
    device = dist.device
    window = result.window if dist.distributed else above_baseline(result.window, rss_baseline)
    window_s = window["window_s"]
    achieved = flops_per_token * result.computed_tokens / window_s if window_s else None
    last = result.curve[-min(TRAIN_LOSS_LAST_STEPS, len(result.curve)):]
    return {
        "device": str(device),
        "device_name": device_name(device),
        "device_count": dist.world_size,
        "num_threads": num_threads(),
        "steps": len(result.step_s),
        "warmup_steps": warmup_steps,
        **window,
        **with_rest(result.memory, None if dist.distributed else window["peak_mem_bytes"]),
        "flops_per_token": flops_per_token,
        "achieved_flops_per_s": achieved,
        "peak_flops_per_s": peak_total,  # summed over devices, like achieved_flops_per_s
        "mfu": mfu(achieved, peak_total),
        **latency_columns(result.step_s),  # AL = mean s per optimizer step, p50/p90/p99, raw samples
        "tokens_per_s": metrics.tokens_per_s(result.tokens, window_s),
        "tokens_per_j": metrics.tokens_per_j(result.tokens, window.get("energy_j")),
        "train_loss_final": sum(r["loss"] for r in last) / len(last),
    }


def curve_csv(curve: list[dict[str, Any]], fields: tuple[str, ...] = ("step", "loss")) -> str:
    """The loss curve as CSV text (a DVC plot); an empty curve keeps a header of `fields`."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(curve[0]) if curve else list(fields), lineterminator="\n")
    w.writeheader()
    for r in curve:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()
