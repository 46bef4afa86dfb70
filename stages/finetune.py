"""DVC stage `finetune@<method>-<dataset>`: fine-tune the base with one method on one SFT dataset, write its row.

Outputs (declared in dvc.yaml): models/finetune/<method>-<dataset>/adapter/ (peft format), .../merged/
(plain safetensors + tokenizer, for the quantization stage), results/finetune/<method>-<dataset>/row.json and
loss.csv (a DVC plot).

Bad params (unknown method, a missing base or data folder, max_seq_len over the base's positions) exit 2 with
one line and write nothing. A method the device cannot run (QLoRA without a 4-bit backend) becomes a
`status='skipped'` row with the reason; a cell that fails while running (NaN loss, out of memory, a bug, a failed
base, `finetune.timeout_s` / `finetune.memory_limit_mb` passed) a `status='failed'` row; both exit 0 so the sweep
and the report go on. An I/O error exits 1. With `finetune.checkpoint_every_steps`, a killed cell resumes from its
last checkpoint in .cache/checkpoints/finetune/<cell>/ on the next run (removed once the row is written).

    python -m stages.finetune --method lora --dataset arith
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stages import PARAMS_FILE, run
from stages.cells import (
    add_trial_argument,
    clear_trials,
    failed_row,
    for_trial,
    run_trials,
    trial_dir,
    trial_name,
    write_curve,
    write_failure_marker,
)

DATA_ROOT = Path("data/sft")
MODEL_ROOT = Path("models/finetune")
RESULT_ROOT = Path("results/finetune")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stages.finetune", description=__doc__)
    ap.add_argument("--method", required=True, help="method slug (efficientllm.techniques.METHODS)")
    ap.add_argument("--dataset", required=True, help="dataset slug from sft.datasets")
    ap.add_argument("--params", default=PARAMS_FILE)
    add_trial_argument(ap)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)

    from efficientllm.config import load_section, read_params

    params = read_params(args.params)
    sft = load_section(args.params, "sft", params)
    repeats = load_section(args.params, "finetune", params)
    cfg = for_trial(repeats, args.trial, "finetune")  # trial k > 0: seed + k with trial_seeds: vary
    measure = load_section(args.params, "measure", params)
    method, dataset = args.method, args.dataset
    data_dir = DATA_ROOT / dataset
    if not (data_dir / "train.jsonl").exists():
        raise FileNotFoundError(f"SFT data missing: {data_dir}/train.jsonl (run `dvc repro prepare_sft@{dataset}`)")

    from efficientllm.checkpoint import CHECKPOINT_ROOT, discard
    from efficientllm.finetune import CellSkipped, check_cell, finetune_cell
    from efficientllm.records import write_row

    check_cell(method, sft, cfg)  # bad params fail here, before anything is written
    cell = f"{method}-{dataset}"
    # trial 0 writes the adapter and merged model; later trials only their rows (the weights are trial 0's to use)
    model_dir = MODEL_ROOT / cell if args.trial == 0 else None
    result_dir = trial_dir(RESULT_ROOT / cell, args.trial)
    checkpoint_dir = CHECKPOINT_ROOT / "finetune" / trial_name(cell, args.trial)
    if args.trial == 0:
        clear_trials(RESULT_ROOT / cell)
    common = dict(axis="finetune", stage="finetune", cell=cell, technique=method, dataset=dataset,
                  model=cfg.base_model, seed=cfg.seed, trial=args.trial, batch_size=cfg.batch_size,
                  seq_len=sft.max_seq_len)
    try:
        outcome = finetune_cell(method=method, dataset=dataset, sft=sft, cfg=cfg, measure=measure,
                                data_dir=data_dir, out_dir=model_dir, checkpoint_dir=checkpoint_dir)
    except OSError:
        raise
    except Exception as e:  # skipped (the device cannot run it) or failed while running: record it as data
        status = "skipped" if isinstance(e, CellSkipped) else "failed"
        row = failed_row(e, status=status, **common, extra={"method": method})
        for sub in ("adapter", "merged") if model_dir is not None else ():
            write_failure_marker(model_dir / sub, row)
        write_curve(result_dir / "loss.csv", [])
        write_row(result_dir / "row.json", row)
        discard(checkpoint_dir)
        print(f"finetune@{cell}: {status.upper()}: {row['error'].splitlines()[0]}")
        return run_trials("stages.finetune", argv, RESULT_ROOT / cell, repeats, f"finetune@{cell}") \
            if args.trial == 0 else 0
    outcome.row["trial"] = args.trial
    write_curve(result_dir / "loss.csv", outcome.loss_curve)
    write_row(result_dir / "row.json", outcome.row)
    discard(checkpoint_dir)
    r, x = outcome.row, outcome.row["extra"]
    em = f" exact_match={x['exact_match']:.3f}" if x.get("exact_match") is not None else ""
    label = f"finetune@{cell}" + (f" trial {args.trial}" if args.trial else "")
    print(f"{label}: eval_loss={r['eval_loss']:.4f} (from {x['eval_loss_initial']:.4f}){em} "
          f"trainable={r['n_trainable_params']}/{r['n_params']} al_s={r['al_s']:.4f} "
          f"st={r['st_samples_per_param_s']:.3g} peak_mem={r['peak_mem_bytes'] / 2**20:.0f}MiB "
          f"adapter={x.get('adapter_size_bytes', 0) / 1024:.0f}KiB duration={r['duration_s']:.1f}s")
    if args.trial == 0:
        return run_trials("stages.finetune", argv, RESULT_ROOT / cell, repeats, f"finetune@{cell}")
    return 0


if __name__ == "__main__":
    run(main)
