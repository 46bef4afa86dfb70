"""DVC stage `vision_classifier`: the feature classifier behind the vision axis' Fréchet distance, trained once.

A small MLP (efficientllm/vision/quality.py) trained, seeded, on the training split of every class in
data/vision/. Its second hidden layer is the feature space of `fd_<dataset>`; its argmax scores whether a generated
image shows the class it was asked for. Writes models/vision_classifier/{model.safetensors, config.json} (the
config holds its train / validation accuracy). Seconds on a CPU.

    python -m stages.vision_classifier
"""

from __future__ import annotations

import json
from pathlib import Path

from stages import run, stage_parser

DATA_DIR = Path("data/vision")
OUT_DIR = Path("models/vision_classifier")


def main(argv: list[str] | None = None) -> int:
    args = stage_parser("stages.vision_classifier", __doc__).parse_args(argv)

    import numpy as np

    from efficientllm.config import load_section
    from efficientllm.vision.data import load_split, load_stats
    from efficientllm.vision.quality import save_classifier, train_classifier

    cfg = load_section(args.params, "vision_eval")
    train, val = load_split(DATA_DIR, "train"), load_split(DATA_DIR, "val")
    model, scores = train_classifier(train, val, cfg)
    stats = load_stats(DATA_DIR)
    meta = {"in_features": int(np.prod(train.images.shape[1:])), "hidden": cfg.classifier_hidden,
            "num_classes": len(train.class_names), "class_names": train.class_names, "dataset": stats["dataset"],
            "seed": cfg.seed, "epochs": cfg.classifier_epochs, "lr": cfg.classifier_lr,
            "train_npz_sha256": stats.get("train_npz_sha256"), **scores}
    save_classifier(model, OUT_DIR, meta)
    print("vision_classifier: " + json.dumps({k: v for k, v in scores.items() if not isinstance(v, dict)}))
    return 0


if __name__ == "__main__":
    run(main)
