"""Pretraining one variant from scratch: its model, its step (efficientllm.training runs the loop) and its row.

Every variant gets the same data, tokenizer, token budget, seed, schedule and measured window, so a
difference between rows comes from the component alone. The measured window (efficientllm.training) is the
training run after `measure_warmup_steps` (same shapes as the timed steps): per-step latency, memory (AMU,
peak), utilisation (PCU), energy (AEC), and MFU against the device's measured peak FLOP/s. TT is tokens /
parameter / s. Quality is validation perplexity on fixed held-out blocks.

    python -m stages.pretrain --variant mha      # the DVC stage that calls `pretrain_cell`
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from efficientllm.atomic import atomic_dir
from efficientllm.checkpoint import RUN_KNOBS, CellGuard, cell_key, code_digest, file_digest
from efficientllm.config import ConfigError, MeasureConfig, ModelConfig, PretrainConfig
from efficientllm.data import iterate_batches, load_blocks, load_stats
from efficientllm.distributed import (
    DistContext,
    full_state_dict,
    gradient_sync,
    is_sharded,
    micro_batching,
    single_process,
    unsharded_copy,
    wrap_model,
)
from efficientllm.examples import EXAMPLES_FILE, ExampleLog
from efficientllm.measure import metrics
from efficientllm.measure.timing import Phases
from efficientllm.models.accounting import count_parameters
from efficientllm.models.baselines import Variant, describe_variant, resolve_recipe
from efficientllm.models.moe import expert_load_kept, expert_load_summary
from efficientllm.records import CellId, CellOutcome
from efficientllm.training import (
    StepWork,
    checkpointer_for,
    curve_csv,
    measured_peak,
    to_target,
    train_measured,
    training_columns,
    warmup_cosine,
)


def model_variant(slug: str, base: ModelConfig, recipe: dict[str, Any], tokenizer: Any, block_len: int) -> Variant:
    """A variant's family, full config and budget sizing: base shape, then the recipe's overrides, then the data's
    vocabulary and special tokens, then (when the recipe sets `param_budget`) the parameter-budget search.

    Unknown recipe keys and values the model rejects raise ConfigError naming `[variants] <slug>`.
    See efficientllm.models.baselines for the `family`, `param_budget` and `size_by` keys.
    """
    data = {
        "vocab_size": len(tokenizer),
        "max_position_embeddings": block_len,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    try:
        return resolve_recipe(dataclasses.asdict(base), recipe, data)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"[variants] {slug}: {e}") from None


def model_config(slug: str, base: ModelConfig, recipe: dict[str, Any], tokenizer: Any, block_len: int) -> Any:
    """The transformers config of a variant (an EfficientLMConfig, or a baseline family's config)."""
    return model_variant(slug, base, recipe, tokenizer, block_len).config


def decayed(model: torch.nn.Module) -> set[int]:
    """ids of the parameters AdamW's weight decay applies to: the weight matrices of linear and embedding layers.

    Not by shape: norms and biases are 1-D, but RWKV's time-mix vectors (1, 1, hidden) and Mamba's depthwise conv1d
    kernels (channels, 1, k) are not, and decaying them pulls the recurrence toward zero; the same rule holds for
    every family, so the variants train alike.
    """
    return {id(m.weight) for m in model.modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) and getattr(m, "weight", None) is not None}


def _optimizer(model: torch.nn.Module, cfg: PretrainConfig, device: torch.device) -> torch.optim.Optimizer:
    matrices = decayed(model)
    decay = [p for p in model.parameters() if p.requires_grad and id(p) in matrices]
    no_decay = [p for p in model.parameters() if p.requires_grad and id(p) not in matrices]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda" and not is_sharded(model)  # sharded (FSDP) parameters: the foreach path
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def _autocast(device: torch.device, dtype: str = "auto") -> tuple[contextlib.AbstractContextManager, str]:
    """bf16 autocast (weights and optimizer state stay fp32) or plain fp32; `auto`: bf16 on CUDA where supported."""
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype == "bfloat16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"[pretrain] dtype: bfloat16 is not supported on {device}")
        return torch.autocast(device.type, dtype=torch.bfloat16), "bfloat16"
    return contextlib.nullcontext(), "float32"


