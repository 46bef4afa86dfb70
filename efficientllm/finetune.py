"""Fine-tuning one method on one SFT dataset: the training loop every finetune cell runs, and its measured row.

Every method gets the same base model, data, formatting, batch size (full fine-tuning included), step budget,
seed and measured window, so a difference between rows comes from the method alone. Batches are padded to
`sft.max_seq_len` (steady shapes) and the loss is on response tokens only. The measured window is the training
run after `measure_warmup_steps` optimizer steps: per-step latency (AL; device synchronised at both edges), AMU,
PCU, peak memory, energy (AEC) and MFU against the measured peak FLOP/s. ST is samples / parameter / s with the
paper's denominator, the model's total parameters (base + adapter); `extra` also has it per trainable parameter.
Quality is the eval loss on held-out records (response tokens); where records carry an `answer` (the arith
sources), greedy generation on a few of them gives exact-match accuracy as well, or, with `finetune.answer_eval:
given_thought` (reasoning too long to generate on the device), the answer after the record's own reasoning
(efficientllm/answers.py: exact match of the <Output>, letter choice for multiple-choice records).

Outputs per cell: `<out>/adapter/` (peft format; for `freeze` the trained tensors, for `full` a pointer to
merged/) and `<out>/merged/` (plain safetensors + tokenizer, the input of the quantization stage).

Several devices (`finetune.nproc_per_node`, efficientllm.distributed): every rank runs `finetune_cell` with the
same optimisation as one process. `batch_size` is the global micro-batch: each rank trains on its contiguous
share of every micro-batch of the same batch order, and its loss is its token-summed cross-entropy divided by the
whole micro-batch's response tokens (times the world size, which the gradient average over ranks divides out), so
the gradients equal one process's even though ranks hold unequal numbers of response tokens (with lora_dropout > 0
each rank draws its own dropout masks: the runs then agree in distribution, not bit for bit). DDP keeps a replica
per device; FSDP shards every decoder block (the base loads on the host and each block moves to its device as it
is sharded). Eval batches go round-robin to the ranks and the token sums are added; exact match and saving run on
rank 0 on a plain model (FSDP: the full state dict gathered onto rank 0 and loaded into the model rebuilt as the
cell built it, adapter included).

    python -m stages.finetune --method lora --dataset arith     # the DVC stage that calls `finetune_cell`
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from efficientllm.answers import given_thought_accuracy, left_padded
from efficientllm.atomic import atomic_dir
from efficientllm.checkpoint import (
    RUN_KNOBS,
    CellGuard,
    cell_key,
    code_digest,
    file_digest,
    require_safetensors,
)
from efficientllm.config import ConfigError, FinetuneConfig, MeasureConfig, SFTConfig
from efficientllm.data.sft import IGNORE_INDEX, EncodedSFT, encode_examples, extract_output, format_example, load_split
from efficientllm.distributed import (
    DistContext,
    full_state_dict,
    gradient_sync,
    is_sharded,
    micro_batching,
    single_process,
    wrap_model,
)
from efficientllm.examples import EXAMPLES_FILE, ExampleLog
from efficientllm.measure import metrics
from efficientllm.measure.memory import RssSensor
from efficientllm.measure.timing import Phases
from efficientllm.model_import import import_facts
from efficientllm.records import CellId, CellOutcome
from efficientllm.techniques import (
    BASE_QUANTIZATION,
    METHODS,
    decoder_blocks,
    is_loaded_in_4bit,
    learning_rate,
    make_optimizer,
    unsupported_reason,
)
from efficientllm.techniques.peft_methods import trainable_modules
from efficientllm.techniques.quantization import logical_numel, weight_bytes
from efficientllm.training import (
    LoopResult,
    StepWork,
    checkpointer_for,
    curve_csv,
    measured_peak,
    train_measured,
    training_columns,
    warmup_cosine,
)

FAILED_MARKER = "FAILED.json"
"""Written by a failed upstream cell in place of its model (see stages/cells.py)."""

MIN_LR_RATIO = 0.1


class CellSkipped(RuntimeError):
    """The method cannot run on this device (e.g. no 4-bit backend); the row is `skipped` with this reason."""


# --- checks before anything runs -----------------------------------------------------------------------------


def base_is_local(base: str) -> bool:
    return Path(base).exists() or base.startswith((".", "/")) or base.count("/") != 1


def check_cell(method: str, sft: SFTConfig, cfg: FinetuneConfig) -> None:
    """Raise ConfigError / FileNotFoundError for params that cannot work, before the cell starts.

    Checks the method slug, that a local base exists, and that `sft.max_seq_len` fits a base with a learned
    position table (RoPE and the other computed encodings take any position; see `beyond_base_context`).
    """
    if method not in METHODS:
        raise ConfigError(f"[matrix] finetune_methods: unknown method {method!r} (known: {', '.join(METHODS)})")
    from transformers import AutoConfig

    import efficientllm.models  # noqa: F401  (registers the efficientlm model type with the Auto classes)

    if base_is_local(cfg.base_model) and not Path(cfg.base_model).exists():
        raise FileNotFoundError(f"[finetune] base_model: {cfg.base_model} does not exist (run `dvc repro pretrain`)")
    if (Path(cfg.base_model) / FAILED_MARKER).exists():
        return  # the upstream cell failed: the run records it as this cell's failure
    if Path(cfg.base_model).exists():  # a local folder: safetensors weights only (a pickle is refused)
        require_safetensors(Path(cfg.base_model), "[finetune] base_model")
    config = AutoConfig.from_pretrained(cfg.base_model, revision=cfg.base_revision)
    if beyond_base_context(config, sft.max_seq_len) and getattr(config, "positional", None) == "learned":
        raise ConfigError(f"[sft] max_seq_len={sft.max_seq_len} exceeds the base's learned position table "
                          f"(max_position_embeddings={config.max_position_embeddings})")


def beyond_base_context(config: Any, seq_len: int) -> bool:
    """True when `seq_len` exceeds the positions the base was configured (and usually trained) for."""
    max_pos = getattr(config, "max_position_embeddings", None)
    return max_pos is not None and seq_len > max_pos


# --- the base model ------------------------------------------------------------------------------------------


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on a CUDA device that supports it, else float32."""
    if spec == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return getattr(torch, spec)


