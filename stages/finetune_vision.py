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

from stages import run
from stages.cells import cell_args, run_cell
from stages.pretrain_vision import CLASSIFIER_DIR, DATA_DIR, VisionCell


def main(argv: list[str] | None = None) -> int:
    ca = cell_args("stages.finetune_vision", __doc__, "finetune_vision",
                   {"--method": "method slug (efficientllm.techniques.METHODS, not qlora)"}, argv)
    from efficientllm.vision.finetune import check_method

    method, cfg = ca.args.method, ca.cfg
    check_method(method)
    vc = VisionCell.read(ca, method)

    from efficientllm.records import CellId
    from efficientllm.vision.finetune import finetune_vision_cell

    cell = ca.cell(
        label=f"finetune_vision@{method}",
        identity=CellId(axis="finetune_vision", stage="finetune_vision", cell=method, technique=method,
                        model=cfg.base_model, dataset=vc.stats["dataset"], trial=ca.trial, seed=cfg.seed,
                        batch_size=cfg.batch_size),
        **vc.run_fields(), failed_columns={"extra": {"method": method}},
        summary=lambda r: (f"{r['quality_metric']}={r['quality_value']:.3f} (from {r['extra']['fd_initial']:.3f}) "
                           f"acc={r['extra']['sample_accuracy']:.2f} trainable={r['n_trainable_params']}/"
                           f"{r['n_params']} al_s={r['al_s']:.4f} st={r['st_samples_per_param_s']:.3g} "
                           f"peak_mem={r['peak_mem_bytes'] / 2**20:.0f}MiB duration={r['duration_s']:.1f}s"))
    return run_cell(cell, lambda dist: finetune_vision_cell(
        cell=cell.identity, method=method, cfg=cfg, veval=vc.veval, measure=ca.measure, data_dir=DATA_DIR,
        classifier_dir=CLASSIFIER_DIR, out_dir=vc.model_dir, sample_dir=vc.sample_dir, dist=dist))


if __name__ == "__main__":
    run(main)
