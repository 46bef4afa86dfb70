"""Fine-tuning methods: each is a function that turns a loaded base model into the model the optimizer trains.

`METHODS` maps a slug (a value of the finetune matrix) to `apply(model, cfg) -> model`; variants of LoRA are
`functools.partial` of `apply_lora`, each with its own docstring. Methods that need more than the default AdamW
have an entry in `OPTIMIZERS` (LoRA+), methods that need the base loaded differently one in `BASE_QUANTIZATION`
(QLoRA's 4-bit base), and methods that some devices cannot run one in `UNSUPPORTED` (returns the reason, which
becomes a `skipped` row). Everything LoRA-shaped goes through peft; `freeze` and `full` only set requires_grad.

Expected effect on the row (what each docstring repeats for its method): adapters cut `n_trainable_params` and
optimizer memory (AMU, peak memory) but not the forward/backward compute through the frozen base, so AL moves
little at small scale; full fine-tuning trains everything at the same batch size and should reach the lowest loss.

    python -c "from efficientllm.techniques import METHODS; print(sorted(METHODS))"
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from efficientllm.config import FinetuneConfig

ApplyFn = Callable[[nn.Module, FinetuneConfig], nn.Module]
OptimizerFn = Callable[[nn.Module, FinetuneConfig, float], torch.optim.Optimizer]


def lora_config(cfg: FinetuneConfig, **overrides: Any):
    """The peft LoraConfig of the shared LoRA recipe (rank, alpha, dropout, target modules), plus overrides."""
    from peft import LoraConfig

    # a config may name its peft task type (the vision DiT: None, a plain PeftModel); causal LMs otherwise
    task_type = getattr(cfg, "PEFT_TASK_TYPE", "CAUSAL_LM")
    kwargs: dict[str, Any] = dict(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                  target_modules=list(cfg.target_modules), bias="none", task_type=task_type)
    kwargs.update(overrides)
    return LoraConfig(**kwargs)


def _check_targets(model: nn.Module, cfg: FinetuneConfig) -> None:
    # peft's suffix match: a target is a module's name or a dotted tail of it (`q_proj`, diffusers' `to_out.0`)
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in cfg.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(f"[finetune] target_modules: {missing} match no module of {type(model).__name__}")


def apply_lora(model: nn.Module, cfg: FinetuneConfig, *, use_rslora: bool = False, use_dora: bool = False,
               init_lora_weights: bool | str = True) -> nn.Module:
    """LoRA (Hu et al. 2021): freeze the base, add a rank-r update B·A (B zero-initialised, scaled alpha/r) to
    every target projection. Trainable params = sum over targets of r x (in + out), a few % of the model;
    optimizer state shrinks with them, so AMU and peak memory fall; AL barely moves at small scale (the backward
    still runs through the frozen base); eval loss should approach full fine-tuning's."""
    from peft import get_peft_model

    _check_targets(model, cfg)
    peft_cfg = lora_config(cfg, use_rslora=use_rslora, use_dora=use_dora, init_lora_weights=init_lora_weights)
    return get_peft_model(model, peft_cfg)


def _variant(fn: ApplyFn, doc: str, **kwargs: Any) -> ApplyFn:
    """A partial of `fn` carrying its own docstring (so every registry entry documents itself)."""
    p = functools.partial(fn, **kwargs)
    p.__doc__ = doc
    return p


