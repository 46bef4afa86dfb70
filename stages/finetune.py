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

from pathlib import Path

from stages import run
from stages.cells import cell_args, require_input, run_cell, trial_name

DATA_ROOT = Path("data/sft")
MODEL_ROOT = Path("models/finetune")
RESULT_ROOT = Path("results/finetune")


def main(argv: list[str] | None = None) -> int:
    ca = cell_args("stages.finetune", __doc__, "finetune", {
        "--method": "method slug (efficientllm.techniques.METHODS)", "--dataset": "dataset slug from sft.datasets"},
        argv)
    sft, cfg, trial = ca.load("sft"), ca.cfg, ca.trial
    method, dataset = ca.args.method, ca.args.dataset
    data_dir = DATA_ROOT / dataset
    require_input(data_dir / "train.jsonl", "SFT data", f"prepare_sft@{dataset}")

    from efficientllm.checkpoint import CHECKPOINT_ROOT
    from efficientllm.examples import EXAMPLES_FILE
    from efficientllm.finetune import CellSkipped, check_cell, distributed_unsupported, finetune_cell
    from efficientllm.records import CellId
    from efficientllm.training import curve_csv

    check_cell(method, sft, cfg)  # bad params fail here, before anything is written
    name = f"{method}-{dataset}"
    # trial 0 writes the adapter and merged model; later trials only their rows (the weights are trial 0's to use)
    model_dir = MODEL_ROOT / name if trial == 0 else None
    checkpoint_dir = CHECKPOINT_ROOT / "finetune" / trial_name(name, trial)
    reason = distributed_unsupported(method, cfg.parallelism, cfg.nproc_per_node)

    def summary(r: dict) -> str:
        x = r["extra"]
        em = f" exact_match={x['exact_match']:.3f}" if x.get("exact_match") is not None else ""
        return (f"eval_loss={r['eval_loss']:.4f} (from {x['eval_loss_initial']:.4f}){em} "
                f"trainable={r['n_trainable_params']}/{r['n_params']} al_s={r['al_s']:.4f} "
                f"st={r['st_samples_per_param_s']:.3g} peak_mem={r['peak_mem_bytes'] / 2**20:.0f}MiB "
                f"adapter={x.get('adapter_size_bytes', 0) / 1024:.0f}KiB duration={r['duration_s']:.1f}s")

    cell = ca.cell(
        label=f"finetune@{name}",
        identity=CellId(axis="finetune", stage="finetune", cell=name, technique=method, model=cfg.base_model,
                        dataset=dataset, trial=trial, seed=cfg.seed, batch_size=cfg.batch_size,
                        seq_len=sft.max_seq_len),
        result_dir=RESULT_ROOT / name,
        model_dirs=(model_dir / "adapter", model_dir / "merged") if model_dir else (),
        failure_files=lambda status: {"loss.csv": curve_csv([]), EXAMPLES_FILE: ""},
        failed_columns={"extra": {"method": method}},
        skip=(CellSkipped,), skip_before_launch=CellSkipped(reason) if reason else None,
        checkpoint_dir=checkpoint_dir, summary=summary)
    return run_cell(cell, lambda dist: finetune_cell(
        cell=cell.identity, method=method, dataset=dataset, sft=sft, cfg=cfg, measure=ca.measure, data_dir=data_dir,
        out_dir=model_dir, checkpoint_dir=checkpoint_dir, dist=dist))


if __name__ == "__main__":
    run(main)