def mixed_precision(model: nn.Module, dtype: torch.dtype) -> dict[str, Any]:
    """One precision policy for every method: trained parameters in float32 (master weights: a bf16 weight would
    round small updates away), frozen floating-point weights at the compute `dtype` (QLoRA included: peft's
    prepare_model_for_kbit_training upcasts the frozen embeddings, norms and head to float32, which LoRA's frozen
    base is not; they go back), and every forward under `autocast(dtype)` when it is 16-bit. Returns the row's
    description; the caller's forwards run in `precision_context(device, dtype)`."""
    for p in model.parameters():
        if not p.is_floating_point():  # bitsandbytes' packed 4-bit weights (uint8)
            continue
        want = torch.float32 if p.requires_grad else dtype
        if p.dtype != want:
            p.data = p.data.to(want)
    name = str(dtype).removeprefix("torch.")
    return {"master_weights": "float32", "frozen_dtype": name, "autocast": name if dtype != torch.float32 else None}


def precision_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """autocast to `dtype` on `device` for a 16-bit compute dtype, else nothing (float32 forwards)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def load_base(cfg: FinetuneConfig, method: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The base causal LM, loaded as `method` needs it (QLoRA: 4-bit through transformers' bitsandbytes path)."""
    from transformers import AutoModelForCausalLM

    import efficientllm.models  # noqa: F401

    # safetensors only: a pickle checkpoint (pytorch_model.bin) could run code when loaded, so it is refused
    kwargs: dict[str, Any] = {"revision": cfg.base_revision, "dtype": dtype, "use_safetensors": True}
    quantization = BASE_QUANTIZATION.get(method)
    if quantization is not None:
        kwargs["quantization_config"] = quantization(cfg, device, dtype)
        kwargs["device_map"] = {"": str(device)}
        return AutoModelForCausalLM.from_pretrained(cfg.base_model, **kwargs)
    return AutoModelForCausalLM.from_pretrained(cfg.base_model, **kwargs).to(device)


def load_tokenizer(cfg: FinetuneConfig) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.base_model, revision=cfg.base_revision)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding positions carry no loss, so any id works
    return tok


# --- parameter and FLOP accounting ---------------------------------------------------------------------------


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """total / trainable parameters (shared tensors once; 4-bit weights counted unpacked), and adapter params."""
    params = {id(p): (n, p) for n, p in model.named_parameters(remove_duplicate=True)}
    total = sum(logical_numel(p) for _, p in params.values())
    trainable = sum(logical_numel(p) for _, p in params.values() if p.requires_grad)
    adapter = sum(p.numel() for n, p in params.values() if "lora_" in n)
    return {"total": total, "trainable": trainable, "adapter": adapter}


def _linear_flops(module: nn.Module) -> int:
    return 2 * module.in_features * module.out_features


