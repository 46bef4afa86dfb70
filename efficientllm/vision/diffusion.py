"""What the two DiT cells share (pretraining a variant, fine-tuning with a PEFT method): the denoising step that
efficientllm.training's one measured loop runs, the judging of the trained model (samples, Fréchet distance,
accuracy per class, the PNG grid) and the row columns.

The training objective is DDPM denoising (Ho et al. 2020): a clean batch x0, a timestep t ~ U{0..T-1} and a
Gaussian noise e per image, x_t = sqrt(a_t) x0 + sqrt(1 - a_t) e (diffusers `DDPMScheduler.add_noise`), loss =
MSE(model(x_t, t, y), target) (+ the MoE load-balancing loss), the target being e (epsilon), x0 (sample) or the
velocity sqrt(a_t) e - sqrt(1 - a_t) x0 (v_prediction), as `pretrain_vision.prediction_type` says. Labels are
replaced by the null class with probability `class_dropout` (classifier-free guidance). The batch order, the noise
and the timesteps of step s are pure functions of (seed, s), so a resumed run sees the same batches as an
uninterrupted one.

What a token is here: one image patch (an image is (image_size / patch_size)^2 tokens), so `tokens_per_s`, TT and
energy per token count patch tokens; images per second, energy per image and the sampler's speed are in `extra`.
FLOPs come from `torch.utils.flop_counter` on one forward + backward of the model as the cell trains it.

    python -m stages.pretrain_vision --variant mha      # a cell that runs this
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from efficientllm.config import DiTConfig, VisionEvalConfig
from efficientllm.distributed import DistContext
from efficientllm.measure import metrics
from efficientllm.training import LoopResult, StepWork, training_columns
from efficientllm.vision.data import ImageSet
from efficientllm.vision.dit import aux_loss
from efficientllm.vision.quality import FeatureClassifier, fd_report
from efficientllm.vision.sampling import sample_images, sample_labels, write_samples


def compute_context(device: torch.device, dtype: str) -> tuple[contextlib.AbstractContextManager, str]:
    """bf16 autocast (weights stay fp32) or plain fp32; auto: bf16 on a CUDA device that supports it."""
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16), "bfloat16"
    return contextlib.nullcontext(), "float32"


def _denoise_batch(images: torch.Tensor, labels: torch.Tensor, scheduler: Any, step: int, *, seed: int,
                   batch_size: int, class_dropout: float, null_class: int) -> tuple[torch.Tensor, ...]:
    """(x_t, t, y, target) of step `step`: a pure function of (seed, step)."""
    idx = np.random.default_rng((seed, step)).choice(len(labels), size=batch_size, replace=batch_size > len(labels))
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    x0, y = images[idx], labels[idx].clone()
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, int(scheduler.config.num_train_timesteps), (batch_size,), generator=g)
    y[torch.rand(batch_size, generator=g) < class_dropout] = null_class
    kind = scheduler.config.prediction_type  # the regression target: noise, clean image or velocity
    target = noise if kind == "epsilon" else x0 if kind == "sample" else scheduler.get_velocity(x0, noise, t)
    return scheduler.add_noise(x0, noise, t), t, y, target


def denoise_step(model: nn.Module, data: ImageSet, scheduler: Any, *, batch_size: int, seed: int,
                 class_dropout: float, device: torch.device, autocast: contextlib.AbstractContextManager,
                 tokens_per_image: int) -> tuple[Any, Any]:
    """(step_fn, probe): step_fn(step) -> StepWork runs one optimizer step's forward + backward of the denoising loss
    on batch `step`; probe() runs step 0's forward alone (the memory anatomy's activation bytes)."""
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    batch = dict(seed=seed, batch_size=batch_size, class_dropout=class_dropout,
                 null_class=int(model.config.num_embeds_ada_norm))
    tokens = batch_size * tokens_per_image

    def loss_of(step: int) -> torch.Tensor:
        xt, t, y, target = (v.to(device, non_blocking=True)
                            for v in _denoise_batch(images, labels, scheduler, step, **batch))
        with autocast:
            pred = model(xt, timestep=t, class_labels=y).sample
            loss = nn.functional.mse_loss(pred.float(), target)
            extra = aux_loss(model)
            return loss + extra if extra is not None else loss

    def step_fn(step: int) -> StepWork:
        loss = loss_of(step)
        loss.backward()
        return StepWork(loss=loss.detach(), tokens=tokens, computed_tokens=tokens)

    return step_fn, lambda: loss_of(0)


def training_flops_per_token(model: nn.Module, device: torch.device, tokens_per_image: int) -> dict[str, float]:
    """FLOPs per patch token of one forward, and of forward + backward as the model trains (frozen weights get no
    weight gradient), counted by torch.utils.flop_counter on a 2-image batch; gradients are cleared after."""
    from torch.utils.flop_counter import FlopCounterMode

    c, s = int(model.config.in_channels), int(model.config.sample_size)
    x = torch.zeros(2, c, s, s, device=device)
    t = torch.zeros(2, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            model(x, timestep=t, class_labels=t)
    with FlopCounterMode(display=False) as train:
        model(x, timestep=t, class_labels=t).sample.float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    per = 2 * tokens_per_image
    return {"forward": fwd.get_total_flops() / per, "training": train.get_total_flops() / per}


@dataclass
class Judged:
    """The generated images judged: the FD report, sampling time, the grid's path."""

    report: dict[str, Any]
    sample_s: float
    n_samples: int
    grid: Path | None


