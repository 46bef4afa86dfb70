"""Fine-tuning a hub vision-language model (Qwen2.5-VL, SmolVLM, ...) on image + text SFT rows: `finetune_vlm`.

Rows are `{image: <file, relative to the data folder>, question, answer}` in `train.jsonl` / `eval.jsonl`. Each row
becomes one chat (user: the image and the question; assistant: the answer) through the model's own processor and
chat template; the loss is on the answer tokens only (the prompt, the image tokens included, is labelled -100). The
methods are the text axis' registry (efficientllm.techniques.METHODS, through peft on the language model's
`finetune_vlm.target_modules`; freeze trains the last language-model blocks), the loop is efficientllm.training's
one measured loop, and the row has axis `finetune_vision` (one board per model), quality `eval_loss` on held-out
rows, ST = rows / parameter / s, tokens = answer tokens.

Rows are run one at a time (images give every row its own length; no padding), gradients accumulated over the
`batch_size` rows of a step. The hub path needs network (`HF_HUB_OFFLINE=0`); the tests run the same code on a tiny
random-initialised Qwen2_5_VLForConditionalGeneration with a processor built offline.

    python -m stages.finetune_vlm --model qwen2-5-vl-3b --method lora     # profiles/paper-vision.yaml
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from efficientllm.checkpoint import CellGuard
from efficientllm.config import FinetuneVLMConfig, MeasureConfig
from efficientllm.distributed import DistContext, single_process
from efficientllm.measure import metrics
from efficientllm.records import CellId, CellOutcome
from efficientllm.techniques import METHODS, make_optimizer
from efficientllm.techniques.peft_methods import trainable_modules
from efficientllm.training import StepWork, curve_csv, measured_peak, train_measured, training_columns, warmup_cosine
from efficientllm.vision.diffusion import compute_context

IGNORE_INDEX = -100


def read_rows(folder: Path, split: str) -> list[dict[str, Any]]:
    """The rows of `folder`/<split>.jsonl; a row without image / question / answer or a missing image fails naming
    the file and line."""
    path = Path(folder) / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"[finetune_vlm] data: {path} does not exist")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [k for k in ("image", "question", "answer") if not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(f"{path}:{n}: missing {', '.join(missing)}")
        if not (Path(folder) / row["image"]).exists():
            raise FileNotFoundError(f"{path}:{n}: image {row['image']} not found under {folder}")
        rows.append(row)
    return rows


def _chat(question: str, answer: str | None) -> list[dict[str, Any]]:
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if answer is not None:
        chat.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return chat


def encode_row(processor: Any, row: dict[str, Any], folder: Path, max_seq_len: int) -> dict[str, torch.Tensor]:
    """One row as model inputs + labels: the processor's tensors for the whole chat, labels -100 on the prompt."""
    from PIL import Image

    with Image.open(Path(folder) / row["image"]) as im:
        image = im.convert("RGB")
    full = processor.apply_chat_template(_chat(row["question"], row["answer"]), tokenize=False)
    prompt = processor.apply_chat_template(_chat(row["question"], None), tokenize=False, add_generation_prompt=True)
    enc = dict(processor(text=[full], images=[image], return_tensors="pt"))
    n_prompt = int(processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"].shape[1])
    n = int(enc["input_ids"].shape[1])
    if n > max_seq_len:
        raise ValueError(f"[finetune_vlm] max_seq_len={max_seq_len}: row {row['image']!r} takes {n} tokens")
    labels = enc["input_ids"].clone()
    labels[:, :n_prompt] = IGNORE_INDEX
    if not (labels != IGNORE_INDEX).any():
        raise ValueError(f"[finetune_vlm] row {row['image']!r}: no answer tokens after the prompt")
    enc["labels"] = labels
    return enc


def _to(enc: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in enc.items()}


def vlm_step(model: torch.nn.Module, encoded: list[dict[str, torch.Tensor]], cfg: FinetuneVLMConfig,
             device: torch.device, autocast: Any) -> Callable[[int], StepWork]:
    """step_fn: the `batch_size` rows of step s (a seeded order), one forward each, losses averaged over the rows."""

    def step_fn(step: int) -> StepWork:
        idx = np.random.default_rng((cfg.seed, step)).choice(len(encoded), cfg.batch_size,
                                                             replace=cfg.batch_size > len(encoded))
        total = torch.zeros((), device=device)
        answer = computed = 0
        for i in idx:
            enc = _to(encoded[int(i)], device)
            with autocast:
                loss = model(**enc).loss / cfg.batch_size
            loss.backward()
            total += loss.detach()
            answer += int((enc["labels"] != IGNORE_INDEX).sum())
            computed += int(enc["input_ids"].numel())
        return StepWork(loss=total, tokens=answer, computed_tokens=computed)

    return step_fn


@torch.no_grad()
def eval_loss(model: torch.nn.Module, encoded: list[dict[str, torch.Tensor]], device: torch.device,
              autocast: Any) -> float:
    """Mean cross-entropy per answer token over the held-out rows."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for enc in encoded:
        enc = _to(enc, device)
        n = int((enc["labels"][:, 1:] != IGNORE_INDEX).sum())  # shifted labels: the tokens the loss averages
        with autocast:
            total += float(model(**enc).loss) * n
        count += n
    model.train(was)
    return total / count


def load_hub_vlm(spec: dict[str, Any], dtype: torch.dtype, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """The hub model (AutoModelForImageTextToText, safetensors only) and its processor at the pinned revision."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    revision = spec.get("revision")
    model = AutoModelForImageTextToText.from_pretrained(spec["id"], revision=revision, dtype=dtype,
                                                        use_safetensors=True)
    return model.to(device), AutoProcessor.from_pretrained(spec["id"], revision=revision)


def finetune_vlm_cell(*, cell: CellId, slug: str, spec: dict[str, Any], method: str, cfg: FinetuneVLMConfig,
                      measure: MeasureConfig, data_dir: Path, dist: DistContext | None = None,
                      load: Callable[..., tuple[torch.nn.Module, Any]] = load_hub_vlm) -> CellOutcome:
    """Fine-tune VLM `slug` with `method` on the rows of `data_dir` and measure it (`load` gives the model and its
    processor; the hub by default)."""
    from efficientllm.vision.pretrain import check_single_process

    t_cell = time.perf_counter()
    check_single_process(cfg)
    dist = dist or single_process(cfg.device)
    device = dist.device
    autocast, dtype_name = compute_context(device, cfg.dtype)
    model, processor = load(spec, torch.float32, device)
    train_rows, eval_rows = read_rows(data_dir, "train"), read_rows(data_dir, "eval")[:cfg.eval_examples]
    train = [encode_row(processor, r, data_dir, cfg.max_seq_len) for r in train_rows]
    evals = [encode_row(processor, r, data_dir, cfg.max_seq_len) for r in eval_rows]
    loss_before = eval_loss(model, evals, device, autocast)
    torch.manual_seed(cfg.seed)
    model = METHODS[method](model, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = make_optimizer(method, model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.steps, cfg.lr_warmup_steps, cfg.min_lr_ratio))
    peak, peak_total = measured_peak(device, torch.bfloat16 if dtype_name == "bfloat16" else torch.float32,
                                     measure, dist)
    loop = train_measured(vlm_step(model, train, cfg, device, autocast), section="finetune_vlm", model=model,
                          optimizer=opt, scheduler=sched, steps=cfg.steps, warmup_steps=cfg.measure_warmup_steps,
                          clip_params=[p for p in model.parameters() if p.requires_grad], grad_clip=cfg.grad_clip,
                          dist=dist, measure=measure, progress=("rows", cfg.batch_size),
                          guard=CellGuard(cfg.timeout_s, cfg.memory_limit_mb, "finetune_vlm"))
    loss_after = eval_loss(model, evals, device, autocast)
    window_s, rows_done = loop.window["window_s"], cfg.batch_size * len(loop.step_s)
    # 6 N FLOPs per computed token (2N forward, 4N backward): an estimate, labelled as such
    columns = training_columns(loop, flops_per_token=6.0 * n_params, peak_total=peak_total, dist=dist,
                               warmup_steps=cfg.measure_warmup_steps)
    row = cell.ok_row(
        technique=method, model=spec["id"], dataset=Path(data_dir).name, dtype=dtype_name, batch_size=cfg.batch_size,
        seq_len=max(int(e["input_ids"].shape[1]) for e in train), seed=cfg.seed, n_params=n_params,
        n_active_params=n_params, n_trainable_params=n_trainable, **columns,
        st_samples_per_param_s=metrics.st_samples_per_param_s(rows_done, n_params, window_s),
        model_size_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        quality_metric="eval_loss", quality_value=loss_after, eval_loss=loss_after,
        duration_s=time.perf_counter() - t_cell,
        extra={"method": method, "vlm": slug, "model_revision": spec.get("revision"), "eval_loss_initial": loss_before,
               "trainable_fraction": n_trainable / n_params, "trainable_modules": trainable_modules(model)[:50],
               "train_rows": len(train), "eval_rows": len(evals), "window_rows": rows_done,
               "token_unit": "answer token (label != -100); MFU counts every token, image tokens included",
               "flops_method": "estimate: 6 x parameters per computed token", "peak_flops_calibration": peak,
               "size": spec["id"], "seeds": {"finetune_vlm": cfg.seed}},
    )
    return CellOutcome(row=row, files={"loss.csv": curve_csv(loop.curve)})
