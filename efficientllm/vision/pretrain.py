"""Pretraining one DiT variant from scratch (`pretrain_vision@<variant>`): its model, its loop, its row.

Every variant gets the same images (the classes not held out), batch, step budget, seed, schedule, measured window
(efficientllm.training.train_measured: AL, AMU, PCU, AEC, MFU, peak memory) and judging (the same seeded noise, the
same classifier, the same held-out reference images), so a difference between rows comes from the attention (or
feed-forward) variant alone. Quality: the Fréchet distance of the samples in the feature classifier's space
(`fd_<dataset>`, lower is better; efficientllm.vision.quality), with the classifier's accuracy on them per class.

    python -m stages.pretrain_vision --variant mqa     # the DVC stage that calls `pretrain_vision_cell`
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from efficientllm.atomic import atomic_dir
from efficientllm.checkpoint import RUN_KNOBS, CellGuard, Checkpointer, cell_key, code_digest
from efficientllm.config import ConfigError, MeasureConfig, PretrainVisionConfig, VisionEvalConfig
from efficientllm.distributed import DistContext, single_process
from efficientllm.models.accounting import count_parameters
from efficientllm.models.moe import expert_load_summary
from efficientllm.records import CellId, CellOutcome
from efficientllm.training import curve_csv, measured_peak, train_measured, warmup_cosine
from efficientllm.vision.data import load_split, load_stats
from efficientllm.vision.diffusion import (
    compute_context,
    denoise_step,
    judge,
    judged_facts,
    quality_of,
    throughput_facts,
    training_flops_per_token,
    vision_columns,
)
from efficientllm.vision.dit import VisionDiT, describe, kv_bytes_per_token
from efficientllm.vision.quality import load_classifier
from efficientllm.vision.recipes import DiTShape, check_recipe
from efficientllm.vision.sampling import noise_scheduler


def dit_shape(cfg: PretrainVisionConfig, stats: dict[str, Any]) -> DiTShape:
    """The base shape: `pretrain_vision`'s width / depth / heads / patch on the prepared images."""
    return DiTShape(image_size=stats["image_size"], channels=stats["channels"], num_classes=stats["num_classes"],
                    patch_size=cfg.patch_size, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                    num_attention_heads=cfg.num_attention_heads)


def check_single_process(cfg: Any) -> None:
    """The vision cells run in one process (a DiT of this size fits one device); ConfigError otherwise."""
    if cfg.nproc_per_node != 1:
        raise ConfigError(f"[{cfg.SECTION}] nproc_per_node={cfg.nproc_per_node}: the vision cells run in one "
                          "process (set 1)")


def _optimizer(model: torch.nn.Module, cfg: PretrainVisionConfig) -> torch.optim.Optimizer:
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": matrices, "weight_decay": cfg.weight_decay},
                              {"params": others, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))


def _trajectory_key(slug: str, recipe: dict[str, Any], cfg: PretrainVisionConfig, stats: dict[str, Any]) -> str:
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_KNOBS}
    here = Path(__file__).resolve().parent
    return cell_key("pretrain_vision", slug, recipe, train, stats.get("train_npz_sha256"), code_digest([here]))