def training_flops_per_token(model: nn.Module, seq_len: int) -> dict[str, float]:
    """Analytic matmul FLOPs per token of one training step, as the method trains (an estimate).

    forward = 2 x in x out over every linear layer (adapters included, embeddings free) + dense attention
    4 x n_layers x seq_len x n_heads x head_dim. Backward: activation gradients (= forward of every linear above
    the lowest trainable block, 2 x forward attention there) + weight gradients (2 x in x out of trainable linears
    only). Full fine-tuning comes out at 3 x forward; adapters at ~2 x forward; freeze less when embeddings are untied.
    """
    config = getattr(model, "config", None)
    n_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    n_heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    head_dim = int(getattr(config, "head_dim", 0) or (hidden // n_heads if n_heads else 0))
    attn_per_layer = 4.0 * seq_len * n_heads * head_dim
    blocks = list(decoder_blocks(model))
    in_block: dict[int, int] = {}
    for b, block in enumerate(blocks):
        for m in block.modules():
            in_block[id(m)] = b
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    fwd_linear = sum(_linear_flops(m) for m in linears)
    trainable_linear = sum(_linear_flops(m) for m in linears if m.weight.requires_grad)
    # The lowest block whose activations need gradients: the first with a trainable parameter (0 when anything
    # below the blocks, e.g. a tied embedding, trains).
    lowest = len(blocks)
    for b, block in enumerate(blocks):
        if any(p.requires_grad for p in block.parameters()):
            lowest = b
            break
    get_in = getattr(model, "get_input_embeddings", None)
    emb = get_in() if callable(get_in) else None
    if emb is not None and any(p.requires_grad for p in emb.parameters()):
        lowest = 0
    act_linear = sum(_linear_flops(m) for m in linears if in_block.get(id(m), len(blocks)) >= lowest)
    forward = fwd_linear + n_layers * attn_per_layer
    backward = act_linear + 2 * (n_layers - lowest) * attn_per_layer + trainable_linear
    return {"forward": float(forward), "training": float(forward + backward), "lowest_grad_block": lowest}


# --- batches, eval loss, exact match -------------------------------------------------------------------------


def collate(input_ids: list[list[int]], labels: list[list[int]], pad_id: int, seq_len: int,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to `seq_len`: (input_ids, labels) of shape (B, seq_len); padding labels are IGNORE_INDEX."""
    ids = torch.full((len(input_ids), seq_len), pad_id, dtype=torch.long)
    lab = torch.full((len(input_ids), seq_len), IGNORE_INDEX, dtype=torch.long)
    for i, (x, y) in enumerate(zip(input_ids, labels, strict=True)):
        ids[i, :len(x)] = torch.as_tensor(x)
        lab[i, :len(y)] = torch.as_tensor(y)
    return ids.to(device), lab.to(device)


def batch_order(n: int, batch_size: int, seed: int, n_batches: int) -> list[list[int]]:
    """`n_batches` lists of indices: seeded permutations of range(n), one after another, cut into batches."""
    rng = random.Random(f"batches-{seed}")
    order: list[int] = []
    out = []
    for _ in range(n_batches):
        if len(order) < batch_size:
            perm = list(range(n))
            rng.shuffle(perm)
            order.extend(perm)
        out.append(order[:batch_size])
        del order[:batch_size]
    return out


@torch.no_grad()
def response_loss(model: nn.Module, enc: EncodedSFT, batch_size: int, pad_id: int, seq_len: int,
                  device: torch.device, dist: DistContext | None = None, examples: ExampleLog | None = None) -> float:
    """Mean cross-entropy per response token over the encoded records (prompt and padding excluded).

    `examples`: each record's response-loss sum and token count is added to it (set `eval_loss`, this rank's).

    Under several processes (`dist`) the batches go round-robin to the ranks and the token sums are added up,
    so every rank gets the same figure. A sharded (FSDP) forward is a collective: every rank then runs as many
    forwards as the busiest one, idle ones on a batch whose loss they do not count.
    """
    dist = dist or single_process(device)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    starts = list(range(0, len(enc.input_ids), batch_size))
    mine = starts[dist.rank::dist.world_size]
    rounds = -(-len(starts) // dist.world_size) if is_sharded(model) else len(mine)
    for i in range(rounds):
        start = mine[i] if i < len(mine) else starts[0]
        ids, lab = collate(enc.input_ids[start:start + batch_size], enc.labels[start:start + batch_size],
                           pad_id, seq_len, device)
        logits = model(input_ids=ids, use_cache=False).logits.float()  # (B, T, V)
        if i >= len(mine):
            continue
        shift_logits, shift_labels = logits[:, :-1].reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1)
        total += float(nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX,
                                                   reduction="sum"))
        count += int((shift_labels != IGNORE_INDEX).sum())
        if examples is not None:
            per_token = nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX,
                                                    reduction="none").view(len(ids), -1)  # (B, T-1)
            tokens = (lab[:, 1:] != IGNORE_INDEX).sum(dim=1)
            for j, (loss_sum, n) in enumerate(zip(per_token.sum(dim=1).tolist(), tokens.tolist(), strict=True)):
                if n:
                    examples.add("eval_loss", "ratio", enc.record_ids[start + j], loss_sum, n)
    total, count = dist.sum([total, count])
    if rounds and is_sharded(model):
        # FSDP leaves the root unit's weights (embeddings, final norm, LM head) gathered after a forward, in place
        # of their shards: reshard so that an optimizer built next, or a state dict, sees the shards
        model.reshard()
    model.train(was_training)
    if count == 0:
        raise ValueError("no response tokens in the eval records (raise sft.max_seq_len)")
    return total / count


@torch.no_grad()
def exact_match(model: nn.Module, tokenizer: Any, records: list[dict[str, Any]], *, template: str,
                prompt_template: str, max_new_tokens: int, device: torch.device) -> dict[str, Any]:
    """Greedy answers to `records` (those with an `answer`): the text inside <Output> must equal the answer."""
    records = [r for r in records if r.get("answer")]
    if not records:
        return {"exact_match": None, "exact_match_n": 0}
    prompts = [format_example(r, tokenizer, template=template, prompt_template=prompt_template)[0] for r in records]
    encoded = [tokenizer(p, add_special_tokens=(template == "plain"))["input_ids"] for p in prompts]
    pad = tokenizer.pad_token_id
    ids, mask = left_padded(encoded, pad)
    width = ids.shape[1]
    was_training = model.training
    model.eval()
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    model.train(was_training)
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    answers = [extract_output(t) for t in texts]
    correct = [a == r["answer"].strip() for a, r in zip(answers, records, strict=True)]
    hits = sum(correct)
    return {"exact_match": hits / len(records), "exact_match_n": len(records), "protocol": "generate",
            "examples": [{"set": "exact_match", "stat": "ratio", "example": str(r.get("id", i)),
                          "value": float(c), "weight": 1.0} for i, (r, c) in enumerate(zip(records, correct,
                                                                                              strict=True))],
            "exact_match_samples": [{"answer": r["answer"], "generated": t[:200]}
                                    for r, t in list(zip(records, texts, strict=True))[:3]]}


# --- saving --------------------------------------------------------------------------------------------------


def _weights_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors"))


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def _uses_initial_conversion(model: nn.Module) -> bool:
    """PiSSA-style inits change the base; their adapter is saved relative to the original base (peft converts it)."""
    if not _is_peft(model):
        return False
    init = getattr(model.peft_config["default"], "init_lora_weights", True)
    return isinstance(init, str) and init.startswith(("pissa", "olora", "corda"))


def save_cell(model: nn.Module, tokenizer: Any, method: str, cfg: FinetuneConfig, dtype: torch.dtype,
              out_dir: Path, initial_adapter: Path | None) -> dict[str, Any]:
    """Write `<out_dir>/adapter` and `<out_dir>/merged` atomically (one folder swap); returns size facts.

    QLoRA's merge goes into a freshly loaded full-precision base (merging into 4-bit weights would requantise
    the update away); the merged model then differs from the trained 4-bit one by the base's quantisation error.
    """
    from safetensors.torch import save_file

    facts: dict[str, Any] = {}
    with atomic_dir(out_dir) as tmp:
        adapter_dir, merged_dir = tmp / "adapter", tmp / "merged"
        adapter_dir.mkdir()
        if _is_peft(model):
            kwargs = {}
            if initial_adapter is not None:
                kwargs["path_initial_model_for_weight_conversion"] = str(initial_adapter)
            model.save_pretrained(adapter_dir, safe_serialization=True, **kwargs)
            facts["adapter_format"] = "peft"
            if is_loaded_in_4bit(model):
                from peft import PeftModel

                fp_base = load_base(cfg, "full", torch.device("cpu"), dtype)
                merged = PeftModel.from_pretrained(fp_base, adapter_dir).merge_and_unload()
                facts["merged_from"] = "full-precision base + saved adapter"
            else:
                merged = model.merge_and_unload()
                facts["merged_from"] = "merge_and_unload of the trained model"
        elif method == "full":
            merged = model
            (adapter_dir / "checkpoint.json").write_text(json.dumps(
                {"method": "full", "checkpoint": "../merged", "note": "full fine-tuning: the model is the checkpoint"}
            ) + "\n")
            facts["adapter_format"] = "full checkpoint (merged/)"
        else:  # freeze: the trained tensors are the delta a user ships
            trained = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
            save_file(trained, str(adapter_dir / "trainable.safetensors"), metadata={"format": "pt"})
            (adapter_dir / "trainable.json").write_text(json.dumps(
                {"method": method, "base_model": cfg.base_model, "tensors": sorted(trained)}, indent=1) + "\n")
            merged = model
            facts["adapter_format"] = "trained tensors (safetensors)"
        merged.save_pretrained(merged_dir, safe_serialization=True)
        tokenizer.save_pretrained(merged_dir)
        facts["adapter_size_bytes"] = _weights_bytes(adapter_dir) if method != "full" else _weights_bytes(merged_dir)
        facts["merged_size_bytes"] = _weights_bytes(merged_dir)
    return facts


# --- the cell ------------------------------------------------------------------------------------------------


def _trajectory_key(method: str, dataset: str, sft: SFTConfig, cfg: FinetuneConfig, data_dir: Path) -> str:
    """What determines a fine-tuning run's state after each step: params (less the reliability knobs), the SFT
    data, the base weights and the training code."""
    train = {k: v for k, v in dataclasses.asdict(cfg).items()
             if k not in RUN_KNOBS}
    data = {p.name: file_digest(p) for p in sorted(Path(data_dir).glob("*.jsonl"))}
    base = Path(cfg.base_model)
    base_files = {p.name: file_digest(p) for p in sorted(base.glob("*")) if p.is_file()} if base.is_dir() else {}
    here = Path(__file__).resolve().parent
    code = code_digest([here / "finetune.py", here / "training.py", here / "techniques" / "peft_methods.py",
                        here / "data" / "sft.py", here / "models"])
    return cell_key("finetune", method, dataset, dataclasses.asdict(sft), train, data, base_files, code)


def distributed_unsupported(method: str, parallelism: str, world_size: int) -> str | None:
    """Why `method` cannot train as `world_size` ranks under `parallelism` (None: it can). FSDP cannot shard
    bitsandbytes' packed 4-bit weights (QLoRA's base); DDP replicates them, and QLoRA runs."""
    if world_size > 1 and parallelism == "fsdp" and method in BASE_QUANTIZATION:
        return (f"{method} under finetune.parallelism: fsdp is not supported (FSDP cannot shard bitsandbytes "
                "4-bit weights); use parallelism: ddp")
    return None


def _rank_loss(out: Any, world_size: int) -> torch.Tensor:
    """The loss one rank backpropagates. Alone: the model's mean over its response tokens. Under `world_size`
    ranks the forward got `num_items_in_batch` = the whole micro-batch's response tokens, so `out.loss` is this
    rank's token sum over all of them; times the world size, the gradient mean over ranks (DDP, FSDP) is the
    gradient of one process's loss. An auxiliary loss (our MoE balance term, already in `out.loss`) stays each
    rank's own, whose mean is the single-process term."""
    if world_size == 1:
        return out.loss
    aux = getattr(out, "aux_loss", None)
    if aux is None:
        return out.loss * world_size
    return (out.loss - aux) * world_size + aux


