"""Pretraining one variant: the training loop every architecture cell runs, and its measured row.

Every variant gets the same data, tokenizer, token budget, seed, schedule and measured window, so a
difference between rows comes from the component alone. The measured window is the training run
after `measure_warmup_steps` (same shapes as the timed steps). Within it: per-step latency (device
synchronised at both edges), memory (AMU, peak), utilisation (PCU), energy (AEC), and MFU against
the device's measured peak FLOP/s. Quality is validation perplexity on fixed held-out blocks.

    python -m stages.pretrain --variant mha      # the DVC stage that calls `pretrain_cell`
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from efficientllm.atomic import atomic_dir
from efficientllm.config import ConfigError, MeasureConfig, ModelConfig, PretrainConfig
from efficientllm.data import iterate_batches, load_blocks, load_stats
from efficientllm.measure import (
    MeasurementWindow,
    StepTimer,
    device_name,
    measure_peak_flops,
    metrics,
    mfu,
    num_threads,
    resolve_device,
    summarize,
    synchronize,
)
from efficientllm.measure.provenance import provenance
from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM
from efficientllm.models.accounting import count_parameters, flops_per_token, kv_cache_bytes_per_token


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the cell stops and its row says so."""


@dataclass
class PretrainOutcome:
    row: dict[str, Any]
    """Row-schema fields of the cell."""
    loss_curve: list[dict[str, float]]
    """One record per step: step, loss, lr, tokens, step_s."""


