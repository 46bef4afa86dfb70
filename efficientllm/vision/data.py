"""The vision axis' images: read from a source, split per class (seeded), stored as two .npz files.

Sources (`vision.source`):
- `digits`: scikit-learn's copy of the UCI handwritten digits (1,797 labelled 8x8 greyscale images, 16 grey levels;
  `sklearn.datasets.load_digits`, no download): real data for a CPU run;
- `image_folder`: `<path>/<class name>/<image files>` (CIFAR-10 / ImageNet-style folders; classes in sorted name
  order), read with Pillow, converted to greyscale or RGB and resized (bicubic) to `image_size`;
- `hub`: a `datasets` image dataset (`hub_id` + `hub_revision`, or a local folder `load_dataset` reads), with its
  `image_column` and `label_column` (needs network for a hub id).

Pixels are scaled to [-1, 1] (the DiT's data range), images stored as float32 (N, C, H, W) with int64 labels. Every
class is split on its own (`val_fraction`, at least one image on each side) so the held-out reference set of the
Fréchet distance has every class. `stats.json` records the source, the class names, counts per split and class,
the held-out classes and the sha256 of both files.

    python -m stages.prepare_vision      # writes data/vision/{train.npz, val.npz, stats.json}
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from efficientllm.atomic import atomic_dir
from efficientllm.config import VisionConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass
class ImageSet:
    """Images (N, C, H, W) float32 in [-1, 1], labels (N,) int64, and the class names (index = label)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or len(self.images) != len(self.labels):
            raise ValueError(f"images {self.images.shape} and labels {self.labels.shape} do not match (N, C, H, W)")

    def subset(self, classes: list[int] | tuple[int, ...]) -> ImageSet:
        """The images whose label is in `classes`."""
        keep = np.isin(self.labels, list(classes))
        return ImageSet(self.images[keep], self.labels[keep], self.class_names)

    def first_per_class(self, n: int | None) -> ImageSet:
        """At most the first `n` images of every class (None: all)."""
        if n is None:
            return self
        keep = np.zeros(len(self.labels), dtype=bool)
        for c in np.unique(self.labels):
            keep[np.flatnonzero(self.labels == c)[:n]] = True
        return ImageSet(self.images[keep], self.labels[keep], self.class_names)


def _to_array(image: Any, size: int, channels: int) -> np.ndarray:
    """A PIL image -> (C, size, size) float32 in [-1, 1]."""
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load_digits_set(cfg: VisionConfig) -> ImageSet:
    """scikit-learn's digits (values 0..16) scaled to [-1, 1]; resized when image_size is not 8."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 8.0 - 1.0  # (N, 8, 8): 0..16 -> -1..1
    if cfg.image_size != 8:
        import torch

        t = torch.from_numpy(images)[:, None]
        images = torch.nn.functional.interpolate(t, size=cfg.image_size, mode="bilinear", align_corners=False)[:, 0]
        images = images.clamp(-1, 1).numpy()
    images = np.repeat(images[:, None], cfg.channels, axis=1)
    return ImageSet(images, digits.target.astype(np.int64), [str(n) for n in digits.target_names])


def load_image_folder(cfg: VisionConfig) -> ImageSet:
    """`cfg.path`/<class>/<images>; a folder without classes, an unreadable image or no image at all fail naming it."""
    from PIL import Image, UnidentifiedImageError

    if not cfg.path:
        raise ValueError("[vision] path: image_folder needs the root folder")
    root = Path(cfg.path)
    if not root.is_dir():
        raise FileNotFoundError(f"[vision] path: {root} is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"[vision] path: {root} has no class sub-folders")
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(file) as im:
                    images.append(_to_array(im, cfg.image_size, cfg.channels))
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"[vision] {file}: not a readable image ({e})") from None
            labels.append(label)
    if not images:
        raise ValueError(f"[vision] path: no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64), classes)


def load_hub(cfg: VisionConfig) -> ImageSet:
    """A `datasets` image dataset; the label column's ClassLabel names (else the label values) name the classes."""
    from datasets import load_dataset

    if not cfg.hub_id:
        raise ValueError("[vision] hub_id: the hub source needs a dataset id or a local folder")
    ds = load_dataset(cfg.hub_id, revision=cfg.hub_revision, split=cfg.hub_split)
    for column in (cfg.image_column, cfg.label_column):
        if column not in ds.column_names:
            raise ValueError(f"[vision] {cfg.hub_id}: no column {column!r} (columns: {', '.join(ds.column_names)})")
    if cfg.max_images:
        ds = ds.select(range(min(cfg.max_images, len(ds))))
    feature = ds.features[cfg.label_column]
    labels = np.asarray(ds[cfg.label_column], dtype=np.int64)
    names = list(getattr(feature, "names", None) or [str(i) for i in range(int(labels.max()) + 1)])
    images = np.stack([_to_array(im, cfg.image_size, cfg.channels) for im in ds[cfg.image_column]])
    return ImageSet(images, labels, names)