def pretrain_vision_cell(*, cell: CellId, slug: str, recipe: dict[str, Any], cfg: PretrainVisionConfig,
                         veval: VisionEvalConfig, measure: MeasureConfig, data_dir: Path, classifier_dir: Path,
                         model_out: Path | None, sample_dir: Path | None, dist: DistContext | None = None,
                         checkpoint_dir: Path | None = None) -> CellOutcome:
    """Train variant `slug` on the pretraining classes, judge its samples, save it (`model_out`, safetensors via
    diffusers' save_pretrained) and return its row. TrainingDiverged on a NaN loss (the stage records it)."""
    t_cell = time.perf_counter()
    check_single_process(cfg)
    stats = load_stats(data_dir)
    classes = stats["pretrain_classes"]
    train = load_split(data_dir, "train").subset(classes)
    reference = load_split(data_dir, "val")
    classifier, _ = load_classifier(classifier_dir)
    shape = dit_shape(cfg, stats)
    kwargs = check_recipe(slug, recipe, shape)
    dist = dist or single_process(cfg.device)
    device = dist.device
    torch.manual_seed(cfg.seed)
    model = VisionDiT(**kwargs).to(device).train()
    params = count_parameters(model)  # active: less the experts a token is not routed to (MoE)
    n_params = params["total"]
    autocast, dtype_name = compute_context(device, cfg.dtype)
    compute_dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float32
    flops = training_flops_per_token(model, device, shape.tokens_per_image)
    scheduler = noise_scheduler(cfg.train_timesteps, cfg.beta_schedule, cfg.prediction_type)
    opt = _optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.steps, cfg.lr_warmup_steps, cfg.min_lr_ratio))
    peak, peak_total = measured_peak(device, compute_dtype, measure, dist)
    checkpointer = (Checkpointer(checkpoint_dir, _trajectory_key(slug, recipe, cfg, stats), cfg.checkpoint_every_steps)
                    if checkpoint_dir is not None and cfg.checkpoint_every_steps else None)
    step_fn, probe = denoise_step(model, train, scheduler, batch_size=cfg.batch_size, seed=cfg.seed,
                           class_dropout=cfg.class_dropout, device=device, autocast=autocast,
                           tokens_per_image=shape.tokens_per_image)
    loop = train_measured(step_fn, section="pretrain_vision", model=model, optimizer=opt, scheduler=sched,
                          steps=cfg.steps, warmup_steps=cfg.measure_warmup_steps,
                          clip_params=list(model.parameters()), grad_clip=cfg.grad_clip, dist=dist, measure=measure,
                          progress=("images", cfg.batch_size),
                          guard=CellGuard(cfg.timeout_s, cfg.memory_limit_mb, "pretrain_vision"),
                          checkpointer=checkpointer, probe=probe)
    expert_load = expert_load_summary(model)
    judged = judge(model, scheduler, classifier, reference, classes, veval, device, autocast, sample_dir)
    if model_out is not None:
        with atomic_dir(model_out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            scheduler.save_pretrained(tmp / "scheduler")
    metric, value = quality_of(judged, veval, stats["dataset"])
    row = cell.ok_row(
        technique=slug, model=f"dit-{n_params / 1e6:.2f}M", dataset=stats["dataset"], dtype=dtype_name,
        batch_size=cfg.batch_size, seq_len=shape.tokens_per_image, seed=cfg.seed, n_params=n_params,
        n_active_params=params["active"], n_trainable_params=n_params,
        **vision_columns(loop, flops=flops, peak_total=peak_total, dist=dist, cfg=cfg, n_params=n_params),
        kv_cache_bytes_per_token=kv_bytes_per_token(model, torch.finfo(compute_dtype).bits // 8),
        model_size_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        quality_metric=metric, quality_value=value, duration_s=time.perf_counter() - t_cell,
        extra={
            "recipe": recipe, **describe(model),
            # one board for every variant of a run: the base shape, not each variant's parameter count
            "size": f"dit d{cfg.hidden_size} x{cfg.num_layers} p{cfg.patch_size} on {stats['image_size']}px",
            "kv_bytes_note": "K/V (MLA: latent) bytes per image token over all layers; DiT sampling recomputes them",
            **judged_facts(judged, veval, classes),
            **throughput_facts(loop, judged, cfg, shape.tokens_per_image, flops),
            "expert_load": expert_load, "peak_flops_calibration": peak,
            "resumed_from_step": loop.start or None, "checkpoint_s": loop.checkpoint_s,
            "train_images": int(len(train.labels)), "train_timesteps": cfg.train_timesteps,
            "beta_schedule": cfg.beta_schedule, "prediction_type": cfg.prediction_type,
            "class_dropout": cfg.class_dropout,
            "seeds": {"pretrain_vision": cfg.seed, "split": stats.get("seed"), "sampling": veval.seed},
        },
    )
    return CellOutcome(row=row, files={"loss.csv": curve_csv(loop.curve)})
