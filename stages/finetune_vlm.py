"""DVC stage `finetune_vlm@<model>-<method>`: fine-tune one hub vision-language model with one method on image +
text SFT rows (efficientllm/vision/vlm.py) and write its row (axis finetune_vision).

Outputs: results/finetune_vision/vlm-<model>-<method>/{row.json, loss.csv}. Reads params `finetune_vlm` and `measure`;
no cells in the default profile (`matrix.finetune_vlm: []`): profiles/paper-vision.yaml names Qwen2.5-VL and SmolVLM
(needs network: HF_HUB_OFFLINE=0, and a GPU for their size).

    python -m stages.finetune_vlm --model smolvlm --method lora
"""

from __future__ import annotations

from pathlib import Path

from stages import run
from stages.cells import cell_args, run_cell


def main(argv: list[str] | None = None) -> int:
    ca = cell_args("stages.finetune_vlm", __doc__, "finetune_vlm", {
        "--model": "model slug of finetune_vlm.models", "--method": "method slug (efficientllm.techniques.METHODS)"},
        argv)
    from efficientllm.config import ConfigError
    from efficientllm.techniques import METHODS

    args, cfg = ca.args, ca.cfg
    if args.model not in cfg.models:
        raise ConfigError(f"[finetune_vlm] models: no model {args.model!r} (defined: {', '.join(cfg.models)})")
    if args.method not in METHODS:
        raise ConfigError(f"[matrix] finetune_vlm_methods: unknown method {args.method!r}")

    from efficientllm.records import CellId
    from efficientllm.training import curve_csv
    from efficientllm.vision.vlm import finetune_vlm_cell

    spec = dict(cfg.models[args.model])
    name = f"vlm-{args.model}-{args.method}"
    cell = ca.cell(
        label=f"finetune_vlm@{args.model}-{args.method}",
        identity=CellId(axis="finetune_vision", stage="finetune_vlm", cell=name, technique=args.method,
                        model=spec["id"], dataset=Path(cfg.data).name, trial=args.trial, seed=cfg.seed,
                        batch_size=cfg.batch_size),
        result_dir=Path("results/finetune_vision") / name,
        failure_files=lambda status: {"loss.csv": curve_csv([])}, failed_columns={"extra": {"method": args.method}},
        summary=lambda r: (f"eval_loss={r['quality_value']:.4f} (from {r['extra']['eval_loss_initial']:.4f}) "
                           f"al_s={r['al_s']:.3f} trainable={r['n_trainable_params']}/{r['n_params']}"))
    return run_cell(cell, lambda dist: finetune_vlm_cell(
        cell=cell.identity, slug=args.model, spec=spec, method=args.method, cfg=cfg, measure=ca.measure,
        data_dir=Path(cfg.data), dist=dist))


if __name__ == "__main__":
    run(main)