def _plain_model(model: nn.Module, dist: DistContext, cfg: FinetuneConfig, method: str,
                 dtype: torch.dtype) -> nn.Module | None:
    """Rank 0's trained model as one plain (not distributed) module, for exact match and saving; None elsewhere.

    One process or DDP: the model itself (DDP keeps a whole replica on every rank). FSDP: a collective (every rank
    calls it) gathers the full state dict onto rank 0's host, where the model is rebuilt as the cell built it (the
    base from disk, then the method: the same module tree, peft config and adapter names) and the trained weights
    load into it strictly, adapter tensors included; rebuilding, rather than copying the sharded module's class,
    keeps peft's wrapper (save_pretrained, merge_and_unload) and PiSSA's residual base.
    """
    if not is_sharded(model):
        return model if dist.is_main else None
    state = full_state_dict(model, dist)
    if not dist.is_main:
        return None
    plain = METHODS[method](load_base(cfg, method, torch.device("cpu"), dtype), cfg)
    mixed_precision(plain, dtype)  # the layout a one-process run trains (the gathered state is float32)
    plain.load_state_dict(state)
    return plain.to(dist.device)


@dataclass
class SFTData:
    """One cell's prepared SFT data, encoded with the base's tokenizer."""

    stats: dict[str, Any]
    """prepare_sft's stats.json (source, label, split seed, hub commit; empty when absent)."""
    eval_records: list[dict[str, Any]]
    """The eval split's records (exact match answers some of them)."""
    train: EncodedSFT
    evals: EncodedSFT


