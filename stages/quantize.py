"""DVC stages `quantize@<precision>`, `quantize_sft@<precision>`, `quantize_hub@<model>-<precision>`,
`quantize_real@<model>-<precision>`: one model at one precision, measured.

Loads the model at the precision (efficientllm.techniques.quantization.PRECISIONS), runs the fixed greedy workload
(latency pass, then the tracker pass), checks the largest batch in the memory budget, and scores held-out
perplexity and the stage's lm-eval tasks (params `eval.tasks.<stage>`). Outputs (declared in dvc.yaml):
results/quantize/<model>-<precision>/row.json and samples.json (every request's end-to-end time, TTFT and decode
steps); all three stages write under results/quantize/, so the report depends on one folder.
MCR and the quality gate compare against the bf16 cell of the same stage and model: the `quantize` SQL view of
the report computes them (a cell cannot depend on a sibling cell of its own DVC matrix).

Bad params (unknown precision or hub model, a task with no data file) exit 2 and write nothing. A precision the
device cannot run is a `status='skipped'` row with the reason; a cell that fails while running is a
`status='failed'` row; both exit 0. An I/O error exits 1 and writes nothing (retryable).

    python -m stages.quantize --stage quantize --precision int4 --model base --model-dir models/pretrain/mha
    python -m stages.quantize --stage quantize_hub --precision int4 --hub-model qwen2p5-7b   # needs network
    python -m stages.quantize --stage quantize_real --precision int4 --model smollm2 --model-dir models/import/smollm2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from stages import run, stage_parser
from stages.cells import CellRun, add_trial_argument, for_trial, run_cell

DATA_DIR = Path("data/prepared")
RESULTS_DIR = Path("results/quantize")
SECTIONS = {"quantize": "quantize", "quantize_sft": "quantize", "quantize_hub": "quantize_hub",
            "quantize_real": "quantize_real"}
"""Stage -> the params section of its workload: hub and imported models have sections of their own, so a workload
sized for them never re-runs or breaks the pipeline's own quantize cells."""
PER_MODEL = ("quantize_hub", "quantize_real")
"""Stages whose DVC matrix is model x precision (cells `<stage>@<model>-<precision>`)."""


