"""DVC stage `pretrain@<variant>`: train one recipe from scratch and write its row.

Outputs (declared in dvc.yaml): models/pretrain/<variant>/ (safetensors + tokenizer),
results/pretrain/<variant>/row.json and loss.csv (a DVC plot).

Bad params (unknown slug, a recipe the model rejects) exit 2 with one line and write nothing.
A cell that fails while running (NaN loss, out of memory, a bug) becomes a `status='failed'` row and
exits 0, so the sweep and the report go on; an I/O error exits 1 and writes nothing (retryable).

    python -m stages.pretrain --variant mha
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stages import PARAMS_FILE, run
from stages.cells import failed_row, write_curve, write_failure_marker

DATA_DIR = Path("data/prepared")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stages.pretrain", description=__doc__)
    ap.add_argument("--variant", required=True, help="recipe slug from the [variants] section")
    ap.add_argument("--params", default=PARAMS_FILE)
    args = ap.parse_args(argv)

    from efficientllm.config import load_section, load_variant, read_params

    params = read_params(args.params)
    slug = args.variant
    recipe = load_variant(args.params, slug, params)
    base = load_section(args.params, "model", params)
    cfg = load_section(args.params, "pretrain", params)
    measure = load_section(args.params, "measure", params)
    if not (DATA_DIR / "train.npy").exists():
        raise FileNotFoundError(f"prepared corpus missing: {DATA_DIR}/train.npy (run `dvc repro prepare`)")

    from efficientllm.pretrain import model_config, pretrain_cell
    from efficientllm.records import write_row

    model_dir = Path("models/pretrain") / slug
    result_dir = Path("results/pretrain") / slug
    # Bad recipes fail here, before anything is written.
    from transformers import AutoTokenizer

    from efficientllm.data import load_blocks

    block_len = int(load_blocks(DATA_DIR / "train.npy").shape[1])
    model_config(slug, base, recipe, AutoTokenizer.from_pretrained(DATA_DIR / "tokenizer"), block_len)
    try:
        outcome = pretrain_cell(slug=slug, base=base, recipe=recipe, cfg=cfg, measure=measure,
                                data_dir=DATA_DIR, model_out=model_dir)
    except OSError:
        raise
    except Exception as e:  # the cell failed while running: record it as data
        row = failed_row(e, axis="pretrain", stage="pretrain", cell=slug, technique=slug,
                         seed=cfg.seed, batch_size=cfg.batch_size, extra={"recipe": recipe})
        write_failure_marker(model_dir, row)
        write_curve(result_dir / "loss.csv", [])
        write_row(result_dir / "row.json", row)
        print(f"pretrain@{slug}: FAILED: {row['error'].splitlines()[0]}")
        return 0
    write_curve(result_dir / "loss.csv", outcome.loss_curve)
    write_row(result_dir / "row.json", outcome.row)
    r = outcome.row
    print(f"pretrain@{slug}: val_ppl={r['quality_value']:.2f} al_s={r['al_s']:.4f} "
          f"tokens_per_s={r['tokens_per_s']:.0f} mfu={r['mfu'] or 0:.3f} "
          f"energy_j={r['energy_j']:.1f} ({r['energy_source']})")
    return 0


if __name__ == "__main__":
    run(main)
