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

from pathlib import Path

from stages import run
from stages.cells import cell_args, require_input, run_cell, trial_name

DATA_DIR = Path("data/prepared")


def main(argv: list[str] | None = None) -> int:
    ca = cell_args("stages.pretrain", __doc__, "pretrain", {"--variant": "recipe slug from the [variants] section"},
                   argv)
    from efficientllm.config import load_variant

    slug, cfg, trial = ca.args.variant, ca.cfg, ca.trial
    recipe = load_variant(ca.args.params, slug, ca.params)
    base = ca.load("model")
    require_input(DATA_DIR / "train.npy", "prepared corpus", "prepare")

    from transformers import AutoTokenizer

    from efficientllm.checkpoint import CHECKPOINT_ROOT
    from efficientllm.data import load_blocks
    from efficientllm.examples import EXAMPLES_FILE
    from efficientllm.pretrain import model_config, pretrain_cell
    from efficientllm.records import CellId
    from efficientllm.training import curve_csv

    block_len = int(load_blocks(DATA_DIR / "train.npy").shape[1])
    # Bad recipes fail here, before anything is written.
    model_config(slug, base, recipe, AutoTokenizer.from_pretrained(DATA_DIR / "tokenizer"), block_len)
    model_dir = Path("models/pretrain") / slug if trial == 0 else None  # later trials keep no model
    checkpoint_dir = CHECKPOINT_ROOT / "pretrain" / trial_name(slug, trial)
    cell = ca.cell(
        label=f"pretrain@{slug}",
        identity=CellId(axis="pretrain", stage="pretrain", cell=slug, technique=slug, trial=trial,
                        seed=cfg.seed, batch_size=cfg.batch_size, seq_len=block_len),
        result_dir=Path("results/pretrain") / slug, model_dirs=(model_dir,) if model_dir else (),
        failure_files=lambda status: {"loss.csv": curve_csv([]), EXAMPLES_FILE: ""},
        failed_columns={"extra": {"recipe": recipe}},
        checkpoint_dir=checkpoint_dir,
        summary=lambda r: (f"val_ppl={r['quality_value']:.2f} al_s={r['al_s']:.4f} "
                           f"tokens_per_s={r['tokens_per_s']:.0f} mfu={r['mfu'] or 0:.3f} "
                           f"energy_j={r['energy_j']:.1f} ({r['energy_source']})"))
    return run_cell(cell, lambda dist: pretrain_cell(
        cell=cell.identity, slug=slug, base=base, recipe=recipe, cfg=cfg, measure=ca.measure, data_dir=DATA_DIR,
        model_out=model_dir, dist=dist, checkpoint_dir=checkpoint_dir))


if __name__ == "__main__":
    run(main)