def apply_pissa(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """PiSSA (Meng et al. 2024): LoRA whose A and B start from the top-r singular vectors of each target weight,
    and whose frozen base keeps only the residual W - B·A, so the initial model equals the base. Same trainable
    params as LoRA; meant to converge faster (lower eval loss at equal steps); `pissa_init: pissa_niter_<n>`
    swaps the exact SVD for a fast randomised one (less set-up time, same AL)."""
    return apply_lora(model, cfg, init_lora_weights=cfg.pissa_init)


def is_loaded_in_4bit(model: nn.Module) -> bool:
    """True when the model's linear layers are bitsandbytes 4-bit (loaded with BASE_QUANTIZATION['qlora'])."""
    return bool(getattr(model, "is_loaded_in_4bit", False)) or any(
        type(m).__name__ == "Linear4bit" for m in model.modules())


def apply_qlora(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """QLoRA (Dettmers et al. 2023): LoRA on a base whose linear weights are stored in 4-bit (nf4 or fp4,
    bitsandbytes) and dequantised on the fly. Same trainable params as LoRA; the frozen base takes ~1/8 of its
    fp32 bytes, so AMU and peak memory fall most of all methods at large scale; AL rises (dequantisation on every
    matmul); eval loss slightly above LoRA's (quantisation error in the base). The model must be loaded with
    `BASE_QUANTIZATION['qlora']`."""
    from peft import prepare_model_for_kbit_training

    if not is_loaded_in_4bit(model):
        raise ValueError("qlora needs the base loaded in 4-bit (from_pretrained(quantization_config="
                         "BASE_QUANTIZATION['qlora'](cfg, device)))")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    from efficientllm.techniques.quantization import fit_cpu_4bit_kernel

    fit_cpu_4bit_kernel(model)  # eval-time CPU forwards (eval loss, exact match): widths the packed kernel can't take
    return apply_lora(model, cfg)


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder block list of a causal LM (`model.model.layers` for Llama-style models, ours included), or the
    `transformer_blocks` of a diffusers transformer (the vision axis' DiT)."""
    if isinstance(getattr(model, "transformer_blocks", None), nn.ModuleList):
        return model.transformer_blocks
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__}: no decoder block list at model.layers (freeze needs one)")
    return layers


def apply_freeze(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """Layer freezing: train only the last `freeze_trainable_blocks` decoder blocks and the final norm, plus the LM
    head when it is its own matrix; everything below stays fixed. A head tied to the input embedding stays frozen
    (unless `freeze_train_head`): training it would train the embedding, and the backward would run through every
    block. Trainable params = those modules' parameters; cuts optimizer memory like LoRA without adapters; the
    backward stops at the lowest trainable block, so AL falls as well; eval loss usually between LoRA's and full
    fine-tuning's. `trainable_modules(model)` says what trained."""
    blocks = decoder_blocks(model)
    n = cfg.freeze_trainable_blocks
    if n > len(blocks):
        raise ValueError(f"[finetune] freeze_trainable_blocks={n} exceeds the model's {len(blocks)} blocks")
    for p in model.parameters():
        p.requires_grad_(False)
    trainable: list[nn.Module] = list(blocks[len(blocks) - n:]) if n else []
    norm = getattr(getattr(model, "model", None), "norm", None)
    if isinstance(norm, nn.Module):
        trainable.append(norm)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(f"{type(model).__name__}: no output embedding (LM head) to train")
    if cfg.freeze_train_head or not head_is_tied(model):
        trainable.append(head)
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)
    return model


def head_is_tied(model: nn.Module) -> bool:
    """True when the LM head's weight is the input embedding's (one tensor)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return head is not None and emb is not None and head.weight is emb.weight


def trainable_modules(model: nn.Module) -> list[str]:
    """The modules that own trained parameters, collapsed to one name per decoder block (`...layers.3`) and per
    other module (`lm_head`, `model.norm`, a shared tensor once): what a row says trained."""
    import re

    names: set[str] = set()
    for name, p in model.named_parameters(remove_duplicate=True):
        if p.requires_grad:
            owner = name.rsplit(".", 1)[0]
            m = re.match(r"((?:.*\.)?(?:layers|transformer_blocks)\.\d+)\.", owner + ".")
            names.add(m.group(1) if m else owner)
    return sorted(names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])


def apply_full(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """Full fine-tuning: every weight trains, at the same batch size as the PEFT methods (the paper halved it, a
    confound). Trainable params = all; AdamW keeps two fp32 moments per weight, so AMU and peak memory are the
    highest of all methods; AL the highest (weight gradients for everything); the eval-loss reference."""
    del cfg
    for p in model.parameters():
        p.requires_grad_(True)
    return model


METHODS: dict[str, ApplyFn] = {
    "lora": apply_lora,
    "loraplus": _variant(
        apply_lora,
        """LoRA+ (Hayou et al. 2024): the LoRA adapter trained with a learning rate on B that is
        `loraplus_lr_ratio` times the one on A (peft's create_loraplus_optimizer, see OPTIMIZERS). Same trainable
        params, memory and AL as LoRA; should reach a lower eval loss at equal steps.""",
    ),
    "rslora": _variant(
        apply_lora,
        """rsLoRA (Kalajdzievski 2023): LoRA scaled by alpha/sqrt(r) instead of alpha/r, so higher ranks keep a
        useful update size. Same trainable params, memory and AL as LoRA; eval loss moves, most at large r.""",
        use_rslora=True,
    ),
    "dora": _variant(
        apply_lora,
        """DoRA (Liu et al. 2024): each target weight split into a magnitude vector (trained, one value per output
        row) and a direction updated by LoRA. Trainable params = LoRA's + sum of target out_features; AL rises
        (the weight norm is recomputed every step), memory slightly; eval loss should beat LoRA's at equal rank.""",
        use_dora=True,
    ),
    "pissa": apply_pissa,
    "freeze": apply_freeze,
    "full": apply_full,
    "qlora": apply_qlora,
}
"""Method slug -> apply(model, cfg) -> model to train. The finetune matrix's method slugs are keys of this dict."""

UPDATES_BASE_WEIGHTS = frozenset({"freeze", "full"})
"""Methods that train base weights directly (they use `full_lr`; the others `lr`)."""


def learning_rate(method: str, cfg: FinetuneConfig) -> float:
    """The peak learning rate of a method: `full_lr` for methods that update base weights, `lr` for adapters."""
    return cfg.full_lr if method in UPDATES_BASE_WEIGHTS else cfg.lr


def adamw_optimizer(model: nn.Module, cfg: FinetuneConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; weight decay on matrices only."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the method left no trainable parameter")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.999), eps=1e-8)


