"""DVC stage `finetune_vision@<method>`: adapt the pretrained DiT to the held-out classes with one PEFT method and
write its row.

Outputs (declared in dvc.yaml): models/finetune_vision/<method>/ (the peft adapter, or the trained DiT for freeze /
full), results/finetune_vision/<method>/row.json, loss.csv and samples/ (grid.png of the held-out classes,
samples.npz). Reads params `finetune_vision`, `vision_eval` and `measure`.

Bad params (an unknown method, qlora) exit 2 and write nothing; a failed base DiT, a NaN loss or a bug become a
`status='failed'` row (exit 0, stages/cells.py).

    python -m stages.finetune_vision --method dora
"""

from __future__ import annotations

from pathlib import Path

from stages import run
from stages.cells import cell_args, require_input, run_cell

DATA_DIR = Path("data/vision")
CLASSIFIER_DIR = Path("models/vision_classifier")


def main(argv: list[str] | None = None) -> int:
    ca = cell_args("stages.finetune_vision", __doc__, "finetune_vision",
                   {"--method": "method slug (efficientllm.techniques.METHODS, not qlora)"}, argv)
    from efficientllm.vision.finetune import check_method
    from efficientllm.vision.pretrain import check_single_process

    method, cfg, trial = ca.args.method, ca.cfg, ca.trial
    veval = ca.load("vision_eval")
    check_method(method)
    check_single_process(cfg)
    require_input(DATA_DIR / "stats.json", "prepared images", "prepare_vision")

    from efficientllm.records import CellId
    from efficientllm.training import curve_csv
    from efficientllm.vision.data import load_stats
    from efficientllm.vision.finetune import finetune_vision_cell

    stats = load_stats(DATA_DIR)
    result_dir = Path("results/finetune_vision") / method
    model_dir = Path("models/finetune_vision") / method if trial == 0 else None
    sample_dir = result_dir / "samples" if trial == 0 else None
    cell = ca.cell(
        label=f"finetune_vision@{method}",
        identity=CellId(axis="finetune_vision", stage="finetune_vision", cell=method, technique=method,
                        model=cfg.base_model, dataset=stats["dataset"], trial=trial, seed=cfg.seed,
                        batch_size=cfg.batch_size),
        result_dir=result_dir, model_dirs=(model_dir,) if model_dir else (),
        failure_files=lambda status: {"loss.csv": curve_csv([]), "samples/FAILED.txt": f"{status}: no samples\n"},
        failed_columns={"extra": {"method": method}},
        summary=lambda r: (f"{r['quality_metric']}={r['quality_value']:.3f} (from {r['extra']['fd_initial']:.3f}) "
                           f"acc={r['extra']['sample_accuracy']:.2f} trainable={r['n_trainable_params']}/"
                           f"{r['n_params']} al_s={r['al_s']:.4f} st={r['st_samples_per_param_s']:.3g} "
                           f"peak_mem={r['peak_mem_bytes'] / 2**20:.0f}MiB duration={r['duration_s']:.1f}s"))
    return run_cell(cell, lambda dist: finetune_vision_cell(
        cell=cell.identity, method=method, cfg=cfg, veval=veval, measure=ca.measure, data_dir=DATA_DIR,
        classifier_dir=CLASSIFIER_DIR, out_dir=model_dir, sample_dir=sample_dir, dist=dist))


if __name__ == "__main__":
    run(main)