def load_data(data_dir: Path, sft: SFTConfig, cfg: FinetuneConfig, tokenizer: Any) -> SFTData:
    """The train split and the first `cfg.eval_examples` eval records, encoded as `sft` says; ValueError when the
    length policy leaves no sequence."""
    data_dir = Path(data_dir)
    stats_file = data_dir / "stats.json"
    stats = json.loads(stats_file.read_text(encoding="utf-8")) if stats_file.exists() else {}
    train_records, eval_records = load_split(data_dir, "train"), load_split(data_dir, "eval")
    enc_kwargs = dict(template=sft.template, prompt_template=sft.prompt_template, max_seq_len=sft.max_seq_len,
                      overlong=sft.overlong)
    train = encode_examples(train_records, tokenizer, **enc_kwargs)
    evals = encode_examples(eval_records[:cfg.eval_examples], tokenizer, **enc_kwargs)
    if not train.input_ids:
        raise ValueError(f"no train sequence left after the length policy (dropped {train.n_dropped})")
    if not evals.input_ids:
        raise ValueError(f"no eval sequence left after the length policy (dropped {evals.n_dropped})")
    return SFTData(stats=stats, eval_records=eval_records, train=train, evals=evals)


def build_model(method: str, cfg: FinetuneConfig, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, int]:
    """(the base with `method` applied, in train mode; the base's parameter count). The adapter init is seeded
    with `cfg.seed`, the same on every rank."""
    model = load_base(cfg, method, device, dtype)
    base_params = parameter_counts(model)["total"]
    if cfg.gradient_checkpointing and method != "qlora":  # qlora enables it in prepare_model_for_kbit_training
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(cfg.seed)  # the same adapter init on every rank
    model = METHODS[method](model, cfg)
    model.train()
    return model, base_params


def sft_step(train_model: nn.Module, data: EncodedSFT, batches: list[list[int]], *, cfg: FinetuneConfig,
             per_rank: int, pad_id: int, seq_len: int, dist: DistContext, dtype: torch.dtype,
             scaler: Any = None) -> Callable[[int], StepWork]:
    """One optimizer step's forwards (under the compute dtype's autocast) and backwards (through `scaler`'s loss
    scaling for float16) over its `cfg.grad_accum_steps` micro-batches (batch order: `batches`, a list indexed by
    micro-step, so resuming needs no skipping). The step counts its response tokens (label != -100, the tokens
    the loss is on) for throughput, and every padded position for FLOPs."""
    # Response tokens (shifted targets) of each record: a micro-batch's total weights the ranks' losses.
    targets = [sum(y != IGNORE_INDEX for y in lab[1:seq_len]) for lab in data.labels]
    device = dist.device
    samples = cfg.batch_size * cfg.grad_accum_steps
    autocast = precision_context(device, dtype)

    def step_fn(step: int) -> StepWork:
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # on the device: one sync per step
        response_tokens = 0
        for micro in range(cfg.grad_accum_steps):
            idx = batches[step * cfg.grad_accum_steps + micro]
            response_tokens += sum(targets[i] for i in idx)  # the global micro-batch's
            kwargs = {"num_items_in_batch": sum(targets[i] for i in idx)} if dist.distributed else {}
            idx = idx[dist.rank * per_rank:(dist.rank + 1) * per_rank]  # this rank's share
            ids, lab = collate([data.input_ids[i] for i in idx], [data.labels[i] for i in idx], pad_id, seq_len,
                               device)
            # Right padding under a causal mask cannot change real positions, so no attention mask is passed and
            # the kernel takes its fast causal path; padding labels carry no loss.
            with gradient_sync(train_model, enabled=micro == cfg.grad_accum_steps - 1):
                with autocast:
                    out = train_model(input_ids=ids, labels=lab, use_cache=False, **kwargs)
                loss = _rank_loss(out, dist.world_size)
                scaled = loss / cfg.grad_accum_steps
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            loss_sum += loss.detach().double()
        # the micro-batches' mean loss (the loop averages it over ranks)
        return StepWork(loss=loss_sum / cfg.grad_accum_steps, tokens=response_tokens,
                        computed_tokens=samples * seq_len)

    return step_fn