def model_config(slug: str, base: ModelConfig, recipe: dict[str, Any], tokenizer: Any,
                 block_len: int) -> EfficientLMConfig:
    """The full model config of a variant: base shape, then the recipe's overrides, then the data's vocab.

    Unknown recipe keys and values the model rejects raise ConfigError naming `[variants] <slug>`.
    """
    allowed = set(inspect.signature(EfficientLMConfig.__init__).parameters) - {"self", "kwargs"}
    fixed = {"vocab_size", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"}
    for key in recipe:
        if key in fixed:
            raise ConfigError(f"[variants] {slug}: {key!r} is set by the prepared data, not by a recipe")
        if key not in allowed:
            raise ConfigError(f"[variants] {slug}: unknown key {key!r} (allowed: {', '.join(sorted(allowed - fixed))})")
    kwargs = {**dataclasses.asdict(base), **recipe}
    kwargs.update(
        vocab_size=len(tokenizer),
        max_position_embeddings=block_len,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    try:
        return EfficientLMConfig(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"[variants] {slug}: {e}") from None


def _lr_lambda(cfg: PretrainConfig):
    """Linear warm-up to the peak, then cosine decay to `min_lr_ratio` of it at the last step."""

    def f(step: int) -> float:
        if cfg.lr_warmup_steps and step < cfg.lr_warmup_steps:
            return (step + 1) / cfg.lr_warmup_steps
        span = max(1, cfg.steps - cfg.lr_warmup_steps)
        progress = min(1.0, (step - cfg.lr_warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _optimizer(model: torch.nn.Module, cfg: PretrainConfig, device: torch.device) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def _autocast(device: torch.device) -> tuple[contextlib.AbstractContextManager, str]:
    """bf16 autocast on CUDA (weights and optimizer state stay fp32); plain fp32 on CPU."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), "bfloat16"
    return contextlib.nullcontext(), "float32"


@torch.no_grad()
def evaluate_perplexity(model: torch.nn.Module, val_blocks: Any, batch_size: int, n_batches: int,
                        device: torch.device) -> tuple[float, float]:
    """(mean token loss, perplexity) over the first `n_batches` x `batch_size` validation blocks."""
    model.eval()
    n_blocks = min(len(val_blocks), n_batches * batch_size)
    if n_blocks == 0:
        raise ValueError("no validation blocks: raise prepare.val_fraction or lower prepare.block_len")
    total, count = 0.0, 0
    for start in range(0, n_blocks, batch_size):
        batch = torch.as_tensor(val_blocks[start:min(start + batch_size, n_blocks)].astype("int64")).to(device)
        ctx, _ = _autocast(device)
        with ctx:
            out = model(input_ids=batch, labels=batch, use_cache=False)
        n_targets = batch.numel() - batch.shape[0]  # shifted labels: T-1 targets per sequence
        # Perplexity is of the language-model loss alone, without auxiliary (e.g. MoE balance) terms.
        lm_loss = out.loss - out.aux_loss if getattr(out, "aux_loss", None) is not None else out.loss
        total += float(lm_loss) * n_targets
        count += n_targets
    model.train()
    mean = total / count
    return mean, math.exp(mean)


def _save_model_atomic(model: torch.nn.Module, tokenizer: Any, out_dir: Path) -> None:
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def pretrain_cell(*, slug: str, base: ModelConfig, recipe: dict[str, Any], cfg: PretrainConfig,
                  measure: MeasureConfig, data_dir: Path, model_out: Path | None) -> PretrainOutcome:
    """Train variant `slug` from scratch on the prepared corpus and measure it.

    Raises ConfigError for a bad recipe and TrainingDiverged for a NaN/inf loss; the stage turns
    those into rows. Writes the trained model (safetensors + tokenizer) to `model_out` atomically.
    """
    from transformers import AutoTokenizer

    t_cell = time.perf_counter()
    data_dir = Path(data_dir)
    tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    train_blocks = load_blocks(data_dir / "train.npy")
    val_blocks = load_blocks(data_dir / "val.npy")
    block_len = int(train_blocks.shape[1])
    mcfg = model_config(slug, base, recipe, tokenizer, block_len)

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = EfficientLMForCausalLM(mcfg).to(device)
    model.train()
    params = count_parameters(model)
    opt = _optimizer(model, cfg, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    autocast, dtype_name = _autocast(device)
    compute_dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float32
    peak = measure_peak_flops(device, compute_dtype, n=measure.peak_calibration_n,
                              cache_path=Path(measure.cache_dir) / "peak_flops.json")
    # Input batches come from a seeded order; the model init above used the same seed.

    timer = StepTimer(sync=lambda: synchronize(device))
    window = MeasurementWindow(device, interval_s=measure.sample_interval_s,
                               watts_per_core=measure.cpu_watts_per_core)
    curve: list[dict[str, float]] = []
    tokens_per_step = cfg.batch_size * block_len
    batches = iterate_batches(train_blocks, cfg.batch_size, cfg.seed, cfg.steps)
    with contextlib.ExitStack() as stack:
        for step, batch in enumerate(batches):
            if step == cfg.measure_warmup_steps:
                stack.enter_context(window)
            with timer.step():
                batch = batch.to(device, non_blocking=True)
                with autocast:
                    out = model(input_ids=batch, labels=batch)
                out.loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                loss = float(out.loss.detach())
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss} at step {step} (lr {sched.get_last_lr()[0]:.3g})")
            curve.append({"step": step, "loss": loss, "lr": sched.get_last_lr()[0],
                          "tokens": (step + 1) * tokens_per_step, "step_s": timer.samples[-1]})
    win = window.result
    window_samples = timer.samples[cfg.measure_warmup_steps:]
    lat = summarize(window_samples)
    window_s = win["window_s"]
    window_tokens = tokens_per_step * len(window_samples)

    eval_loss, ppl = evaluate_perplexity(model, val_blocks, cfg.batch_size, cfg.eval_batches, device)
    if model_out is not None:
        _save_model_atomic(model, tokenizer, model_out)

    fpt = flops_per_token(mcfg, block_len, training=True)
    achieved = fpt * window_tokens / window_s if window_s else None
    kv_bytes = kv_cache_bytes_per_token(mcfg, torch.finfo(compute_dtype).bits // 8)
    last = curve[-min(5, len(curve)):]
    row = {
        "run_id": uuid.uuid4().hex,
        "axis": "pretrain",
        "stage": "pretrain",
        "cell": slug,
        "technique": slug,
        "model": f"efficientlm-{params['total'] / 1e6:.2f}M",
        "dataset": load_stats(data_dir).get("source"),
        "status": "ok",
        "trial": 0,
        "device": str(device),
        "device_name": device_name(device),
        "device_count": 1,
        "num_threads": num_threads(),
        "dtype": dtype_name,
        "batch_size": cfg.batch_size,
        "seq_len": block_len,
        "seed": cfg.seed,
        "steps": len(window_samples),
        "warmup_steps": cfg.measure_warmup_steps,
        "n_params": params["total"],
        "n_active_params": params["active"],
        "n_trainable_params": params["trainable"],
        **win,
        "flops_per_token": fpt,
        "achieved_flops_per_s": achieved,
        "peak_flops_per_s": peak["peak_flops_per_s"],
        "mfu": mfu(achieved, peak["peak_flops_per_s"]),
        "al_s": lat["mean"],
        "latency_s_mean": lat["mean"],
        "latency_s_std": lat["std"],
        "latency_s_p50": lat["p50"],
        "latency_s_p90": lat["p90"],
        "latency_s_p99": lat["p99"],
        "latency_samples_s": window_samples,
        "tt_tokens_per_param_s": metrics.tt_tokens_per_param_s(window_tokens, params["total"], window_s),
        "tokens_per_s": metrics.it_tokens_per_s(window_tokens, window_s),
        "kv_cache_bytes_per_token": kv_bytes,
        "tokens_per_j": metrics.tokens_per_j(window_tokens, win.get("energy_j")),
        "model_size_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "quality_metric": "val_ppl",
        "quality_value": ppl,
        "eval_loss": eval_loss,
        "train_loss_final": sum(r["loss"] for r in last) / len(last),
        "duration_s": time.perf_counter() - t_cell,
        "extra": {
            "recipe": recipe,
            "attention": mcfg.attention,
            "positional": mcfg.positional,
            "mlp": mcfg.mlp,
            "hidden_size": mcfg.hidden_size,
            "num_hidden_layers": mcfg.num_hidden_layers,
            "num_attention_heads": mcfg.num_attention_heads,
            "num_key_value_heads": mcfg.num_key_value_heads,
            "tokens_total": cfg.steps * tokens_per_step,
            "window_tokens": window_tokens,
            "peak_flops_calibration": peak,
            "embedding_params": params.get("embedding"),
        },
        **provenance(),
    }
    return PretrainOutcome(row=row, loss_curve=curve)