def main(argv: list[str] | None = None) -> int:
    ap = stage_parser("stages.quantize", __doc__)
    ap.add_argument("--stage", required=True, choices=SECTIONS, help="the DVC stage name")
    ap.add_argument("--precision", required=True, help="precision slug (matrix.quantize)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", help="a save_pretrained directory made by an earlier stage (with --model)")
    src.add_argument("--hub-model", help="a slug of quantize_hub.models (hub id + revision)")
    ap.add_argument("--model", help="slug of the --model-dir model in cell names: base | sft | an import_model slug")
    add_trial_argument(ap)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)

    from efficientllm.config import SLUG_RE, ConfigError, load_section, pick, read_params

    if (args.hub_model is not None) != (args.stage == "quantize_hub"):
        raise ConfigError("--hub-model goes with --stage quantize_hub, and every other stage takes --model-dir")
    params = read_params(args.params)
    section = SECTIONS[args.stage]
    repeats = load_section(args.params, section, params)
    cfg = for_trial(repeats, args.trial, section)  # trial k > 0: seed + k with trial_seeds: vary
    eval_cfg = load_section(args.params, "eval", params)
    measure = load_section(args.params, "measure", params)
    if args.stage not in eval_cfg.tasks:
        raise ConfigError(f"[eval] tasks: no task list for stage {args.stage!r} (have: {', '.join(eval_cfg.tasks)})")
    tasks = list(eval_cfg.tasks[args.stage])

    from efficientllm.techniques.quantization import PRECISIONS, PrecisionUnsupported

    if args.precision not in PRECISIONS:
        raise ConfigError(f"[matrix] quantize: unknown precision {args.precision!r} (known: {', '.join(PRECISIONS)})")
    if args.hub_model is not None:
        spec = pick(cfg.models, args.hub_model, "[quantize_hub] models", "model")
        model_ref, revision, model_name = spec["id"], spec.get("revision"), spec["id"]
        name = f"{args.hub_model}-{args.precision}"
        from efficientllm.hub import hub_commit, is_commit

        if not is_commit(revision):  # resolve a moving reference once, then load exactly that commit
            commit = hub_commit(model_ref, revision)
            print(f"warning: quantize_hub.models.{args.hub_model}: revision {revision!r} is not a commit sha; "
                  + (f"loading the commit it names now, {commit} (recorded in the row)" if commit else
                     "the hub cannot be asked, so the row records no commit"))
            revision = commit or revision
    else:
        if not args.model or not SLUG_RE.match(args.model):
            raise ConfigError(f"--model-dir needs --model <slug> (lowercase letters, digits, - _), got {args.model!r}")
        model_ref, revision, name = Path(args.model_dir), None, f"{args.model}-{args.precision}"
        model_name = model_ref.as_posix().removeprefix("models/")
        if not model_ref.is_dir():
            raise FileNotFoundError(f"model directory missing: {model_ref} (run its DVC stage first)")
        if not (model_ref / "FAILED.json").exists():  # a failed upstream cell becomes this cell's failed row
            from efficientllm.checkpoint import require_safetensors

            require_safetensors(model_ref, "--model-dir")  # no weights, or pickle weights only: refused
    for path in (DATA_DIR / "val_docs.jsonl", DATA_DIR / "stats.json"):
        if not path.exists():
            raise FileNotFoundError(f"prepared corpus missing: {path} (run `dvc repro prepare`)")

    from efficientllm.evaluation import task_configs
    from efficientllm.examples import EXAMPLES_FILE
    from efficientllm.inference import check_workload, quantize_cell
    from efficientllm.records import CellId

    # Bad params fail here, before anything is written: a missing task data file, a workload that does not fit.
    task_configs(tasks, eval_cfg.tasks_dir, eval_cfg.data_files)
    local_config = Path(model_ref) / "config.json" if args.hub_model is None else None
    max_pos = None
    if local_config is not None and local_config.is_file():
        max_pos = json.loads(local_config.read_text()).get("max_position_embeddings")
    check_workload(cfg, max_pos)
    cell = CellRun(
        module="stages.quantize", argv=argv, section=section, repeats=repeats,
        label=f"{args.stage}@{name if args.stage in PER_MODEL else args.precision}",  # the DVC stage name
        identity=CellId(axis="quantize", stage=args.stage, cell=name, technique=args.precision, model=model_name,
                        trial=args.trial, seed=cfg.seed, batch_size=cfg.batch_size, seq_len=cfg.prompt_len),
        result_dir=RESULTS_DIR / name,
        failure_files=lambda status: {"samples.json": json.dumps({"status": status, "requests": []}) + "\n",
                                      EXAMPLES_FILE: ""},
        failed_columns={"extra": {"precision": args.precision, "model_source": str(model_ref),
                                  "model_revision": revision, "quality_gate_ratio": cfg.quality_gate_ratio}},
        skip=(PrecisionUnsupported,), summary=_summary)

    def body(dist: object) -> object:
        outcome = quantize_cell(cell=cell.identity, precision=args.precision, model_ref=model_ref,
                                revision=revision, cfg=cfg, eval_cfg=eval_cfg, tasks=tasks, measure=measure,
                                data_dir=DATA_DIR)
        if args.hub_model is not None:  # the commit that was loaded: the pin, or what a moving ref named at load
            outcome.row["extra"]["model_commit"] = revision if is_commit(revision) else None
        return outcome

    return run_cell(cell, body)


def _summary(r: dict) -> str:
    return (f"{r['quality_metric']}={_fmt(r['quality_value'])} val_ppl={_fmt(r['extra']['val_ppl'])} "
            f"weight_bytes={r['model_size_bytes']:.0f} ttft_p50={_fmt(r['ttft_s_p50'])}s "
            f"tpot_p50={_fmt(r['tpot_s_p50'])}s it={_fmt(r['it_tokens_per_s'])} tok/s "
            f"energy_j={_fmt(r['energy_j'])} ({r['energy_source']}) in {r['duration_s']:.1f}s")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


if __name__ == "__main__":
    run(main)
