"""DVC stage `pretrain@<variant>`: train one recipe from scratch and write its row.

Outputs (declared in dvc.yaml): models/pretrain/<variant>/ (safetensors + tokenizer),
results/pretrain/<variant>/row.json and loss.csv (a DVC plot).

Bad params (unknown slug, a recipe the model rejects) exit 2 with one line and write nothing.
A cell that fails while running (NaN loss, out of memory, `pretrain.memory_limit_mb` or `pretrain.timeout_s`
passed, a bug) becomes a `status='failed'` row and exits 0, so the sweep and the report go on; an I/O error
exits 1 and writes nothing (retryable). With `pretrain.checkpoint_every_steps`, a killed cell (kill -9,
power loss) resumes from its last checkpoint in .cache/checkpoints/pretrain/<variant>/ on the next run,
which is removed once the row is written.

Several devices: with `pretrain.nproc_per_node: N > 1` the stage re-launches itself as N ranks,
`torchrun --standalone --nproc_per_node N -m stages.pretrain --variant <slug>` (DDP or FSDP, see
efficientllm/distributed.py); rank 0 writes the outputs. If the group fails without rank 0 recording it,
the launching process writes the failed row from torchrun's last output lines. Started under torchrun
already (WORLD_SIZE set, e.g. a multi-node launch), the stage runs as one of its ranks and launches nothing.

    python -m stages.pretrain --variant mha
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

DATA_DIR = Path("data/prepared")


def _record_failure(e: BaseException, slug: str, cfg, recipe: dict, model_dir: Path | None, result_dir: Path,
                    device_count: int, trial: int = 0) -> None:
    from efficientllm.records import write_row

    row = failed_row(e, axis="pretrain", stage="pretrain", cell=slug, technique=slug, trial=trial,
                     seed=cfg.seed, batch_size=cfg.batch_size, device_count=device_count,
                     extra={"recipe": recipe})
    if model_dir is not None:  # trial 0 owns the model folder; later trials keep no model
        write_failure_marker(model_dir, row)
    write_curve(result_dir / "loss.csv", [])
    write_row(result_dir / "row.json", row)
    print(f"pretrain@{slug}: FAILED: {row['error'].splitlines()[0]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stages.pretrain", description=__doc__)
    ap.add_argument("--variant", required=True, help="recipe slug from the [variants] section")
    ap.add_argument("--params", default=PARAMS_FILE)
    add_trial_argument(ap)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)

    from efficientllm.config import ConfigError, load_section, load_variant, read_params

    params = read_params(args.params)
    slug = args.variant
    recipe = load_variant(args.params, slug, params)
    base = load_section(args.params, "model", params)
    repeats = load_section(args.params, "pretrain", params)
    cfg = for_trial(repeats, args.trial, "pretrain")  # trial k > 0: seed + k with trial_seeds: vary
    measure = load_section(args.params, "measure", params)
    if not (DATA_DIR / "train.npy").exists():
        raise FileNotFoundError(f"prepared corpus missing: {DATA_DIR}/train.npy (run `dvc repro prepare`)")

    from efficientllm.checkpoint import CHECKPOINT_ROOT, discard
    from efficientllm.distributed import (
        init_distributed,
        launch_ranks,
        micro_batching,
        shutdown,
        under_torchrun,
    )
    from efficientllm.pretrain import model_config, pretrain_cell
    from efficientllm.records import write_row

    model_dir = Path("models/pretrain") / slug if args.trial == 0 else None  # later trials keep no model
    cell_dir = Path("results/pretrain") / slug
    result_dir = trial_dir(cell_dir, args.trial)
    checkpoint_dir = CHECKPOINT_ROOT / "pretrain" / trial_name(slug, args.trial)
    # Bad recipes fail here, before anything is written.
    from transformers import AutoTokenizer

    from efficientllm.data import load_blocks

    block_len = int(load_blocks(DATA_DIR / "train.npy").shape[1])
    model_config(slug, base, recipe, AutoTokenizer.from_pretrained(DATA_DIR / "tokenizer"), block_len)
    start_trials(repeats, args.trial, cell_dir, "pretrain")
    if cfg.nproc_per_node > 1 and not under_torchrun():
        code = launch_ranks(  # the ranks get LAUNCHED_RANKS_ENV (see stages.cells.start_trials)
            "stages.pretrain", argv, cfg.nproc_per_node, device=cfg.device, section="pretrain",
            row_path=result_dir / "row.json", label=f"pretrain@{slug}",
            record_failure=lambda e: _record_failure(e, slug, cfg, recipe, model_dir, result_dir,
                                                     device_count=cfg.nproc_per_node, trial=args.trial))
        return run_trials("stages.pretrain", argv, cell_dir, repeats, f"pretrain@{slug}") \
            if code == 0 and args.trial == 0 else code
    dist = init_distributed(cfg.device) if under_torchrun() else None
    if dist is not None:
        micro_batching(cfg.batch_size, dist.world_size, cfg.micro_batch_size)  # a world that splits the batch
    try:
        outcome = pretrain_cell(slug=slug, base=base, recipe=recipe, cfg=cfg, measure=measure,
                                data_dir=DATA_DIR, model_out=model_dir, dist=dist, checkpoint_dir=checkpoint_dir)
    except (OSError, ConfigError):  # retryable I/O (exit 1), or params the device cannot run (exit 2, e.g. bf16)
        raise
    except Exception as e:  # the cell failed while running: record it as data
        if dist is None or dist.is_main:
            _record_failure(e, slug, cfg, recipe, model_dir, result_dir, dist.world_size if dist else 1, args.trial)
            discard(checkpoint_dir)
        if dist is None and args.trial == 0:
            return run_trials("stages.pretrain", argv, cell_dir, repeats, f"pretrain@{slug}")  # the index only
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
    r = outcome.row
    print(f"pretrain@{slug}{f' trial {args.trial}' if args.trial else ''}: val_ppl={r['quality_value']:.2f} "
          f"al_s={r['al_s']:.4f} tokens_per_s={r['tokens_per_s']:.0f} mfu={r['mfu'] or 0:.3f} "
          f"energy_j={r['energy_j']:.1f} ({r['energy_source']})")
    if args.trial == 0 and dist is None:
        return run_trials("stages.pretrain", argv, cell_dir, repeats, f"pretrain@{slug}")
    return 0


if __name__ == "__main__":
    run(main)