@torch.no_grad()
def evaluate_perplexity(model: torch.nn.Module, val_blocks: Any, batch_size: int, n_batches: int,
                        device: torch.device, *, dtype: str = "auto", dist: DistContext | None = None,
                        micro_batch_size: int | None = None,
                        examples: ExampleLog | None = None) -> tuple[float, float]:
    """(mean token loss, perplexity) over the first `n_batches` x `batch_size` validation blocks.

    The blocks are run `micro_batch_size` at a time (default: batch_size); under several processes the chunks
    go round-robin to the ranks and the token-weighted sums are added up, so every rank gets the same figure.
    `examples`: each block's language-model loss sum and target count is added to it (set `val_ppl`, this rank's
    blocks), for the paired tests of the report.
    """
    dist = dist or single_process(device)
    model.eval()
    n_blocks = min(len(val_blocks), n_batches * batch_size)
    if n_blocks == 0:
        raise ValueError("no validation blocks: raise prepare.val_fraction or lower prepare.block_len")
    chunk = micro_batch_size or batch_size
    starts = list(range(0, n_blocks, chunk))
    # A sharded (FSDP) forward is a collective: every rank runs as many as the busiest one, idle ones with weight 0.
    rounds = -(-len(starts) // dist.world_size) if is_sharded(model) else None
    mine = starts[dist.rank::dist.world_size]
    total, count = 0.0, 0
    for i in range(rounds if rounds is not None else len(mine)):
        start = mine[i] if i < len(mine) else starts[0]
        batch = torch.as_tensor(val_blocks[start:min(start + chunk, n_blocks)].astype("int64")).to(device)
        ctx, _ = _autocast(device, dtype)
        with ctx:
            out = model(input_ids=batch, labels=batch, use_cache=False)
        if i >= len(mine):
            continue
        n_targets = batch.numel() - batch.shape[0]  # shifted labels: T-1 targets per sequence
        # Perplexity is of the language-model loss alone, without auxiliary (e.g. MoE balance) terms.
        lm_loss = out.loss - out.aux_loss if getattr(out, "aux_loss", None) is not None else out.loss
        total += float(lm_loss) * n_targets
        count += n_targets
        if examples is not None:
            per_block = sequence_loss_sums(out.logits, batch)
            for j, loss_sum in enumerate(per_block.tolist()):
                examples.add("val_ppl", "exp_ratio", start + j, loss_sum, batch.shape[1] - 1)
    total, count = dist.sum([total, count])
    model.train()
    mean = total / count
    return mean, math.exp(mean)


def sequence_loss_sums(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B,) next-token cross-entropy summed over each sequence, in float32 from the logits (B, T, V)."""
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:],
                                                  reduction="none")  # (B, T-1)
    return per_token.sum(dim=1)


def _trajectory_key(slug: str, base: ModelConfig, recipe: dict[str, Any], cfg: PretrainConfig, data_dir: Path,
                    stats: dict[str, Any]) -> str:
    """What determines a pretraining run's state after each step: params (less the reliability knobs), data, code.
    `stats` is prepare's stats.json: it records the data digests (the files are hashed only when it did not)."""
    train = {k: v for k, v in dataclasses.asdict(cfg).items()
             if k not in RUN_KNOBS}
    data = {name: stats.get(f"{name.replace('.', '_')}_sha256") or file_digest(Path(data_dir) / name)
            for name in ("train.npy", "val.npy")}
    here = Path(__file__).resolve().parent
    code = code_digest([here / "pretrain.py", here / "training.py", here / "models", here / "data" / "packing.py"])
    return cell_key("pretrain", slug, dataclasses.asdict(base), recipe, train, data, code)


def _save_model(model: torch.nn.Module, model_cls: type, tokenizer: Any, out_dir: Path, dist: DistContext) -> None:
    """Rank 0 writes the trained model (a sharded one is gathered first: a collective, every rank takes part)."""
    if is_sharded(model):
        state = full_state_dict(model, dist)
        if dist.is_main:
            _save_model_atomic(unsharded_copy(model, model_cls, state), tokenizer, out_dir)
    elif dist.is_main:
        _save_model_atomic(model, tokenizer, out_dir)
    dist.barrier()


def _save_model_atomic(model: torch.nn.Module, tokenizer: Any, out_dir: Path) -> None:
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def lm_step(train_model: torch.nn.Module, train_blocks: Any, *, cfg: PretrainConfig, dist: DistContext,
            autocast: contextlib.AbstractContextManager, micro_bs: int, accum: int) -> Callable[[int], StepWork]:
    """One optimizer step of next-token prediction on the global batch `step` of the seeded order: this rank's
    shard, `accum` micro-batches of `micro_bs` sequences, gradients accumulated."""
    device = dist.device
    tokens_per_step = cfg.batch_size * int(train_blocks.shape[1])
    # The batch order is a pure function of (seed, step): batch `step` is the same whatever step a run resumes at.
    batches = iterate_batches(train_blocks, cfg.batch_size, cfg.seed, cfg.steps)
    position = 0  # index of the batch `batches` yields next

    def step_fn(step: int) -> StepWork:
        nonlocal position
        for _ in range(step - position):  # a resumed run skips the batches its checkpoint covers
            next(batches)
        position = step + 1
        batch = next(batches)
        local = dist.shard(batch).to(device, non_blocking=True)  # (B / ranks, T)
        step_loss = torch.zeros((), device=device)
        for i, micro in enumerate(local.split(micro_bs)):  # gradient accumulation over micro-batches
            with gradient_sync(train_model, enabled=i == accum - 1):
                with autocast:
                    out = train_model(input_ids=micro, labels=micro)
                (out.loss / accum).backward()
            step_loss += out.loss.detach() / accum
        return StepWork(loss=step_loss, tokens=tokens_per_step, computed_tokens=tokens_per_step)

    return step_fn


def _evaluate_and_save(model: torch.nn.Module, model_cls: type, tokenizer: Any, val_blocks: Any, cfg: PretrainConfig,
                       dist: DistContext, micro_bs: int, model_out: Path | None,
                       phases: Phases) -> tuple[float, float, ExampleLog]:
    """(eval loss, perplexity, every rank's per-block losses on rank 0) of the trained model; writes it to
    `model_out` (rank 0, or a gathered FSDP state) when given."""
    phases.start("evaluate")
    examples = ExampleLog()
    eval_loss, ppl = evaluate_perplexity(model, val_blocks, cfg.batch_size, cfg.eval_batches, dist.device,
                                         dtype=cfg.dtype, dist=dist, micro_batch_size=micro_bs, examples=examples)
    gathered = dist.gather(examples.records)
    if model_out is not None:
        phases.start("save")
        _save_model(model, model_cls, tokenizer, model_out, dist)
    phases.stop()
    return eval_loss, ppl, ExampleLog([r for part in gathered or [] for r in part])


def lm_probe(model: torch.nn.Module, train_blocks: Any, cfg: PretrainConfig, dist: DistContext,
             autocast: contextlib.AbstractContextManager, micro_bs: int) -> Callable[[], Any]:
    """One micro-batch's forward (the first of this rank's share of batch 0), for the activation bytes."""
    micro = dist.shard(next(iterate_batches(train_blocks, cfg.batch_size, cfg.seed, 1)))[:micro_bs].to(dist.device)

    def forward() -> Any:
        with autocast, expert_load_kept(model):  # the probe must not count in the MoE routing statistics
            return model(input_ids=micro, labels=micro).loss

    return forward


def pretrain_cell(*, cell: CellId, slug: str, base: ModelConfig, recipe: dict[str, Any], cfg: PretrainConfig,
                  measure: MeasureConfig, data_dir: Path, model_out: Path | None,
                  dist: DistContext | None = None, checkpoint_dir: Path | None = None) -> CellOutcome:
    """Train variant `slug` from scratch on the prepared corpus and measure it.

    Raises ConfigError for a bad recipe and TrainingDiverged for a NaN/inf loss; the stage turns
    those into rows. Writes the trained model (safetensors + tokenizer) to `model_out` atomically.
    Under several processes (`dist`, see efficientllm.distributed) every rank calls this; each trains on
    its shard of every global batch, rank 0 writes the model and its return value holds the row.
    With `checkpoint_dir` and `cfg.checkpoint_every_steps` (one process or DDP), the run saves a checkpoint every N
    steps and resumes from the last one of the same key (see efficientllm.checkpoint): the quality columns of a
    resumed run equal those of an uninterrupted one; its timing columns cover the steps run after the resume.
    """
    from transformers import AutoTokenizer

    from efficientllm.measure.memory import RssSensor

    t_cell = time.perf_counter()
    phases = Phases(f"pretrain@{slug}")
    phases.start("load data")
    tokenizer = AutoTokenizer.from_pretrained((data_dir := Path(data_dir)) / "tokenizer")
    train_blocks, val_blocks = load_blocks(data_dir / "train.npy"), load_blocks(data_dir / "val.npy")
    stats = load_stats(data_dir)  # prepare's stats.json, read once: data digests, source, split seed, hub commit
    block_len = int(train_blocks.shape[1])
    phases.start("build model")
    variant = model_variant(slug, base, recipe, tokenizer, block_len)
    dist = dist or single_process(cfg.device)
    device, (micro_bs, accum) = dist.device, micro_batching(cfg.batch_size, dist.world_size, cfg.micro_batch_size)
    rss_baseline = (RssSensor().read() or (None,))[0]  # the process before the model: the CPU peak is above it
    torch.manual_seed(cfg.seed)
    model = variant.build_model().to(device).train()
    params, model_cls = count_parameters(model), type(model)
    model_size_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    autocast, dtype_name = _autocast(device, cfg.dtype)
    compute_dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float32
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    # DDP replica / FSDP shards (identity for one process); `model` stays the module itself for eval and saving.
    train_model = wrap_model(model, dist, cfg.parallelism, compute_dtype if compute_dtype != torch.float32 else None)
    opt = _optimizer(train_model, cfg, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.steps, cfg.lr_warmup_steps, cfg.min_lr_ratio))
    peak, peak_total = measured_peak(device, compute_dtype, measure, dist)
    checkpointer = checkpointer_for(checkpoint_dir, cfg.checkpoint_every_steps, model, dist=dist,
                                    key=lambda: _trajectory_key(slug, base, recipe, cfg, data_dir, stats))
    tokens_per_step = cfg.batch_size * block_len
    phases.start(f"train ({cfg.steps} steps)")
    loop = train_measured(lm_step(train_model, train_blocks, cfg=cfg, dist=dist, autocast=autocast, micro_bs=micro_bs,
                                  accum=accum), section="pretrain", model=model, optimizer=opt, scheduler=sched,
                          steps=cfg.steps, warmup_steps=cfg.measure_warmup_steps,
                          clip_params=list(train_model.parameters()), grad_clip=cfg.grad_clip, dist=dist,
                          measure=measure, progress=("tokens", tokens_per_step),
                          guard=CellGuard(cfg.timeout_s, cfg.memory_limit_mb, "pretrain"), checkpointer=checkpointer,
                          probe=None if is_sharded(model) else lm_probe(model, train_blocks, cfg, dist, autocast,
                                                                        micro_bs),
                          evaluate=lambda: evaluate_perplexity(model, val_blocks, cfg.batch_size, cfg.eval_batches,
                                                               device, dtype=cfg.dtype, dist=dist,
                                                               micro_batch_size=micro_bs)[0],
                          evaluate_every=cfg.eval_every_steps if cfg.target_val_loss is not None else 0)
    expert_load = expert_load_summary(model)  # MoE routing balance over the whole run (None for dense models)
    eval_loss, ppl, examples = _evaluate_and_save(model, model_cls, tokenizer, val_blocks, cfg, dist, micro_bs,
                                                  model_out, phases)

    fpt = variant.family.flops_per_token(variant.config, block_len, training=True)
    row = cell.ok_row(
        technique=slug, model=f"{variant.family.name}-{params['total'] / 1e6:.2f}M", dataset=stats.get("source"),
        dtype=dtype_name, batch_size=cfg.batch_size, seq_len=block_len, seed=cfg.seed,
        n_params=params["total"], n_active_params=params["active"], n_trainable_params=params["trainable"],
        **training_columns(loop, flops_per_token=fpt, peak_total=peak_total, dist=dist,
                           warmup_steps=cfg.measure_warmup_steps, rss_baseline=rss_baseline),
        tt_tokens_per_param_s=metrics.tt_tokens_per_param_s(loop.tokens, params["total"], loop.window["window_s"]),
        kv_cache_bytes_per_token=variant.family.kv_cache_bytes_per_token(variant.config,
                                                                         torch.finfo(compute_dtype).bits // 8),
        model_size_bytes=model_size_bytes, quality_metric="val_ppl", quality_value=ppl, eval_loss=eval_loss,
        duration_s=time.perf_counter() - t_cell,
        extra={
            "recipe": recipe,
            "corpus_commit": stats.get("hub_commit"),  # hub commit of a streamed corpus (else None)
            # family, architecture fields, non-embedding params, budget sizing, FLOP method, recurrent-state bytes
            **describe_variant(variant, torch.finfo(compute_dtype).bits // 8),
            "tokens_total": cfg.steps * tokens_per_step,
            "window_tokens": loop.tokens,
            "peak_flops_calibration": peak,
            "embedding_params": params.get("embedding"),
            "parallelism": cfg.parallelism if dist.distributed else None,
            "micro_batch_size": micro_bs,
            "grad_accum_steps": accum,
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "per_device": loop.per_device,
            "expert_load": expert_load,
            "resumed_from_step": loop.start or None,  # a killed run resumed from its checkpoint after this many steps
            "checkpoint_s": loop.checkpoint_s,  # checkpoint saves, left out of every window figure
            "phase_s": phases.seconds,
            "to_target": to_target(loop, cfg.target_val_loss, tokens_per_step),  # efficiency at equal quality
            "quality_sets": ["val_ppl"],  # examples.jsonl: the per-block losses behind quality_value
            # every seed the row's numbers depend on: init + batch order, and the corpus's train / val split
            "seeds": {"pretrain": cfg.seed, "prepare_split": stats.get("seed")},
        },
    )
    return CellOutcome(row=row, files={"loss.csv": curve_csv(loop.curve),
                                       EXAMPLES_FILE: examples.text()})