def method_facts(method: str, cfg: FinetuneConfig, counts: dict[str, int], is_4bit: bool) -> dict[str, Any]:
    """The `extra` fields that say what the method trained and with which knobs."""
    adapter = bool(counts["adapter"])
    lr = learning_rate(method, cfg)
    return {
        "method": method,
        "n_adapter_params": counts["adapter"],
        "trainable_fraction": counts["trainable"] / counts["total"] if counts["total"] else None,
        "lr": lr,
        "lr_b": lr * cfg.loraplus_lr_ratio if method == "loraplus" else None,
        "lora_r": cfg.lora_r if adapter else None,
        "lora_alpha": cfg.lora_alpha if adapter else None,
        "target_modules": list(cfg.target_modules) if adapter else None,
        "freeze_trainable_blocks": cfg.freeze_trainable_blocks if method == "freeze" else None,
        "qlora_quant_type": cfg.qlora_quant_type if is_4bit else None,
        "same_batch_size_as_peft": True,
    }


def run_facts(loop: LoopResult, cfg: FinetuneConfig, dist: DistContext, *, sharded: bool,
              steps: int) -> dict[str, Any]:
    """The `extra` fields that say how the run was laid out: steps, batches, processes, checkpoints."""
    return {
        "resumed_from_step": loop.start or None,  # a killed run resumed from its checkpoint after this many steps
        "checkpoint_s": loop.checkpoint_s,  # checkpoint saves, left out of every window figure
        "checkpointing": ("off: FSDP shards (checkpoint/resume needs one process or DDP)"
                          if cfg.checkpoint_every_steps and sharded else None),
        "parallelism": cfg.parallelism if dist.distributed else None,
        "per_device": loop.per_device,
        "per_device_batch_size": cfg.batch_size // dist.world_size,
        "samples_per_step": cfg.batch_size * cfg.grad_accum_steps,
        "grad_accum_steps": cfg.grad_accum_steps,
        "optimizer_steps": steps,
        "window_tokens": loop.tokens,  # response tokens (label != -100): what tokens_per_s / tokens_per_j count
        "window_tokens_padded": loop.computed_tokens,  # every position the model ran: what MFU counts
        "gradient_checkpointing": cfg.gradient_checkpointing,
    }


def data_facts(data: SFTData, sft: SFTConfig, em: dict[str, Any]) -> dict[str, Any]:
    """The `extra` fields that say what data the cell trained and was scored on."""
    return {
        "dataset_source": data.stats.get("source"),
        "dataset_label": data.stats.get("label"),
        "dataset_commit": data.stats.get("hub_commit"),  # the hub commit prepare_sft read (hub sources only)
        "eval_examples": len(data.evals.input_ids),
        "exact_match": em["exact_match"],
        "exact_match_n": em["exact_match_n"],
        "exact_match_samples": em.get("exact_match_samples"),
        "exact_match_protocol": em.get("protocol"),  # generate | given_thought (efficientllm.answers)
        **{k: em[k] for k in ("exact_match_letter_n", "exact_match_skipped_long") if k in em},
        "template": data.train.template,
        "train_examples": len(data.train.input_ids),
        "train_truncated": data.train.n_truncated,
        "train_dropped": data.train.n_dropped,
        "eval_truncated": data.evals.n_truncated,
        "eval_dropped": data.evals.n_dropped,
    }


def _runnable(method: str, cfg: FinetuneConfig, dist: DistContext) -> int:
    """Sequences per rank of every micro-batch, once the cell is known to be runnable: ConfigError for an unknown
    method or a batch the ranks cannot split, RuntimeError for a failed upstream base, CellSkipped for a method the
    device (or the parallelism) cannot run."""
    if method not in METHODS:
        raise ConfigError(f"[matrix] finetune_methods: unknown method {method!r} (known: {', '.join(METHODS)})")
    marker = Path(cfg.base_model) / FAILED_MARKER
    if marker.exists():  # the upstream cell left a marker instead of weights
        raise RuntimeError(f"the base model's cell failed: {marker.read_text(encoding='utf-8').strip()}")
    per_rank, _ = micro_batching(cfg.batch_size, dist.world_size, None, section="finetune")
    reason = distributed_unsupported(method, cfg.parallelism, dist.world_size) or unsupported_reason(method,
                                                                                                     dist.device)
    if reason is not None:
        raise CellSkipped(reason)
    return per_rank