SOURCES = {"digits": load_digits_set, "image_folder": load_image_folder, "hub": load_hub}
"""`vision.source` -> loader(cfg) -> ImageSet."""


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): each class shuffled with `seed` and cut at val_fraction (>= 1 each side when
    the class has 2 images or more), both sorted."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(val_fraction * len(idx)))
        n_val = min(max(n_val, 1), len(idx) - 1) if len(idx) >= 2 else 0
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def _npz_bytes(s: ImageSet) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=s.images.astype(np.float32), labels=s.labels.astype(np.int64))
    return buf.getvalue()


def prepare_images(cfg: VisionConfig, out_dir: Path) -> dict[str, Any]:
    """Read the source, split it and write `out_dir`/{train.npz, val.npz, stats.json} atomically; returns the stats.
    Held-out classes must exist in the data (ValueError naming them)."""
    full = SOURCES[cfg.source](cfg)
    if cfg.max_images and len(full.labels) > cfg.max_images:
        keep = np.random.default_rng(cfg.seed).permutation(len(full.labels))[:cfg.max_images]
        full = ImageSet(full.images[np.sort(keep)], full.labels[np.sort(keep)], full.class_names)
    n_classes = len(full.class_names)
    bad = [c for c in cfg.heldout_classes if not 0 <= c < n_classes]
    if bad:
        raise ValueError(f"[vision] heldout_classes: {bad} are not classes of the data (0..{n_classes - 1})")
    if len(set(cfg.heldout_classes)) >= n_classes:
        raise ValueError("[vision] heldout_classes: at least one class must stay for pretraining")
    train_idx, val_idx = stratified_split(full.labels, cfg.val_fraction, cfg.seed)
    splits = {"train": ImageSet(full.images[train_idx], full.labels[train_idx], full.class_names),
              "val": ImageSet(full.images[val_idx], full.labels[val_idx], full.class_names)}
    blobs = {name: _npz_bytes(s) for name, s in splits.items()}
    stats = {
        "source": cfg.source, "dataset": dataset_name(cfg), "class_names": full.class_names,
        "num_classes": n_classes, "image_size": cfg.image_size, "channels": cfg.channels,
        "heldout_classes": list(cfg.heldout_classes),
        "pretrain_classes": [c for c in range(n_classes) if c not in cfg.heldout_classes],
        "seed": cfg.seed, "val_fraction": cfg.val_fraction,
        **{f"n_{name}": int(len(s.labels)) for name, s in splits.items()},
        **{f"{name}_per_class": np.bincount(s.labels, minlength=n_classes).tolist() for name, s in splits.items()},
        **{f"{name}_npz_sha256": hashlib.sha256(b).hexdigest() for name, b in blobs.items()},
        "hub_id": cfg.hub_id if cfg.source == "hub" else None, "hub_revision": cfg.hub_revision,
    }
    with atomic_dir(out_dir) as tmp:
        for name, blob in blobs.items():
            (tmp / f"{name}.npz").write_bytes(blob)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    return stats


def dataset_name(cfg: VisionConfig) -> str:
    """A short name of the images: `digits`, the folder's name, or the hub id's last part (the `fd_<name>` metric)."""
    if cfg.source == "digits":
        return "digits"
    raw = Path(cfg.path or "images").name if cfg.source == "image_folder" else str(cfg.hub_id).rstrip("/")
    return "".join(ch if ch.isalnum() else "_" for ch in raw.rsplit("/", 1)[-1].lower()) or "images"


def load_split(data_dir: Path, split: str) -> ImageSet:
    """One prepared split, with the class names of stats.json."""
    data_dir = Path(data_dir)
    path = data_dir / f"{split}.npz"
    if not path.exists():
        raise FileNotFoundError(f"prepared images missing: {path} (run `dvc repro prepare_vision`)")
    with np.load(path) as z:
        images, labels = z["images"], z["labels"]
    return ImageSet(images, labels, load_stats(data_dir)["class_names"])


def load_stats(data_dir: Path) -> dict[str, Any]:
    return json.loads((Path(data_dir) / "stats.json").read_text(encoding="utf-8"))
