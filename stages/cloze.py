"""DVC stage `cloze`: the cloze task's items from the held-out documents, in data/cloze/ (test.jsonl, meta.json).

A stage of its own (not part of `prepare`) so that changing the cloze settings re-runs only the quantize cells,
never the tokenizer and the pretraining. No torch: it takes a second or two.

    python -m stages.cloze              # reads [cloze] from params.yaml
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from stages import run, stage_parser

VAL_DOCS = Path("data/prepared/val_docs.jsonl")
OUT_DIR = Path("data/cloze")


def main(argv: list[str] | None = None) -> int:
    ap = stage_parser("stages.cloze", __doc__)
    args = ap.parse_args(argv)

    from efficientllm.config import load_section
    from efficientllm.data.cloze import build_cloze, read_documents, write_cloze

    cfg = load_section(args.params, "cloze")
    if not VAL_DOCS.exists():
        raise FileNotFoundError(f"held-out documents missing: {VAL_DOCS} (run `dvc repro prepare`)")
    items = build_cloze(read_documents(VAL_DOCS), n_choices=cfg.n_choices, context_words=cfg.context_words,
                        continuation_words=cfg.continuation_words, items_per_doc=cfg.items_per_doc,
                        max_items=cfg.max_items, max_choice_chars=cfg.max_choice_chars, seed=cfg.seed)
    if not items:
        raise ValueError("the cloze settings produced no item: lower cloze.context_words or continuation_words")
    write_cloze(OUT_DIR, items, {"source": str(VAL_DOCS), **dataclasses.asdict(cfg)})
    print(json.dumps({"items": len(items), "n_choices": cfg.n_choices, "chance_acc": 1 / cfg.n_choices}))
    return 0


if __name__ == "__main__":
    run(main)