def _train(model: nn.Module, train_model: nn.Module, data: SFTData, *, method: str, dataset: str, sft: SFTConfig,
           cfg: FinetuneConfig, measure: MeasureConfig, dist: DistContext, dtype: torch.dtype, data_dir: Path,
           checkpoint_dir: Path | None, pad_id: int) -> tuple[LoopResult, int, dict[str, Any], float | None]:
    """The measured training run of a cell: (the loop's result, optimizer steps, the peak-FLOP/s calibration and
    the summed peak)."""
    per_rank = cfg.batch_size // dist.world_size
    opt = make_optimizer(method, model, cfg)  # after wrapping: FSDP replaced the parameters by shards
    samples_per_step = cfg.batch_size * cfg.grad_accum_steps
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(data.train.input_ids) / samples_per_step))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, cfg.lr_warmup_steps, MIN_LR_RATIO))
    peak, peak_total = measured_peak(dist.device, dtype, measure, dist)
    checkpointer = checkpointer_for(checkpoint_dir, cfg.checkpoint_every_steps, model, dist=dist, trainable_only=True,
                                    key=lambda: _trajectory_key(method, dataset, sft, cfg, data_dir))
    batches = batch_order(len(data.train.input_ids), cfg.batch_size, cfg.seed, steps * cfg.grad_accum_steps)
    # float16 compute: loss scaling keeps small gradients from flushing to zero (bf16 has float32's range)
    scaler = torch.amp.GradScaler(dist.device.type) if dtype == torch.float16 else None
    step_fn = sft_step(train_model, data.train, batches, cfg=cfg, per_rank=per_rank, pad_id=pad_id,
                       seq_len=sft.max_seq_len, dist=dist, dtype=dtype, scaler=scaler)
    share = batches[0][dist.rank * per_rank:(dist.rank + 1) * per_rank]  # this rank's part of the first micro-batch
    ids, lab = collate([data.train.input_ids[i] for i in share], [data.train.labels[i] for i in share], pad_id,
                       sft.max_seq_len, dist.device)

    def probe() -> Any:  # one micro-batch's forward, for the activation bytes of the memory anatomy
        with precision_context(dist.device, dtype):
            return model(input_ids=ids, labels=lab, use_cache=False).loss

    loop = train_measured(step_fn, section="finetune", model=model, optimizer=opt, scheduler=sched, steps=steps,
                          warmup_steps=min(cfg.measure_warmup_steps, steps - 1),
                          clip_params=[p for p in model.parameters() if p.requires_grad], grad_clip=cfg.grad_clip,
                          dist=dist, measure=measure, progress=("samples", samples_per_step),
                          guard=CellGuard(cfg.timeout_s, cfg.memory_limit_mb, "finetune"), checkpointer=checkpointer,
                          scaler=scaler, probe=None if is_sharded(model) else probe)
    return loop, steps, peak, peak_total


def _evaluate(model: nn.Module, data: SFTData, *, per_rank: int, pad_id: int, seq_len: int, dist: DistContext,
              autocast: contextlib.AbstractContextManager) -> tuple[float, ExampleLog]:
    """The trained model's eval loss, and (rank 0) every rank's per-record losses behind it."""
    examples = ExampleLog()
    with autocast:
        eval_loss = response_loss(model, data.evals, per_rank, pad_id, seq_len, dist.device, dist=dist,
                                  examples=examples)
    return eval_loss, ExampleLog([r for part in dist.gather(examples.records) or [] for r in part])


def _initial_adapter(model: nn.Module, out_dir: Path | None,
                     dist: DistContext) -> tempfile.TemporaryDirectory | None:
    """PiSSA-style inits change the base, so their adapter is saved relative to the base as loaded (peft converts
    it at save time from the initial adapter, kept aside here): rank 0, when the cell saves; None otherwise."""
    if out_dir is None or not dist.is_main or not _uses_initial_conversion(model):
        return None
    initial = tempfile.TemporaryDirectory(prefix="efficientllm-init-adapter-")
    model.save_pretrained(initial.name, safe_serialization=True)
    return initial


def _rank0_results(plain: nn.Module | None, tokenizer: Any, data: SFTData, *, sft: SFTConfig, cfg: FinetuneConfig,
                   method: str, dtype: torch.dtype, device: torch.device, out_dir: Path | None,
                   initial: tempfile.TemporaryDirectory | None, autocast: contextlib.AbstractContextManager,
                   phases: Phases) -> tuple[dict[str, Any], dict[str, Any]]:
    """(exact match, saved facts) of the trained model, on rank 0 (`plain` is None on the other ranks)."""
    em: dict[str, Any] = {"exact_match": None, "exact_match_n": 0}
    saved: dict[str, Any] = {}
    if plain is not None:
        if cfg.gen_eval_examples:
            phases.start("exact match")
            scorer = given_thought_accuracy if cfg.answer_eval == "given_thought" else exact_match
            with autocast:
                em = scorer(plain, tokenizer, data.eval_records[:cfg.gen_eval_examples],
                            template=data.train.template, prompt_template=sft.prompt_template,
                            max_new_tokens=cfg.max_new_tokens, device=device)
        if out_dir is not None:
            phases.start("save")
            saved = save_cell(plain, tokenizer, method, cfg, dtype, Path(out_dir),
                              Path(initial.name) if initial is not None else None)
    if initial is not None:
        initial.cleanup()
    phases.stop()
    return em, saved


