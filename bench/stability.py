"""How stable are the measurements? One pretrain cell run N times; the coefficient of variation of AL, TT and AEC.

Each run is the real cell (`efficientllm.pretrain.pretrain_cell`, the params file's `model`, `pretrain` and
`measure` sections, the prepared corpus) with nothing written: no model, no row, no checkpoint. The spread between
runs is the noise floor of a comparison between two cells: a difference smaller than about twice the CV is not
a finding. Target: CV <= 5 % on an idle machine (README, "Getting stable numbers"). The quality columns must not
vary at all on CPU (same seed), and the script says so when they do.

Prints a table and one JSON line (`{"bench": "stability", ...}`) for scripts.

    OMP_WAIT_POLICY=PASSIVE python bench/stability.py [--variant mha] [--runs 5] [--cooldown-s 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

METRICS = {  # label -> (row column, unit)
    "AL": ("al_s", "s/step"),
    "TT": ("tt_tokens_per_param_s", "tokens/param/s"),
    "AEC": ("aec_w", "W"),
}


def coefficient_of_variation(values: list[float]) -> float | None:
    """Sample standard deviation / mean; None with fewer than two values or a zero mean."""
    if len(values) < 2 or not statistics.fmean(values):
        return None
    return statistics.stdev(values) / abs(statistics.fmean(values))


def _fmt(v: float | None) -> str:
    return f"{v:12.5g}" if v is not None else f"{'-':>12}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="mha", help="recipe slug from the params file's [variants]")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data-dir", default="data/prepared", help="the prepared corpus (`dvc repro prepare`)")
    ap.add_argument("--cooldown-s", type=float, default=0.0,
                    help="idle seconds before each run (GPU: let clocks and temperature settle)")
    args = ap.parse_args()
    if args.runs < 2:
        ap.error("--runs must be >= 2")

    import torch

    from efficientllm.config import load_section, load_variant
    from efficientllm.measure import device_name
    from efficientllm.pretrain import pretrain_cell
    from efficientllm.records import CellId

    cfg = dataclasses.replace(load_section(args.params, "pretrain"), checkpoint_every_steps=0)
    kw = dict(cell=CellId(axis="pretrain", stage="pretrain", cell=args.variant),
              slug=args.variant, base=load_section(args.params, "model"), cfg=cfg,
              recipe=load_variant(args.params, args.variant), measure=load_section(args.params, "measure"),
              data_dir=Path(args.data_dir), model_out=None)
    rows = []
    for i in range(args.runs):
        if args.cooldown_s:
            time.sleep(args.cooldown_s)
        row = pretrain_cell(**kw).row
        rows.append(row)
        print(f"run {i + 1}/{args.runs}: al_s={row['al_s']:.5f} tt={row['tt_tokens_per_param_s']:.4g} "
              f"aec_w={row['aec_w']:.2f} val_ppl={row['quality_value']:.4f}", flush=True)

    result = {"bench": "stability", "variant": args.variant, "runs": args.runs, "device": rows[0]["device"],
              "device_name": device_name(torch.device(rows[0]["device"])),
              "num_threads": rows[0]["num_threads"], "energy_source": rows[0].get("energy_source"),
              "steps_per_run": rows[0]["steps"]}
    print(f"\n{args.variant}: {args.runs} runs on {result['device_name']} ({result['num_threads']} threads, "
          f"{result['steps_per_run']} measured steps each, energy: {result['energy_source']})")
    print(f"{'metric':<6} {'column':<24} {'mean':>12} {'stdev':>12} {'min':>12} {'max':>12} {'CV':>8}")
    for label, (col, unit) in METRICS.items():
        values = [float(r[col]) for r in rows if r.get(col) is not None]
        cv = coefficient_of_variation(values)
        mean = statistics.fmean(values) if values else None
        sd = statistics.stdev(values) if len(values) > 1 else None
        result[label] = {"column": col, "unit": unit, "mean": mean, "stdev": sd, "cv": cv, "values": values}
        print(f"{label:<6} {col:<24} {_fmt(mean)} {_fmt(sd)} {_fmt(min(values) if values else None)} "
              f"{_fmt(max(values) if values else None)} {(f'{cv:.1%}' if cv is not None else '-'):>8}")
    quality = {r["quality_value"] for r in rows}
    result["quality_identical"] = len(quality) == 1
    print("quality (val_ppl): " + ("identical in every run" if len(quality) == 1 else f"VARIES: {sorted(quality)}"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
