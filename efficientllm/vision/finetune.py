"""PEFT on the vision model (`finetune_vision@<method>`): the pretrained DiT adapted to the held-out classes.

The base is `pretrain_vision`'s mha DiT, which never saw the held-out classes (`vision.heldout_classes`): their label
embeddings are still at their random init. Each method of the text axis' registry (efficientllm.techniques.METHODS:
lora, loraplus, rslora, dora, pissa through peft; freeze; full) turns it into the model the optimizer trains, with the
same images (the held-out classes' training split), batch, step budget, seed, schedule and measured window, so a
difference between rows comes from the method alone. The adapters sit on the DiT's diffusers modules
(`finetune_vision.target_modules`: attention q / k / v / out, both feed-forward layers and each block's adaLN
modulation `norm1.linear`, where the class embedding enters); `freeze` trains the last blocks and the output head.
QLoRA is not offered: its 4-bit base loads through transformers' bitsandbytes path, which a diffusers model does not
take.

Quality: the Fréchet distance of samples of the held-out classes against their held-out real images (`fd_<dataset>`,
lower is better), before (`extra.fd_initial`) and after fine-tuning, with the classifier's accuracy per class. ST is
images / parameter / s over the model as trained (base + adapter), as in the text axis.

    python -m stages.finetune_vision --method lora     # the DVC stage that calls `finetune_vision_cell`
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from efficientllm.atomic import atomic_dir
from efficientllm.checkpoint import CellGuard
from efficientllm.config import ConfigError, FinetuneVisionConfig, MeasureConfig, VisionEvalConfig
from efficientllm.distributed import DistContext, single_process
from efficientllm.records import CellId, CellOutcome
from efficientllm.techniques import METHODS, learning_rate, make_optimizer
from efficientllm.techniques.peft_methods import trainable_modules
from efficientllm.training import curve_csv, measured_peak, train_measured, warmup_cosine
from efficientllm.vision import diffusion
from efficientllm.vision.data import load_split, load_stats
from efficientllm.vision.dit import VisionDiT
from efficientllm.vision.pretrain import check_single_process
from efficientllm.vision.quality import load_classifier
from efficientllm.vision.recipes import NOT_FOR_VISION

FAILED_MARKER = "FAILED.json"
def check_method(method: str) -> None:
    """ConfigError for a slug that is not a vision fine-tuning method."""
    if method in NOT_FOR_VISION:
        raise ConfigError(f"[matrix] finetune_vision: {method!r} is not offered for the DiT: {NOT_FOR_VISION[method]}")
    if method not in METHODS:
        known = ", ".join(m for m in METHODS if m not in NOT_FOR_VISION)
        raise ConfigError(f"[matrix] finetune_vision: unknown method {method!r} (known: {known})")


def load_base(base: Path, device: torch.device) -> tuple[VisionDiT, Any]:
    """The pretrained DiT (fp32) and its DDPM scheduler; a failed upstream cell's marker raises RuntimeError."""
    from diffusers import DDPMScheduler
    from diffusers.utils import logging as diffusers_logging

    base = Path(base)
    if (base / FAILED_MARKER).exists():
        raise RuntimeError(f"the base DiT's cell failed: {(base / FAILED_MARKER).read_text(encoding='utf-8').strip()}")
    if not (base / "config.json").exists():
        raise FileNotFoundError(f"[finetune_vision] base_model: {base} has no DiT (run `dvc repro pretrain_vision`)")
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # config.json also holds the parent class' fixed arguments: not news
    try:
        model = VisionDiT.from_pretrained(base, use_safetensors=True)
    finally:
        diffusers_logging.set_verbosity(level)
    return model.to(device).train(), DDPMScheduler.from_pretrained(base / "scheduler")


