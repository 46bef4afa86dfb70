"""DVC stage `prepare_sft@<dataset>`: read one SFT dataset, validate it, split it, write it as jsonl.

Outputs (declared in dvc.yaml): data/sft/<dataset>/ with train.jsonl, eval.jsonl and stats.json. Every record
has id, instruction, output (`<Thought>…</Thought><Output>…</Output>`), source, prompt (the plain prompt template
filled in) and, for the arith sources, answer: eval.jsonl is also the exact-match task of the quantization axis.

Bad params or bad data (unknown source, unknown key, a missing field, non-UTF-8 bytes, a JSON array where jsonl
is expected) exit 2 with one line naming the file and line or index, and write nothing.

    python -m stages.prepare_sft --dataset arith
"""

from __future__ import annotations

import json
from pathlib import Path

from stages import run, stage_parser

OUT_ROOT = Path("data/sft")


def main(argv: list[str] | None = None) -> int:
    ap = stage_parser("stages.prepare_sft", __doc__)
    ap.add_argument("--dataset", required=True, help="dataset slug from sft.datasets")
    args = ap.parse_args(argv)

    from efficientllm.config import load_section, pick

    sft = load_section(args.params, "sft")
    pick(sft.datasets, args.dataset, "[sft] datasets", "dataset")

    from efficientllm.atomic import atomic_dir
    from efficientllm.data.sft import (
        EVAL_FILE,
        SFT_STATS_FILE,
        TRAIN_FILE,
        SFTDataError,
        plain_prompt,
        split_records,
        write_jsonl_text,
    )
    from efficientllm.data.sft_sources import load_sft_source

    spec = sft.datasets[args.dataset]
    try:
        records = load_sft_source(spec, sft.seed, where=f"[sft] datasets.{args.dataset}")
    except SFTDataError as e:  # every data error names its file (or hub id)
        origin = spec.get("path") or spec.get("hub_id")
        if origin and str(origin) not in str(e):
            raise SFTDataError(f"[sft] datasets.{args.dataset} ({origin}): {e}") from None
        raise
    train, evals = split_records(records, eval_fraction=sft.eval_fraction, seed=sft.seed,
                                 max_eval_examples=sft.max_eval_examples)

    def with_prompt(rs: list[dict]) -> list[dict]:
        return [{**r, "prompt": plain_prompt(r["instruction"], sft.prompt_template)} for r in rs]

    sources = sorted({r["source"] for r in records})
    label = {
        "arith": "synthetic arithmetic word problems (seeded generator, OpenO1 format)",
        "arith_medical": "synthetic dosage arithmetic in the medical-o1 fields (seeded generator; not medical data)",
    }
    stats = {
        "dataset": args.dataset,
        "source": spec["source"],
        "label": label.get(spec["source"], f"{spec['source']} ({', '.join(sources)})"),
        "spec": spec,
        "seed": sft.seed,
        "n_records": len(records),
        "n_train": len(train),
        "n_eval": len(evals),
        "n_with_answer": sum(1 for r in records if "answer" in r),
        "eval_fraction": sft.eval_fraction,
        "prompt_template": sft.prompt_template,
    }
    if spec.get("hub_id") and not spec.get("path"):  # read from the hub: which commit it was (None offline)
        from efficientllm.hub import hub_commit

        stats["hub_commit"] = hub_commit(spec["hub_id"], spec.get("revision"), repo_type="dataset")
    out_dir = OUT_ROOT / args.dataset
    with atomic_dir(out_dir) as tmp:
        (tmp / TRAIN_FILE).write_text(write_jsonl_text(with_prompt(train)), encoding="utf-8")
        (tmp / EVAL_FILE).write_text(write_jsonl_text(with_prompt(evals)), encoding="utf-8")
        (tmp / SFT_STATS_FILE).write_text(json.dumps(stats, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"prepare_sft@{args.dataset}: {stats['label']}: {len(train)} train, {len(evals)} eval -> {out_dir}")
    return 0


if __name__ == "__main__":
    run(main)
