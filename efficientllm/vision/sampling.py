"""Generating images with a trained DiT (diffusers' DDIM sampler) and saving them as a PNG grid.

`noise_scheduler` is the DDPM schedule training uses (diffusers `DDPMScheduler`; the model predicts the noise, the
clean image or the velocity: `pretrain_vision.prediction_type`, saved with the model); sampling runs
diffusers' `DDIMScheduler` built from the same config (eta 0: deterministic given the starting noise, which comes
from a seeded generator, so every cell is judged on the same noise). With `guidance_scale != 1` each step runs the
model twice, with the label and with the null label, and mixes the two noise predictions (classifier-free guidance,
Ho & Salimans 2022).

    python -m stages.pretrain_vision --variant mha     # samples after training, writes samples/grid.png
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch


def noise_scheduler(train_timesteps: int, beta_schedule: str, prediction_type: str = "epsilon") -> Any:
    """The training schedule: diffusers' DDPMScheduler (clean images clipped to [-1, 1] when a step predicts them)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=train_timesteps, beta_schedule=beta_schedule,
                         prediction_type=prediction_type, clip_sample=True)


@torch.no_grad()
def sample_images(model: Any, scheduler_config: Any, labels: np.ndarray, *, steps: int, guidance_scale: float,
                  seed: int, batch_size: int, device: torch.device,
                  autocast: contextlib.AbstractContextManager | None = None) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] of the class `labels` (N,), `steps` DDIM steps from seeded noise."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    c, size = int(model.config.in_channels), int(model.config.sample_size)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(labels), c, size, size, generator=generator)  # CPU noise: the same on every device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(labels), batch_size):
        x = noise[start:start + batch_size].to(device)
        y = torch.as_tensor(labels[start:start + batch_size], device=device)
        for t in scheduler.timesteps:
            with autocast or contextlib.nullcontext():
                eps = _guided_eps(model, x, t, y, guidance_scale)
            x = scheduler.step(eps.float(), t, x).prev_sample
        out.append(x.clamp(-1, 1).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


def _guided_eps(model: Any, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    timestep = t.expand(len(x)).to(x.device)
    if scale == 1.0:
        return model(x, timestep=timestep, class_labels=y).sample
    null = torch.full_like(y, int(model.config.num_embeds_ada_norm))
    both = model(torch.cat([x, x]), timestep=torch.cat([timestep, timestep]), class_labels=torch.cat([y, null])).sample
    cond, uncond = both.chunk(2)
    return uncond + scale * (cond - uncond)


def sample_labels(classes: list[int], per_class: int) -> np.ndarray:
    """Labels `per_class` times each class, grouped by class."""
    return np.repeat(np.asarray(classes, dtype=np.int64), per_class)


GRID_FILE = "grid.png"
SAMPLES_FILE = "samples.npz"


def grid_image(images: np.ndarray, labels: np.ndarray, classes: list[int], per_class: int, cell_px: int = 32) -> Any:
    """A PIL image with one row per class, `per_class` samples each, upscaled (nearest) to `cell_px`, 2 px gaps."""
    from PIL import Image

    c, h, w = images.shape[1:]
    scale = max(1, cell_px // max(h, w))
    gap = 2
    canvas = np.full((len(classes) * (h * scale + gap) + gap, per_class * (w * scale + gap) + gap, 3), 255, np.uint8)
    for r, k in enumerate(classes):
        for col, img in enumerate(images[labels == k][:per_class]):
            pixels = ((img.transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8)  # (H, W, C)
            pixels = np.repeat(np.repeat(pixels, scale, 0), scale, 1)
            if c == 1:
                pixels = np.repeat(pixels, 3, 2)
            y0, x0 = gap + r * (h * scale + gap), gap + col * (w * scale + gap)
            canvas[y0:y0 + h * scale, x0:x0 + w * scale] = pixels
    return Image.fromarray(canvas)


def write_samples(out_dir: Path, images: np.ndarray, labels: np.ndarray, classes: list[int], per_class: int) -> Path:
    """`out_dir`/grid.png (the report shows it) and samples.npz (every generated image and its label), written as
    one folder atomically; returns the grid's path."""
    from efficientllm.atomic import atomic_dir

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        grid_image(images, labels, classes, per_class).save(tmp / GRID_FILE, format="PNG")
        np.savez_compressed(tmp / SAMPLES_FILE, images=images.astype(np.float16), labels=labels)
    return out_dir / GRID_FILE
