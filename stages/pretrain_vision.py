"""DVC stage `pretrain_vision@<variant>`: train one DiT variant from scratch on the vision images, judge its
samples and write its row.

Outputs (declared in dvc.yaml): models/pretrain_vision/<variant>/ (diffusers save_pretrained: config.json +
safetensors, and the DDPM scheduler), results/pretrain_vision/<variant>/row.json, loss.csv (a DVC plot) and
samples/ (grid.png: `vision_eval.grid_per_class` samples per class, one row per class; samples.npz: every generated
image). Reads params `vision_variants.<variant>`, `pretrain_vision`, `vision_eval` and `measure`.

Bad params (unknown slug, a recipe the DiT rejects) exit 2 naming the key and write nothing. A cell that fails while
running (NaN loss, `timeout_s` / `memory_limit_mb` passed, a bug) becomes a `status='failed'` row and exits 0
(stages/cells.py); an I/O error exits 1. With `pretrain_vision.checkpoint_every_steps` a killed cell resumes from
.cache/checkpoints/pretrain_vision/<variant>/.

    python -m stages.pretrain_vision --variant gqa
"""

from __future__ import annotations

from pathlib import Path

from stages import run
from stages.cells import cell_args, require_input, run_cell, trial_name

DATA_DIR = Path("data/vision")
CLASSIFIER_DIR = Path("models/vision_classifier")


def main(argv: list[str] | None = None) -> int:
    ca = cell_args("stages.pretrain_vision", __doc__, "pretrain_vision",
                   {"--variant": "DiT recipe slug from the [vision_variants] section"}, argv)
    from efficientllm.vision.pretrain import check_single_process, dit_shape
    from efficientllm.vision.recipes import check_recipe, vision_recipe

    slug, cfg, trial = ca.args.variant, ca.cfg, ca.trial
    recipe = vision_recipe(ca.params, slug)
    veval = ca.load("vision_eval")
    check_single_process(cfg)
    require_input(DATA_DIR / "stats.json", "prepared images", "prepare_vision")

    from efficientllm.checkpoint import CHECKPOINT_ROOT
    from efficientllm.records import CellId
    from efficientllm.training import curve_csv
    from efficientllm.vision.data import load_stats
    from efficientllm.vision.pretrain import pretrain_vision_cell

    stats = load_stats(DATA_DIR)
    shape = dit_shape(cfg, stats)
    check_recipe(slug, recipe, shape)  # bad recipes fail here, before anything is written
    result_dir = Path("results/pretrain_vision") / slug
    model_dir = Path("models/pretrain_vision") / slug if trial == 0 else None
    sample_dir = result_dir / "samples" if trial == 0 else None
    checkpoint_dir = CHECKPOINT_ROOT / "pretrain_vision" / trial_name(slug, trial)
    cell = ca.cell(
        label=f"pretrain_vision@{slug}",
        identity=CellId(axis="pretrain_vision", stage="pretrain_vision", cell=slug, technique=slug, trial=trial,
                        seed=cfg.seed, dataset=stats["dataset"], batch_size=cfg.batch_size,
                        seq_len=shape.tokens_per_image),
        result_dir=result_dir, model_dirs=(model_dir,) if model_dir else (),
        failure_files=lambda status: {"loss.csv": curve_csv([]), "samples/FAILED.txt": f"{status}: no samples\n"},
        failed_columns={"extra": {"recipe": recipe}}, checkpoint_dir=checkpoint_dir,
        summary=lambda r: (f"{r['quality_metric']}={r['quality_value']:.3f} "
                           f"acc={r['extra']['sample_accuracy']:.2f} al_s={r['al_s']:.4f} "
                           f"images/s={r['extra']['images_per_s']:.0f} kv_bytes/token={r['kv_cache_bytes_per_token']} "
                           f"peak_mem={r['peak_mem_bytes'] / 2**20:.0f}MiB energy_j={r['energy_j']:.1f} "
                           f"({r['energy_source']}) duration={r['duration_s']:.1f}s"))
    return run_cell(cell, lambda dist: pretrain_vision_cell(
        cell=cell.identity, slug=slug, recipe=recipe, cfg=cfg, veval=veval, measure=ca.measure, data_dir=DATA_DIR,
        classifier_dir=CLASSIFIER_DIR, model_out=model_dir, sample_dir=sample_dir, dist=dist,
        checkpoint_dir=checkpoint_dir))


if __name__ == "__main__":
    run(main)
