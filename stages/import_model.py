"""DVC stage `import_model@<slug>`: a pretrained model from a GGUF file, as a plain transformers folder.

Reads `import_model.models.<slug>` (an installed package that ships a .gguf, a local path, or a hub file) and
writes models/import/<slug>/ (declared in dvc.yaml): model.safetensors + config.json, the tokenizer, and
import.json (source, the file's sha256, its quantization, the versions that dequantized it). The quantize_real
cells and, in profiles/cpu-real.yaml, the fine-tuning cells load that folder. Not a measured cell: no row.

Bad params or a file that cannot be imported (missing package or file, not GGUF, an architecture transformers
cannot dequantize) exit 2 with one line naming it and write nothing; an I/O error exits 1.

    python -m stages.import_model --model smollm2
"""

from __future__ import annotations

import json
from pathlib import Path

from stages import run, stage_parser

OUT_ROOT = Path("models/import")


def main(argv: list[str] | None = None) -> int:
    ap = stage_parser("stages.import_model", __doc__)
    ap.add_argument("--model", required=True, help="model slug (import_model.models)")
    args = ap.parse_args(argv)

    from efficientllm.config import load_section, pick
    from efficientllm.model_import import import_gguf

    cfg = load_section(args.params, "import_model")
    pick(cfg.models, args.model, "[import_model] models", "model")
    out = OUT_ROOT / args.model
    p = import_gguf(cfg.models[args.model], out, dtype=cfg.dtype, where=f"[import_model] models.{args.model}")
    print(json.dumps({"model": args.model, "out": str(out), "source": p["model_source"], "sha256": p["file_sha256"],
                      "architecture": p["architecture"], "source_quant": p["source_quant"],
                      "n_params": p["n_params"], "dtype": p["dtype"], "dequantize_s": round(p["dequantize_s"], 1)}))
    return 0


if __name__ == "__main__":
    run(main)
