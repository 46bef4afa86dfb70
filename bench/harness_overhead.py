"""What do the measurement trackers cost? The same training loop with every tracker on vs off.

"On" is exactly what a pretrain cell runs inside its measured window: a `StepTimer` around each step
(device sync at both edges) and a `MeasurementWindow` around the loop (background memory sampler
thread, CPU-time / NVML utilisation, energy counter). "Off" is the bare loop, timed once around all
steps. Rounds alternate off/on so drift (thermal, other load) hits both alike; the figure is the
ratio of the median per-step times, on / off. Target: <= 1.01.

The model is the default profile's decoder (params.yaml `model`, vocab 2048, T=128, B=8) on seeded
random tokens: the work per step is what matters, not the text.

    OMP_WAIT_POLICY=PASSIVE python bench/harness_overhead.py [--rounds 6] [--steps 30]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from efficientllm.config import load_section  # noqa: E402
from efficientllm.measure import MeasurementWindow, StepTimer, device_name, resolve_device, synchronize  # noqa: E402
from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM  # noqa: E402


def build(device: torch.device, vocab: int, block_len: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    base = load_section("params.yaml", "model")
    cfg = EfficientLMConfig(**dataclasses.asdict(base), vocab_size=vocab, max_position_embeddings=block_len)
    torch.manual_seed(0)
    model = EfficientLMForCausalLM(cfg).to(device).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def run_round(model, opt, batches, device, tracked: bool, interval_s: float) -> float:
    """Mean seconds per step over `batches`, with or without the trackers."""

    def step(batch):
        out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss.detach())  # both modes read the loss every step, as the pretrain loop does

    synchronize(device)
    t0 = time.perf_counter()
    if tracked:
        timer = StepTimer(sync=lambda: synchronize(device))
        with MeasurementWindow(device, interval_s=interval_s, watts_per_core=4.0):
            for b in batches:
                with timer.step():
                    step(b)
    else:
        with contextlib.nullcontext():
            for b in batches:
                step(b)
    synchronize(device)
    return (time.perf_counter() - t0) / len(batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6, help="off/on pairs")
    ap.add_argument("--steps", type=int, default=30, help="steps per round")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--block-len", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--interval-s", type=float, default=0.05, help="sampler interval (params: measure)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    device = resolve_device(args.device)
    model, opt = build(device, args.vocab, args.block_len)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, args.vocab, (args.batch_size, args.block_len), generator=g).to(device)
               for _ in range(args.steps)]
    run_round(model, opt, batches[:5], device, tracked=False, interval_s=args.interval_s)  # warm-up, same shapes

    off, on = [], []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)  # alternate which goes first
        for tracked in order:
            s = run_round(model, opt, batches, device, tracked, args.interval_s)
            (on if tracked else off).append(s)

    m_off, m_on = statistics.median(off), statistics.median(on)
    ratio = m_on / m_off
    print(f"device: {device_name(device)} ({device}), threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"{'mode':<6} {'median s/step':>14} {'min':>9} {'max':>9}   rounds")
    for name, xs in (("off", off), ("on", on)):
        print(f"{name:<6} {statistics.median(xs):>14.5f} {min(xs):>9.5f} {max(xs):>9.5f}   "
              + " ".join(f"{x:.4f}" for x in xs))
    verdict = "meets" if ratio <= 1.01 else "misses"
    print(f"overhead ratio on/off = {ratio:.4f} ({verdict} the <= 1.01 target)")
    print(json.dumps({"bench": "harness_overhead", "ratio_on_off": round(ratio, 5), "median_s_per_step_off": m_off,
                      "median_s_per_step_on": m_on, "rounds": args.rounds, "steps": args.steps,
                      "device": str(device), "device_name": device_name(device)}))


if __name__ == "__main__":
    main()