def judge(model: nn.Module, scheduler: Any, classifier: FeatureClassifier, reference: ImageSet, classes: list[int],
          veval: VisionEvalConfig, device: torch.device, autocast: contextlib.AbstractContextManager,
          sample_dir: Path | None) -> Judged:
    """Sample `samples_per_class` images of each class (seeded noise), score them against the held-out reference
    images of the same classes, and write the samples folder (grid.png, samples.npz) when `sample_dir` is given."""
    labels = sample_labels(classes, veval.samples_per_class)
    t0 = time.perf_counter()
    samples = sample_images(model, scheduler.config, labels, steps=veval.sample_steps,
                            guidance_scale=veval.guidance_scale, seed=veval.seed, batch_size=veval.sample_batch_size,
                            device=device, autocast=autocast)
    sample_s = time.perf_counter() - t0
    reference = reference.first_per_class(veval.reference_per_class)
    report = fd_report(classifier, samples, labels, reference, classes)
    if veval.fd_backend == "torchmetrics":
        from efficientllm.vision.quality import inception_fid

        report["fid"] = inception_fid(samples, reference.subset(classes).images, feature=veval.fid_feature)
    grid = write_samples(sample_dir, samples, labels, classes, veval.grid_per_class) if sample_dir else None
    return Judged(report, sample_s, len(labels), grid)


def quality_of(judged: Judged, veval: VisionEvalConfig, dataset: str) -> tuple[str, float]:
    """(quality_metric, quality_value): `fid` with the torchmetrics backend, else `fd_<dataset>`."""
    if veval.fd_backend == "torchmetrics":
        return "fid", judged.report["fid"]
    return f"fd_{dataset}", judged.report["fd"]


def vision_columns(loop: LoopResult, *, flops: dict[str, float], peak_total: float | None, dist: DistContext,
                   cfg: DiTConfig, n_params: int) -> dict[str, Any]:
    """The row's training columns (efficientllm.training) plus TT over patch tokens and ST over images."""
    window_s = loop.window["window_s"]
    images = cfg.batch_size * len(loop.step_s)
    columns = training_columns(loop, flops_per_token=flops["training"], peak_total=peak_total, dist=dist,
                               warmup_steps=loop.window_start - loop.start)
    columns.update(tt_tokens_per_param_s=metrics.tt_tokens_per_param_s(loop.tokens, n_params, window_s),
                   st_samples_per_param_s=metrics.st_samples_per_param_s(images, n_params, window_s))
    return columns


def throughput_facts(loop: LoopResult, judged: Judged, cfg: DiTConfig, tokens_per_image: int,
                     flops: dict[str, float]) -> dict[str, Any]:
    """`extra` fields per image: training images/s and J/image, the sampler's images/s, the FLOP counts."""
    window_s, energy = loop.window["window_s"], loop.window.get("energy_j")
    images = cfg.batch_size * len(loop.step_s)
    return {
        "token_unit": f"image patch ({tokens_per_image} per image)",
        "tokens_per_image": tokens_per_image,
        "window_images": images,
        "images_per_s": metrics.tokens_per_s(images, window_s),
        "energy_j_per_image": energy / images if energy is not None and images else None,
        "sampling_s": judged.sample_s,
        "sampling_images_per_s": judged.n_samples / judged.sample_s if judged.sample_s else None,
        "forward_flops_per_token": flops["forward"],
        "flops_method": "torch.utils.flop_counter: one forward + backward as trained, per patch token",
    }


def judged_facts(judged: Judged, veval: VisionEvalConfig, classes: list[int]) -> dict[str, Any]:
    """`extra` fields of the judging: FD details, accuracy per class, sampler settings, the grid's path."""
    r = judged.report
    return {
        "fd_pooled": r["fd"], "fd_class_mean": r["fd_class_mean"], "fd_per_class": r["fd_per_class"],
        "fid": r.get("fid"), "sample_accuracy": r["sample_accuracy"], "class_accuracy": r["class_accuracy"],
        "n_samples": r["n_samples"], "n_reference": r["n_reference"], "classes": classes,
        "sample_steps": veval.sample_steps, "guidance_scale": veval.guidance_scale, "sampler": "ddim (eta 0)",
        "fd_feature_space": (f"vision_classifier second hidden layer ({veval.classifier_hidden} features); "
                             "not Inception FID"),
        "samples_png": judged.grid.as_posix() if judged.grid else None,
    }
