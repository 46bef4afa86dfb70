"""DVC stage `noise_floor`: this machine's run-to-run spread, the floor a one-trial difference must clear.

Runs one pretraining cell (`measure.noise_variant`, the pipeline's own params) `measure.noise_runs` times in this
process, nothing written but the row, and records the coefficient of variation of its timing, throughput, memory
and energy columns (efficientllm.measure.noise) as one row: axis `noise`, cell = the host. The report's tests
(efficientllm.report.stats) take a one-trial difference below 2 x that CV as not distinguishable, and test the
rest against it. A failed run is a `failed` row, as in every measured stage.

    python -m stages.noise_floor
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

from stages import run, stage_parser
from stages.cells import CellRun, run_cell

DATA_DIR = Path("data/prepared")
RESULT_DIR = Path("results/noise")


def main(argv: list[str] | None = None) -> int:
    ap = stage_parser("stages.noise_floor", __doc__)
    argv = list(argv or [])
    args = ap.parse_args(argv)

    from efficientllm.config import TrialsConfig, load_section, load_variant, read_params

    params = read_params(args.params)
    measure = load_section(args.params, "measure", params)
    base = load_section(args.params, "model", params)
    recipe = load_variant(args.params, measure.noise_variant, params)
    cfg = dataclasses.replace(load_section(args.params, "pretrain", params), checkpoint_every_steps=0, trials=1,
                              nproc_per_node=1)
    if not (DATA_DIR / "train.npy").exists():
        raise FileNotFoundError(f"prepared corpus missing: {DATA_DIR}/train.npy (run `dvc repro prepare`)")

    from efficientllm.measure.noise import noise_floor
    from efficientllm.pretrain import pretrain_cell
    from efficientllm.records import CellId, CellOutcome

    host = socket.gethostname()
    slug = measure.noise_variant
    identity = CellId(axis="noise", stage="noise_floor", cell="machine", technique=f"pretrain@{slug}",
                      seed=cfg.seed, batch_size=cfg.batch_size)
    cell = CellRun(module="stages.noise_floor", argv=argv, label="noise_floor", section="measure",
                   repeats=TrialsConfig(), identity=identity, result_dir=RESULT_DIR,
                   summary=lambda r: "CV " + ", ".join(f"{k} {v:.1%}" for k, v in r["extra"]["cv"].items()
                                                       if v is not None and k in ("al_s", "tokens_per_s", "aec_w")))

    def body(dist: object) -> CellOutcome:
        one = CellId(axis="pretrain", stage="pretrain", cell=slug, technique=slug)
        floor = noise_floor(lambda: pretrain_cell(cell=one, slug=slug, base=base, recipe=recipe, cfg=cfg,
                                                  measure=measure, data_dir=DATA_DIR, model_out=None).row,
                            measure.noise_runs,
                            progress=lambda i, r: print(f"noise_floor: run {i + 1}/{measure.noise_runs}: "
                                                        f"al_s={r['al_s']:.5f} aec_w={r['aec_w']:.3g}", flush=True))
        first = floor["rows"][0]
        keep = ("device", "device_name", "device_count", "num_threads", "dtype", "seq_len", "steps", "warmup_steps",
                "energy_source", "n_params", "al_s", "tokens_per_s", "aec_w", "window_s")
        return CellOutcome(row=identity.ok_row(
            **{k: first.get(k) for k in keep}, model=first.get("model"), dataset=first.get("dataset"),
            extra={"host": host, "runs": floor["runs"], "cv": floor["cv"], "values": floor["values"],
                   "quality_identical": floor["quality_identical"], "recipe": recipe,
                   "what": f"{floor['runs']} runs of pretrain@{slug} in one process; cv = sample sd / mean"}))

    return run_cell(cell, body)


if __name__ == "__main__":
    run(main)
