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

Several devices: with `finetune.nproc_per_node: N > 1` the stage re-launches itself as N ranks (torchrun, DDP or
FSDP: `finetune.parallelism`, see efficientllm/finetune.py) with the same command-line arguments; rank 0 writes
every output. If the group ends without rank 0 recording it, the launching process writes the failed row from
torchrun's last output lines. Started under torchrun already (e.g. a multi-node launch), the stage runs as one of
its ranks and launches nothing. Checkpoint/resume works for one process and DDP, not FSDP.

    python -m stages.finetune --method lora --dataset arith
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stages import PARAMS_FILE, run
from stages.cells import (
    add_trial_argument,
    failed_row,
    for_trial,
    run_trials,
    start_trials,
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
    from efficientllm.distributed import (
        init_distributed,
        launch_ranks,
        micro_batching,
        shutdown,
        under_torchrun,
    )
    from efficientllm.finetune import CellSkipped, check_cell, distributed_unsupported, finetune_cell
    from efficientllm.records import write_row

    check_cell(method, sft, cfg)  # bad params fail here, before anything is written
    cell = f"{method}-{dataset}"
    # trial 0 writes the adapter and merged model; later trials only their rows (the weights are trial 0's to use)
    model_dir = MODEL_ROOT / cell if args.trial == 0 else None
    result_dir = trial_dir(RESULT_ROOT / cell, args.trial)
    checkpoint_dir = CHECKPOINT_ROOT / "finetune" / trial_name(cell, args.trial)
    start_trials(repeats, args.trial, RESULT_ROOT / cell, "finetune")
    common = dict(axis="finetune", stage="finetune", cell=cell, technique=method, dataset=dataset,
                  model=cfg.base_model, seed=cfg.seed, trial=args.trial, batch_size=cfg.batch_size,
                  seq_len=sft.max_seq_len)

    def record(e: BaseException, device_count: int) -> None:
        """A skipped (the device cannot run it) or failed row, failure markers in place of the model, no curve."""
        status = "skipped" if isinstance(e, CellSkipped) else "failed"
        row = failed_row(e, status=status, **common, device_count=device_count, extra={"method": method})
        for sub in ("adapter", "merged") if model_dir is not None else ():
            write_failure_marker(model_dir / sub, row)
        write_curve(result_dir / "loss.csv", [])
        write_row(result_dir / "row.json", row)
        print(f"finetune@{cell}: {status.upper()}: {row['error'].splitlines()[0]}")

    if cfg.nproc_per_node > 1 and not under_torchrun():
        reason = distributed_unsupported(method, cfg.parallelism, cfg.nproc_per_node)
        if reason is not None:  # known before any rank starts: no group to launch for a skipped row
            record(CellSkipped(reason), cfg.nproc_per_node)
            code = 0
        else:
            code = launch_ranks(  # the ranks get LAUNCHED_RANKS_ENV (see stages.cells.start_trials)
                "stages.finetune", argv, cfg.nproc_per_node, device=cfg.device, section="finetune",
                row_path=result_dir / "row.json", label=f"finetune@{cell}",
                record_failure=lambda e: record(e, cfg.nproc_per_node))
        return run_trials("stages.finetune", argv, RESULT_ROOT / cell, repeats, f"finetune@{cell}") \
            if code == 0 and args.trial == 0 else code
    dist = init_distributed(cfg.device, section="finetune") if under_torchrun() else None
    if dist is not None:  # an outside launcher's world must split the batch too
        micro_batching(cfg.batch_size, dist.world_size, None, section="finetune")
    try:
        outcome = finetune_cell(method=method, dataset=dataset, sft=sft, cfg=cfg, measure=measure,
                                data_dir=data_dir, out_dir=model_dir, checkpoint_dir=checkpoint_dir, dist=dist)
    except OSError:
        raise
    except Exception as e:  # skipped or failed while running: record it as data
        if dist is None or dist.is_main:
            record(e, dist.world_size if dist else 1)
            discard(checkpoint_dir)
        if dist is None and args.trial == 0:
            return run_trials("stages.finetune", argv, RESULT_ROOT / cell, repeats, f"finetune@{cell}")
        # A rank that stops while others wait in a collective must take the group down: exiting non-zero
        # makes torchrun end the other ranks (they would otherwise hang until the collective times out).
        return 1 if dist is not None and dist.distributed else 0
    if dist is not None:
        shutdown(dist)
        if not dist.is_main:
            return 0
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
    if args.trial == 0 and dist is None:
        return run_trials("stages.finetune", argv, RESULT_ROOT / cell, repeats, f"finetune@{cell}")
    return 0


if __name__ == "__main__":
    run(main)