def _save(model: torch.nn.Module, out_dir: Path) -> int:
    """The adapter (peft format) or the whole trained DiT (freeze, full); returns the bytes written."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
    return size


def method_facts(method: str, cfg: FinetuneVisionConfig, model: torch.nn.Module, n_params: int,
                 n_trainable: int) -> dict[str, Any]:
    adapter = any("lora_" in n for n, _ in model.named_parameters())
    lr = learning_rate(method, cfg)
    return {"method": method, "lr": lr, "lr_b": lr * cfg.loraplus_lr_ratio if method == "loraplus" else None,
            "lora_r": cfg.lora_r if adapter else None, "lora_alpha": cfg.lora_alpha if adapter else None,
            "target_modules": list(cfg.target_modules) if adapter else None,
            "freeze_trainable_blocks": cfg.freeze_trainable_blocks if method == "freeze" else None,
            "trainable_fraction": n_trainable / n_params if n_params else None,
            "trainable_modules": trainable_modules(model), "same_batch_size_as_peft": True}


def finetune_vision_cell(*, cell: CellId, method: str, cfg: FinetuneVisionConfig, veval: VisionEvalConfig,
                         measure: MeasureConfig, data_dir: Path, classifier_dir: Path, out_dir: Path | None,
                         sample_dir: Path | None, dist: DistContext | None = None) -> CellOutcome:
    """Fine-tune the base DiT with `method` on the held-out classes, judge it before and after, save the adapter (or
    the trained DiT) to `out_dir` and return the row."""
    t_cell = time.perf_counter()
    check_method(method)
    check_single_process(cfg)
    stats = load_stats(data_dir)
    classes = list(stats["heldout_classes"])
    if not classes:
        raise ConfigError("[vision] heldout_classes: empty, so there is nothing to fine-tune on")
    train = load_split(data_dir, "train").subset(classes)
    reference = load_split(data_dir, "val")
    classifier, _ = load_classifier(classifier_dir)
    dist = dist or single_process(cfg.device)
    device = dist.device
    autocast, dtype_name = diffusion.compute_context(device, cfg.dtype)
    base, scheduler = load_base(Path(cfg.base_model), device)
    before = diffusion.judge(base, scheduler, classifier, reference, classes, veval, device, autocast, None)
    tokens_per_image = (int(base.config.sample_size) // int(base.config.patch_size)) ** 2
    torch.manual_seed(cfg.seed)  # adapter init (LoRA's A, PiSSA's SVD is deterministic) and nothing else
    model = METHODS[method](base, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops = diffusion.training_flops_per_token(model, device, tokens_per_image)
    opt = make_optimizer(method, model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.steps, cfg.lr_warmup_steps, cfg.min_lr_ratio))
    peak, peak_total = measured_peak(device, torch.bfloat16 if dtype_name == "bfloat16" else torch.float32,
                                     measure, dist)
    step_fn, probe = diffusion.denoise_step(model, train, scheduler, batch_size=cfg.batch_size, seed=cfg.seed,
                                            class_dropout=0.0, device=device, autocast=autocast,
                                            tokens_per_image=tokens_per_image)
    loop = train_measured(step_fn, section="finetune_vision", model=model, optimizer=opt, scheduler=sched,
                          steps=cfg.steps, warmup_steps=cfg.measure_warmup_steps,
                          clip_params=[p for p in model.parameters() if p.requires_grad], grad_clip=cfg.grad_clip,
                          dist=dist, measure=measure, progress=("images", cfg.batch_size),
                          guard=CellGuard(cfg.timeout_s, cfg.memory_limit_mb, "finetune_vision"), probe=probe)
    judged = diffusion.judge(model, scheduler, classifier, reference, classes, veval, device, autocast, sample_dir)
    saved_bytes = _save(model, out_dir) if out_dir is not None else None
    metric, value = diffusion.quality_of(judged, veval, stats["dataset"])
    row = cell.ok_row(
        technique=method, model=cfg.base_model, dataset=stats["dataset"], dtype=dtype_name,
        batch_size=cfg.batch_size, seq_len=tokens_per_image, seed=cfg.seed, n_params=n_params,
        n_active_params=n_params, n_trainable_params=n_trainable,
        **diffusion.vision_columns(loop, flops=flops, peak_total=peak_total, dist=dist, cfg=cfg, n_params=n_params),
        model_size_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        quality_metric=metric, quality_value=value, duration_s=time.perf_counter() - t_cell,
        extra={
            **method_facts(method, cfg, model, n_params, n_trainable),
            **diffusion.judged_facts(judged, veval, classes),
            **diffusion.throughput_facts(loop, judged, cfg, tokens_per_image, flops),
            "fd_initial": before.report["fd"], "sample_accuracy_initial": before.report["sample_accuracy"],
            "st_param_count": "n_params: all parameters of the model as trained (base + adapter), the paper's ST",
            "saved_bytes": saved_bytes, "train_images": int(len(train.labels)), "base_model": cfg.base_model,
            "peak_flops_calibration": peak,
            "seeds": {"finetune_vision": cfg.seed, "split": stats.get("seed"), "sampling": veval.seed},
        },
    )
    return CellOutcome(row=row, files={"loss.csv": curve_csv(loop.curve)})
