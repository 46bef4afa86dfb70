"""DVC stage `prepare_vision`: the vision axis' images, split per class (seeded), in data/vision/.

Reads params `vision` (source: digits | image_folder | hub; see efficientllm/vision/data.py) and writes
data/vision/{train.npz, val.npz, stats.json}. Bad params (a missing folder, held-out classes the data does not have)
exit 2 naming the key.

    python -m stages.prepare_vision
"""

from __future__ import annotations

from pathlib import Path

from stages import run, stage_parser

OUT_DIR = Path("data/vision")


def main(argv: list[str] | None = None) -> int:
    args = stage_parser("stages.prepare_vision", __doc__).parse_args(argv)

    from efficientllm.config import load_section
    from efficientllm.vision.data import prepare_images

    stats = prepare_images(load_section(args.params, "vision"), OUT_DIR)
    print(f"prepare_vision: {stats['dataset']}: {stats['n_train']} train / {stats['n_val']} val images of "
          f"{stats['num_classes']} classes ({stats['channels']}x{stats['image_size']}x{stats['image_size']}); "
          f"held out of pretraining: {stats['heldout_classes']}")
    return 0


if __name__ == "__main__":
    run(main)
