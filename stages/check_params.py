"""DVC stage `check_params`: the whole params file checked before any other stage runs.

DVC deletes a stage's outputs before it runs the stage's command. A bad edit caught only by the stage itself
(an unknown key, a misspelt slug) would cost the user that cell's model and row until the next good
`dvc repro`. This stage is upstream of every other one: it parses every section, checks that every matrix
slug is defined (recipes in `variants` and `vision_variants`, datasets, hub and imported models, methods,
precisions) and that every pretraining recipe (text and DiT) builds, and fails with one line naming the key and
the nearest valid name; then nothing downstream runs and every existing output stays in place. Its out,
data/params_checked.json, lists only the sections checked (no values), so a params change re-runs just the
stages that read the changed section.

    python -m stages.check_params
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from stages import run, stage_parser

OUT = Path("data/params_checked.json")


def main(argv: list[str] | None = None) -> int:
    args = stage_parser("stages.check_params", __doc__).parse_args(argv)

    from efficientllm.atomic import atomic_write_text
    from efficientllm.config import ConfigError, check_references, did_you_mean, read_params
    from efficientllm.maps import check_sweep
    from efficientllm.models.baselines import resolve_recipe
    from efficientllm.techniques import METHODS
    from efficientllm.techniques.quantization import PRECISIONS
    from efficientllm.vision.recipes import check_vision

    params = read_params(args.params)
    parsed = check_references(params, args.params)
    matrix = parsed["matrix"]
    for key, slugs, known in (("finetune_methods", matrix.finetune_methods, METHODS),
                              ("quantize", matrix.quantize, PRECISIONS),
                              ("quantize_sft", matrix.quantize_sft, PRECISIONS),
                              ("quantize_real", matrix.quantize_real, PRECISIONS)):
        for slug in slugs:
            if slug not in known:
                raise ConfigError(f"[matrix] {key}: unknown slug {slug!r}{did_you_mean(slug, known)} "
                                  f"(known: {', '.join(known)})")
    prepare, base = parsed["prepare"], parsed["model"]
    # the recipe against the base shape and a corpus of the configured size (the real tokenizer is prepare's)
    data = {"vocab_size": prepare.vocab_size, "max_position_embeddings": prepare.block_len, "bos_token_id": 1,
            "eos_token_id": 2, "pad_token_id": 0}
    for slug in matrix.pretrain:
        try:
            resolve_recipe(dataclasses.asdict(base), dict(params["variants"][slug] or {}), data)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"[variants] {slug}: {e}") from None
    n_dit = check_vision(params, parsed, METHODS)  # the vision axis' matrices and DiT recipes
    n_maps = check_sweep(params, parsed, PRECISIONS)  # the scaling maps' variants (at sweep.shape) and precisions
    checked = sorted([*parsed, "variants", *(["vision_variants"] if "vision_variants" in params else [])])
    atomic_write_text(OUT, json.dumps({"checked": checked}, indent=1) + "\n")
    print(f"params: {len(checked)} sections checked, {len(matrix.pretrain)} recipes, {n_dit} DiT recipes and "
          f"{n_maps} scaling-map recipes build")
    return 0


if __name__ == "__main__":
    run(main)
