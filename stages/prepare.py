"""DVC stage `prepare`: the pretraining corpus, its tokenizer and packed blocks in data/prepared/.

    python -m stages.prepare            # reads [prepare] from params.yaml
    python -m stages.prepare --params p.yaml   # e.g. prepare.source: fineweb_edu (hub or local shards)
"""

from __future__ import annotations

import json

from stages import run, stage_parser

OUT_DIR = "data/prepared"


def main(argv: list[str] | None = None) -> int:
    ap = stage_parser("stages.prepare", __doc__)
    args = ap.parse_args(argv)

    from efficientllm.config import load_section
    from efficientllm.data import build_corpus
    from efficientllm.data.fineweb import fineweb_source_kwargs

    cfg = load_section(args.params, "prepare")
    source_kwargs: dict = {}
    if cfg.source == "text_files":
        source_kwargs = {"paths": list(cfg.source_paths)}
    elif cfg.source == "fineweb_edu":
        source_kwargs = fineweb_source_kwargs(cfg)
    provenance = {}
    if cfg.source == "fineweb_edu" and not cfg.source_paths:  # streamed from the hub: record which commit
        from efficientllm.hub import hub_commit

        provenance["hub_commit"] = hub_commit(cfg.hub_id, cfg.hub_revision, repo_type="dataset")
    stats = build_corpus(
        OUT_DIR,
        source=cfg.source,
        source_kwargs=source_kwargs,
        vocab_size=cfg.vocab_size,
        block_len=cfg.block_len,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        min_doc_chars=cfg.min_doc_chars,
        max_docs=cfg.max_docs,
        provenance=provenance,
    )
    print(json.dumps({k: v for k, v in stats.items() if not isinstance(v, dict)}, indent=1))
    return 0


if __name__ == "__main__":
    run(main)
