"""How good generated images are: a Fréchet distance in a small classifier's feature space, the classifier's accuracy
on the samples per class, and (with network and real-size images) the standard Inception FID through torchmetrics.

- `FeatureClassifier`: a two-hidden-layer MLP trained once, seeded, on the training split of every class (stage
  `vision_classifier`, seconds on a CPU). Its second hidden layer (`features`) is the feature space of the Fréchet
  distance, labelled `fd_<dataset>` (e.g. `fd_digits`): the FID formula in *this* classifier's features, not FID's
  Inception-v3 features, so its values compare only with each other. Its argmax judges whether a sample shows the
  class it was asked for (`class_accuracy`).
- `frechet_distance(a, b)`: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) (Heusel et al. 2017),
  in float64 through symmetric eigendecompositions (no scipy; the matrix square root stays real and PSD).
- `fd_report`: the pooled FD of the samples against the held-out real images of the same classes (quality_value),
  the mean class-conditional FD (a model that ignores its label scores badly there, not in the pooled FD), and the
  accuracy per class.
- `inception_fid`: torchmetrics' `FrechetInceptionDistance` (`vision_eval.fd_backend: torchmetrics`). Chosen over
  torch-fidelity and clean-fid because it takes image tensors in memory (no folders of PNGs), accumulates the
  statistics in one documented metric object, and accepts any `nn.Module` as the feature extractor, so the same
  code path runs offline in the tests on a tiny random network; with `feature=2048` it is the standard FID (its
  Inception weights come from torch-fidelity, downloaded once). Imported lazily: torchmetrics is only needed there.

    python -m stages.vision_classifier     # trains the classifier: models/vision_classifier/
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from efficientllm.atomic import atomic_dir
from efficientllm.config import VisionEvalConfig
from efficientllm.vision.data import ImageSet


class FeatureClassifier(nn.Module):
    """x (N, C, H, W) -> flatten -> Linear -> SiLU -> Linear -> SiLU (`features`, N x hidden) -> Linear (logits)."""

    def __init__(self, in_features: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                  nn.SiLU())
        self.head = nn.Linear(hidden, num_classes)
        self.num_features = hidden  # torchmetrics reads this when the classifier is its feature extractor

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(train: ImageSet, val: ImageSet, cfg: VisionEvalConfig) -> tuple[FeatureClassifier, dict]:
    """Full-batch Adam on the training split (every class), seeded; returns the model and its accuracies."""
    torch.manual_seed(cfg.seed)
    x, y = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    model = FeatureClassifier(int(np.prod(train.images.shape[1:])), cfg.classifier_hidden, len(train.class_names))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.classifier_lr, weight_decay=1e-4)
    for _ in range(cfg.classifier_epochs):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    metrics = {"train_accuracy": accuracy(model, train.images, train.labels),
               "val_accuracy": accuracy(model, val.images, val.labels), "final_train_loss": float(loss.detach()),
               "val_class_accuracy": class_accuracy(model, val.images, val.labels, range(len(val.class_names)))}
    return model, metrics


@torch.no_grad()
def predict(model: FeatureClassifier, images: np.ndarray | torch.Tensor) -> np.ndarray:
    return model(torch.as_tensor(images, dtype=torch.float32)).argmax(-1).numpy()


@torch.no_grad()
def features(model: FeatureClassifier, images: np.ndarray | torch.Tensor) -> np.ndarray:
    return model.features(torch.as_tensor(images, dtype=torch.float32)).double().numpy()


def accuracy(model: FeatureClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predict(model, images) == labels).mean())


def class_accuracy(model: FeatureClassifier, images: np.ndarray, labels: np.ndarray, classes: Any) -> dict[str, float]:
    """Class id (as text) -> share of its images the classifier assigns to it."""
    pred = predict(model, images)
    return {str(c): float((pred[labels == c] == c).mean()) for c in classes if (labels == c).any()}


def save_classifier(model: FeatureClassifier, out_dir: Path, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    with atomic_dir(out_dir) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def load_classifier(model_dir: Path) -> tuple[FeatureClassifier, dict[str, Any]]:
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if not (model_dir / "model.safetensors").exists():
        raise FileNotFoundError(f"feature classifier missing: {model_dir} (run `dvc repro vision_classifier`)")
    meta = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    model = FeatureClassifier(meta["in_features"], meta["hidden"], meta["num_classes"])
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    return model.eval(), meta


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to feature rows `a` (N, D) and `b` (M, D); needs N, M >= 2."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"the Fréchet distance needs >= 2 rows on each side, got {len(a)} and {len(b)}")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrtm_psd(cov_a)
    inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)  # eigenvalues of S_a^1/2 S_b S_a^1/2 (symmetric PSD)
    trace_sqrt = float(np.sqrt(np.clip(inner, 0, None)).sum())
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)
    return max(value, 0.0)


def fd_report(classifier: FeatureClassifier, samples: np.ndarray, sample_labels: np.ndarray, reference: ImageSet,
              classes: list[int]) -> dict[str, Any]:
    """Pooled FD (samples vs the reference images of `classes`), mean class-conditional FD, accuracy per class."""
    ref = reference.subset(classes)
    gen_f, ref_f = features(classifier, samples), features(classifier, ref.images)
    per_class = {str(c): frechet_distance(gen_f[sample_labels == c], ref_f[ref.labels == c]) for c in classes}
    acc = class_accuracy(classifier, samples, sample_labels, classes)
    return {"fd": frechet_distance(gen_f, ref_f), "fd_class_mean": float(np.mean(list(per_class.values()))),
            "fd_per_class": per_class, "sample_accuracy": float(np.mean(list(acc.values()))),
            "class_accuracy": acc, "n_samples": int(len(samples)), "n_reference": int(len(ref.labels))}


def _as_unit_rgb(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (N, C, H, W) -> [0, 1] float with three channels (greyscale repeated)."""
    t = (torch.as_tensor(images, dtype=torch.float32).clamp(-1, 1) + 1) / 2
    return t.repeat(1, 3, 1, 1) if t.shape[1] == 1 else t


def inception_fid(samples: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, feature: int | nn.Module
                  = 2048, batch_size: int = 64) -> float:
    """FID of `samples` against `reference` (both [-1, 1], N x C x H x W) with torchmetrics. `feature`: an Inception
    layer (64 / 192 / 768 / 2048: needs torch-fidelity and its weights) or any nn.Module mapping [0, 1] RGB images
    to feature rows (the offline tests use a tiny random one)."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as e:
        raise RuntimeError("vision_eval.fd_backend: torchmetrics needs `pip install torchmetrics torch-fidelity` "
                           f"({e})") from None
    metric = FrechetInceptionDistance(feature=feature, normalize=True)
    for images, real in ((reference, True), (samples, False)):
        rgb = _as_unit_rgb(images)
        for start in range(0, len(rgb), batch_size):
            metric.update(rgb[start:start + batch_size], real=real)
    return float(metric.compute())
