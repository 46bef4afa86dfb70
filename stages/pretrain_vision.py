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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages import run
from stages.cells import CellArgs, cell_args, require_input, run_cell, trial_name

DATA_DIR = Path("data/vision")
CLASSIFIER_DIR = Path("models/vision_classifier")


@dataclass
class VisionCell:
    """What the two DiT stages (pretrain_vision, finetune_vision) share: the prepared images' stats, the judging
    params, and the cell's folders (trial 0 writes the model and the samples, later trials only their rows)."""

    veval: Any
    stats: dict[str, Any]
    result_dir: Path
    model_dir: Path | None
    sample_dir: Path | None

    @classmethod
    def read(cls, ca: CellArgs, name: str) -> VisionCell:
        """Refuses a multi-process cell and missing prepared images (exit 2) before anything is written."""
        from efficientllm.vision.data import load_stats
        from efficientllm.vision.pretrain import check_single_process

        check_single_process(ca.cfg)
        require_input(DATA_DIR / "stats.json", "prepared images", "prepare_vision")
        result_dir = Path("results") / ca.section / name
        first = ca.trial == 0
        return cls(ca.load("vision_eval"), load_stats(DATA_DIR), result_dir,
                   Path("models") / ca.section / name if first else None, result_dir / "samples" if first else None)

    def run_fields(self) -> dict[str, Any]:
        """The CellRun fields of a DiT cell: its folders and the side files of a failed one."""
        from efficientllm.training import curve_csv

        return {"result_dir": self.result_dir, "model_dirs": (self.model_dir,) if self.model_dir else (),
                "failure_files": lambda status: {"loss.csv": curve_csv([]),
                                                 "samples/FAILED.txt": f"{status}: no samples\n"}}


def main(argv: list[str] | None = None) -> int:
    ca = cell_args("stages.pretrain_vision", __doc__, "pretrain_vision",
                   {"--variant": "DiT recipe slug from the [vision_variants] section"}, argv)
    from efficientllm.vision.pretrain import dit_shape
    from efficientllm.vision.recipes import check_recipe, vision_recipe

    slug, cfg, trial = ca.args.variant, ca.cfg, ca.trial
    recipe = vision_recipe(ca.params, slug)
    vc = VisionCell.read(ca, slug)

    from efficientllm.checkpoint import CHECKPOINT_ROOT
    from efficientllm.records import CellId
    from efficientllm.vision.pretrain import pretrain_vision_cell

    shape = dit_shape(cfg, vc.stats)
    check_recipe(slug, recipe, shape)  # bad recipes fail here, before anything is written
    checkpoint_dir = CHECKPOINT_ROOT / "pretrain_vision" / trial_name(slug, trial)
    cell = ca.cell(
        label=f"pretrain_vision@{slug}",
        identity=CellId(axis="pretrain_vision", stage="pretrain_vision", cell=slug, technique=slug, trial=trial,
                        seed=cfg.seed, dataset=vc.stats["dataset"], batch_size=cfg.batch_size,
                        seq_len=shape.tokens_per_image),
        **vc.run_fields(), failed_columns={"extra": {"recipe": recipe}}, checkpoint_dir=checkpoint_dir,
        summary=lambda r: (f"{r['quality_metric']}={r['quality_value']:.3f} "
                           f"acc={r['extra']['sample_accuracy']:.2f} al_s={r['al_s']:.4f} "
                           f"images/s={r['extra']['images_per_s']:.0f} kv_bytes/token={r['kv_cache_bytes_per_token']} "
                           f"peak_mem={r['peak_mem_bytes'] / 2**20:.0f}MiB energy_j={r['energy_j']:.1f} "
                           f"({r['energy_source']}) duration={r['duration_s']:.1f}s"))
    return run_cell(cell, lambda dist: pretrain_vision_cell(
        cell=cell.identity, slug=slug, recipe=recipe, cfg=cfg, veval=vc.veval, measure=ca.measure,
        data_dir=DATA_DIR, classifier_dir=CLASSIFIER_DIR, model_out=vc.model_dir, sample_dir=vc.sample_dir, dist=dist,
        checkpoint_dir=checkpoint_dir))


if __name__ == "__main__":
    run(main)