def finetune_cell(*, cell: CellId, method: str, dataset: str, sft: SFTConfig, cfg: FinetuneConfig,
                  measure: MeasureConfig, data_dir: Path, out_dir: Path | None, checkpoint_dir: Path | None = None,
                  dist: DistContext | None = None) -> CellOutcome:
    """Fine-tune the base with `method` on the prepared SFT split in `data_dir` and measure it.

    Raises CellSkipped when the device cannot run the method, TrainingDiverged on a NaN/inf loss (the stage turns
    both into rows). Writes `<out_dir>/adapter` and `<out_dir>/merged` atomically when out_dir is given.
    With `checkpoint_dir` and `cfg.checkpoint_every_steps` (one process), saves the trainable weights, optimizer,
    scheduler and RNG every N steps and resumes from the last checkpoint of the same key (efficientllm.checkpoint);
    a resumed run's quality columns equal an uninterrupted one's, its timing columns cover the steps it ran itself.
    Under several processes (`dist`, see the module docstring) every rank calls this; rank 0 writes out_dir and
    its return value holds the row (device_count = ranks, memory and energy summed over devices, extra.per_device).
    QLoRA under FSDP is CellSkipped (bitsandbytes' 4-bit weights do not shard); under DDP it runs.
    """
    t_cell = time.perf_counter()
    phases = Phases(f"finetune@{method}-{dataset}")
    phases.start("load data")
    dist = dist or single_process(cfg.device)
    device, per_rank = dist.device, _runnable(method, cfg, dist)
    tokenizer = load_tokenizer(cfg)
    data = load_data(data_dir, sft, cfg, tokenizer)
    seq_len, pad_id, dtype = sft.max_seq_len, tokenizer.pad_token_id, resolve_dtype(cfg.dtype, device)
    # FSDP: the base loads on the host; wrap_model moves each block to the device as it shards it
    sharded = dist.distributed and cfg.parallelism == "fsdp"
    phases.start("build model")
    rss_baseline = (RssSensor().read() or (None,))[0]  # the process before the model: the CPU peak is above it
    model, base_params = build_model(method, cfg, torch.device("cpu") if sharded else device, dtype)
    # FSDP shards need one dtype per unit: everything stays float32 there and FSDP casts to `dtype` to compute
    precision = mixed_precision(model, torch.float32 if sharded else dtype)
    autocast = precision_context(device, dtype)
    counts = parameter_counts(model)
    flops = training_flops_per_token(model, seq_len)
    model_bytes = weight_bytes(model)["total"]  # as held: QLoRA's 4-bit absmax / code constants included
    initial = _initial_adapter(model, out_dir, dist)

    # DDP replica / FSDP shards (identity for one process); `model` stays the module itself (FSDP: sharded in
    # place) for evaluation, the optimizer and checkpoints, `train_model` runs the training forwards.
    train_model = wrap_model(model, dist, cfg.parallelism, dtype if sharded and dtype != torch.float32 else None,
                             section="finetune")
    with autocast:
        eval_loss_initial = response_loss(model, data.evals, per_rank, pad_id, seq_len, device, dist=dist)
    phases.start("train")
    loop, steps, peak, peak_total = _train(model, train_model, data, method=method, dataset=dataset, sft=sft,
                                           cfg=cfg, measure=measure, dist=dist, dtype=dtype, data_dir=data_dir,
                                           checkpoint_dir=checkpoint_dir, pad_id=pad_id)
    warm = min(cfg.measure_warmup_steps, steps - 1)
    samples_per_step = cfg.batch_size * cfg.grad_accum_steps

    phases.start("evaluate")
    eval_loss, examples = _evaluate(model, data, per_rank=per_rank, pad_id=pad_id, seq_len=seq_len, dist=dist,
                                    autocast=autocast)
    # The last collectives (FSDP's state-dict gather) come before rank 0's own work: the other ranks may then end
    # while rank 0 generates and saves, however long that takes, without a collective timing out.
    plain = _plain_model(model, dist, cfg, method, dtype)
    em, saved = _rank0_results(plain, tokenizer, data, sft=sft, cfg=cfg, method=method, dtype=dtype, device=device,
                               out_dir=out_dir, initial=initial, autocast=autocast, phases=phases)

    window_s, window_samples = loop.window["window_s"], samples_per_step * len(loop.step_s)
    dtype_name = str(dtype).removeprefix("torch.")
    is_4bit = is_loaded_in_4bit(model) if method == "qlora" else False
    row = cell.ok_row(
        technique=method, model=cfg.base_model, dataset=dataset, dtype=cfg.qlora_quant_type if is_4bit else dtype_name,
        batch_size=cfg.batch_size, seq_len=seq_len, seed=cfg.seed,
        n_params=counts["total"], n_active_params=counts["total"], n_trainable_params=counts["trainable"],
        **training_columns(loop, flops_per_token=flops["training"], peak_total=peak_total, dist=dist,
                           warmup_steps=warm, rss_baseline=rss_baseline),
        st_samples_per_param_s=metrics.st_samples_per_param_s(window_samples, counts["total"], window_s),
        model_size_bytes=model_bytes, quality_metric="eval_loss", quality_value=eval_loss, eval_loss=eval_loss,
        duration_s=time.perf_counter() - t_cell,
        extra={
            **method_facts(method, cfg, counts, is_4bit),
            **data_facts(data, sft, em),
            **run_facts(loop, cfg, dist, sharded=is_sharded(model), steps=steps),
            **precision,
            "trainable_modules": trainable_modules(model),
            "phase_s": phases.seconds,
            "quality_sets": ["eval_loss"],  # examples.jsonl: the per-record losses behind quality_value
            # every seed the row's numbers depend on: adapter init + dropout + batch order, and the SFT data split
            "seeds": {"finetune": cfg.seed, "sft_split": data.stats.get("seed", sft.seed)},
            "base_model": cfg.base_model,
            "base_revision": cfg.base_revision,
            "base_source": cfg.base_source,
            **import_facts(cfg.base_model),  # an imported base: the file it came from and the quantization it carries
            "n_params_base": base_params,
            "st_param_count": "n_params: all parameters of the model as trained (base + adapter), the paper's ST",
            "st_samples_per_trainable_param_s": metrics.st_samples_per_param_s(window_samples, counts["trainable"],
                                                                                window_s),
            "window_samples": window_samples,
            "compute_dtype": dtype_name,
            "beyond_base_context": beyond_base_context(getattr(model, "config", None), seq_len),
            "eval_loss_initial": eval_loss_initial,
            "forward_flops_per_token": flops["forward"],
            "lowest_grad_block": flops["lowest_grad_block"],
            "flops_estimate": "analytic: linear layers + dense attention, backward as the method trains",
            "peak_flops_calibration": peak,
            **saved,
        },
    )
    examples.extend(em.get("examples", []))
    return CellOutcome(row=row, files={"loss.csv": curve_csv(loop.curve), EXAMPLES_FILE: examples.text()})
