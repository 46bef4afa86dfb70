"""How stable are the measurements, and under which OpenMP wait policy? One workload run N times per policy.

Each run is a fresh process (OpenMP reads its wait policy once, when torch loads it). Workloads:

- `pretrain` (default): the real cell (`efficientllm.pretrain.pretrain_cell`, the params file's `model`, `pretrain`
  and `measure` sections, the prepared corpus) with nothing written: no model, no row, no checkpoint. Figures: AL,
  TT, AEC; the quality columns must not vary at all on CPU (same seed), and the script says so when they do.
- `generate`: a plain `model.generate` loop (the default profile's decoder, random weights, batch 1, a 32-token
  prompt, 16 new tokens, greedy), each request timed with perf_counter: the small-kernel work of decoding.
  Figure: the median request latency of the run.

`--omp-wait-policy passive,active` runs every policy in every round, the order alternating (A B, B A, ...) so drift
hits both alike, and prints per policy the median and the coefficient of variation (CV) of each figure, and the
median over rounds of the paired ratio to the first policy. The spread between runs is the noise floor of a
comparison between two cells: a difference smaller than about twice the CV is not a finding. Target: CV <= 5 % on
an idle machine (README, "Getting stable numbers"). Without the flag the policy is the params file's
`measure.omp_wait_policy`, as in the stages.

Prints a table and one JSON line (`{"bench": "stability", ...}`) for scripts.

    python bench/stability.py [--variant mha] [--runs 5] [--workload pretrain|generate] \
        [--omp-wait-policy passive,active] [--cooldown-s 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_TAG = "STABILITY_RUN "
"""A child run's result line: the tag, then one JSON object."""

METRICS = {  # workload -> label -> (figure, unit)
    "pretrain": {"AL": ("al_s", "s/step"), "TT": ("tt_tokens_per_param_s", "tokens/param/s"), "AEC": ("aec_w", "W")},
    "generate": {"latency": ("request_s_p50", "s/request")},
}


def coefficient_of_variation(values: list[float]) -> float | None:
    """Sample standard deviation / mean; None with fewer than two values or a zero mean."""
    if len(values) < 2 or not statistics.fmean(values):
        return None
    return statistics.stdev(values) / abs(statistics.fmean(values))


def _fmt(v: float | None) -> str:
    return f"{v:12.5g}" if v is not None else f"{'-':>12}"


# --- one run (a child process) ----------------------------------------------------------------------------------------


def run_pretrain(args: argparse.Namespace) -> dict:
    from efficientllm.config import load_section, load_variant
    from efficientllm.pretrain import pretrain_cell
    from efficientllm.records import CellId

    cfg = dataclasses.replace(load_section(args.params, "pretrain"), checkpoint_every_steps=0)
    row = pretrain_cell(cell=CellId(axis="pretrain", stage="pretrain", cell=args.variant), slug=args.variant,
                        base=load_section(args.params, "model"), cfg=cfg,
                        recipe=load_variant(args.params, args.variant), measure=load_section(args.params, "measure"),
                        data_dir=Path(args.data_dir), model_out=None).row
    return {k: row[k] for k in ("al_s", "tt_tokens_per_param_s", "aec_w", "quality_value", "device", "num_threads",
                                "energy_source", "steps")}


def run_generate(args: argparse.Namespace) -> dict:
    import torch

    from efficientllm.config import load_section
    from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM

    base = load_section(args.params, "model")
    torch.manual_seed(0)
    model = EfficientLMForCausalLM(EfficientLMConfig(**dataclasses.asdict(base), vocab_size=2048,
                                                     max_position_embeddings=128)).eval()
    prompt = torch.randint(0, 2048, (1, 32), generator=torch.Generator().manual_seed(0))
    kw = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)
    times = []
    with torch.inference_mode():
        model.generate(prompt, **kw)  # warm-up
        for _ in range(args.requests):
            t0 = time.perf_counter()
            model.generate(prompt, **kw)
            times.append(time.perf_counter() - t0)
    return {"request_s_p50": statistics.median(times), "device": "cpu", "num_threads": torch.get_num_threads(),
            "requests": args.requests}