def loraplus_optimizer(model: nn.Module, cfg: FinetuneConfig, lr: float) -> torch.optim.Optimizer:
    """LoRA+'s AdamW: B matrices at lr x loraplus_lr_ratio, A matrices (and the rest) at lr (peft's factory)."""
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(model=model, optimizer_cls=torch.optim.AdamW, lr=lr,
                                     loraplus_lr_ratio=cfg.loraplus_lr_ratio, weight_decay=cfg.weight_decay)


OPTIMIZERS: dict[str, OptimizerFn] = {"loraplus": loraplus_optimizer}
"""Method slug -> optimizer factory, for methods that need more than `adamw_optimizer`."""


def make_optimizer(method: str, model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """The optimizer of `method` at its peak learning rate."""
    return OPTIMIZERS.get(method, adamw_optimizer)(model, cfg, learning_rate(method, cfg))


def compute_dtype(device: torch.device, dtype: torch.dtype | None = None) -> torch.dtype:
    """The dtype 4-bit layers dequantise to: the model dtype if given, else bf16 on CUDA, fp32 elsewhere."""
    if dtype is not None:
        return dtype
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def qlora_quantization_config(cfg: FinetuneConfig, device: torch.device, dtype: torch.dtype | None = None):
    """transformers' BitsAndBytesConfig of QLoRA's frozen base: 4-bit `qlora_quant_type`, optional double
    quantisation, matmuls in the compute dtype. The LM head and embeddings stay unquantised."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.qlora_quant_type,
                              bnb_4bit_use_double_quant=cfg.qlora_double_quant,
                              bnb_4bit_compute_dtype=compute_dtype(device, dtype))


BASE_QUANTIZATION: dict[str, Callable[..., Any]] = {"qlora": qlora_quantization_config}
"""Method slug -> fn(cfg, device, dtype) -> transformers quantization config for loading the base."""


def qlora_unsupported(device: torch.device) -> str | None:
    """Why 4-bit bitsandbytes layers cannot train on `device` (None: they can).

    Probes the real thing: one tiny 4-bit layer quantised on the device, a forward and a backward to its input.
    """
    try:
        import bitsandbytes as bnb
    except Exception as e:  # not installed, or its native library fails to load
        return f"bitsandbytes unavailable: {type(e).__name__}: {e}"
    try:
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=compute_dtype(device), quant_type="nf4")
        layer = layer.to(device)
        x = torch.randn(2, 64, device=device, dtype=compute_dtype(device), requires_grad=True)
        layer(x).float().sum().backward()
    except Exception as e:
        return (f"bitsandbytes {getattr(bnb, '__version__', '?')} cannot run 4-bit layers on {device}: "
                f"{type(e).__name__}: {e}")
    return None


UNSUPPORTED: dict[str, Callable[[torch.device], str | None]] = {"qlora": qlora_unsupported}
"""Method slug -> fn(device) -> reason the device cannot run it (None: it can). A reason becomes a skipped row."""


def unsupported_reason(method: str, device: torch.device) -> str | None:
    """Why `method` cannot run on `device`, or None."""
    check = UNSUPPORTED.get(method)
    return check(device) if check else None