def child(args: argparse.Namespace) -> None:
    out = run_pretrain(args) if args.workload == "pretrain" else run_generate(args)
    out["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    print(RUN_TAG + json.dumps(out), flush=True)


# --- the comparison ---------------------------------------------------------------------------------------------------


def one_run(args: argparse.Namespace, policy: str | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--workload", args.workload, "--variant",
           args.variant, "--params", args.params, "--data-dir", args.data_dir, "--requests", str(args.requests)]
    if policy is not None:
        cmd += ["--child-policy", policy]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RUN_TAG)]
    if proc.returncode or not lines:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len(RUN_TAG):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="mha", help="recipe slug from the params file's [variants] (pretrain)")
    ap.add_argument("--runs", type=int, default=5, help="runs per policy")
    ap.add_argument("--workload", choices=tuple(METRICS), default="pretrain")
    ap.add_argument("--requests", type=int, default=10, help="generate: timed requests per run")
    ap.add_argument("--omp-wait-policy", default=None,
                    help="comma-separated policies to compare (passive, active, inherit); default: the params file's")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data-dir", default="data/prepared", help="the prepared corpus (`dvc repro prepare`)")
    ap.add_argument("--cooldown-s", type=float, default=0.0,
                    help="idle seconds before each run (GPU: let clocks and temperature settle)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-policy", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(REPO))
        if args.child_policy in ("passive", "active"):
            os.environ["OMP_WAIT_POLICY"] = args.child_policy.upper()  # before torch loads
        elif args.child_policy is None:
            from stages import apply_omp_wait_policy

            apply_omp_wait_policy(["--params", args.params])
        child(args)
        return
    if args.runs < 2:
        ap.error("--runs must be >= 2")
    policies: list[str | None] = [None]
    if args.omp_wait_policy:
        policies = [p.strip() for p in args.omp_wait_policy.split(",") if p.strip()]
        bad = [p for p in policies if p not in ("passive", "active", "inherit")]
        if bad:
            ap.error(f"--omp-wait-policy: unknown policy {bad[0]!r} (passive, active, inherit)")

    runs: dict[str | None, list[dict]] = {p: [] for p in policies}
    for i in range(args.runs):
        order = policies if i % 2 == 0 else policies[::-1]
        for policy in order:
            if args.cooldown_s:
                time.sleep(args.cooldown_s)
            out = one_run(args, policy)
            runs[policy].append(out)
            figures = " ".join(f"{col}={out[col]:.5g}" for col, _ in METRICS[args.workload].values()
                               if out.get(col) is not None)
            print(f"run {i + 1}/{args.runs} policy={out['omp_wait_policy']}: {figures}", flush=True)

    first = runs[policies[0]][0]
    result: dict = {"bench": "stability", "workload": args.workload, "variant": args.variant, "runs": args.runs,
                    "device": first["device"], "num_threads": first["num_threads"], "policies": {}}
    print(f"\n{args.workload} ({args.variant if args.workload == 'pretrain' else 'generate loop'}): {args.runs} runs "
          f"per policy, {first['num_threads']} threads")
    print(f"{'policy':<10} {'metric':<8} {'median':>12} {'mean':>12} {'min':>12} {'max':>12} {'CV':>8} "
          f"{'vs ' + str(policies[0]):>10}")
    for policy in policies:
        label = policy or (runs[policy][0]["omp_wait_policy"] or "unset").lower()
        entry: dict = {"omp_wait_policy": runs[policy][0]["omp_wait_policy"]}
        for metric, (col, unit) in METRICS[args.workload].items():
            values = [float(r[col]) for r in runs[policy] if r.get(col) is not None]
            base = [float(r[col]) for r in runs[policies[0]] if r.get(col) is not None]
            ratio = statistics.median(v / b for v, b in zip(values, base, strict=False)) if values and base else None
            cv = coefficient_of_variation(values)
            entry[metric] = {"column": col, "unit": unit, "median": statistics.median(values) if values else None,
                             "cv": cv, "ratio_to_first": ratio, "values": values}
            print(f"{label:<10} {metric:<8} {_fmt(entry[metric]['median'])} "
                  f"{_fmt(statistics.fmean(values) if values else None)} {_fmt(min(values) if values else None)} "
                  f"{_fmt(max(values) if values else None)} {(f'{cv:.1%}' if cv is not None else '-'):>8} "
                  f"{(f'{ratio:.3f}' if ratio is not None else '-'):>10}")
        if args.workload == "pretrain":
            quality = {r["quality_value"] for r in runs[policy]}
            entry["quality_identical"] = len(quality) == 1
            print(f"{label:<10} quality (val_ppl): "
                  + ("identical in every run" if len(quality) == 1 else f"VARIES: {sorted(quality)}"))
        result["policies"][label] = entry
    print(json.dumps(result))


if __name__ == "__main__":
    main()
