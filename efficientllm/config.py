"""Typed configuration: one frozen dataclass per `params.yaml` section.

The library never reads params.yaml itself; stages call `load_section(path, name)` for exactly the
sections dvc.yaml declares for them and pass the dataclasses on. Every field has a docstring under
it and, where it has one, a unit in its name. Unknown keys, missing keys, wrong types and values out
of range raise `ConfigError` naming the section, the key and what is allowed.

    python -c "from efficientllm.config import load_section; print(load_section('params.yaml', 'pretrain'))"
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class ConfigError(ValueError):
    """A params value that cannot be used; the message names section, key and what is allowed."""


def _meta(*, choices: tuple | None = None, min: float | None = None, max: float | None = None,
          min_exclusive: bool = False) -> dict:
    return {"choices": choices, "min": min, "max": max, "min_exclusive": min_exclusive}


@dataclass(frozen=True)
class MatrixConfig:
    """The DVC matrices: the cells each stage runs (a slug per cell)."""

    pretrain: tuple[str, ...] = ("mha",)
    """Pretraining recipe slugs, each defined in the `variants` section."""
    finetune_methods: tuple[str, ...] = ("lora",)
    """Fine-tuning method slugs (efficientllm.techniques.METHODS); the finetune matrix is methods x datasets."""
    finetune_datasets: tuple[str, ...] = ("arith",)
    """SFT dataset slugs, each defined in `sft.datasets`; one prepare_sft cell per slug."""
    quantize: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8", "int4", "fp4")
    """Precision slugs (efficientllm.techniques.quantization.PRECISIONS) of the `quantize` stage (the pretrained
    base) and of every hub model of `quantize_hub`; `bf16` is the reference of MCR and the quality gate."""
    quantize_sft: tuple[str, ...] = ("bf16", "int8", "int4")
    """Precision slugs of the `quantize_sft` stage (the fine-tuned model); empty: no such cells."""
    quantize_hub: tuple[str, ...] = ()
    """Hub model slugs (keys of `quantize_hub.models`) of the `quantize_hub` stage; empty: no such cells."""
    pretrain_vision: tuple[str, ...] = ()
    """DiT recipe slugs of the `pretrain_vision` stage, each defined in `vision_variants`; empty: no such cells."""
    finetune_vision: tuple[str, ...] = ()
    """Method slugs (efficientllm.techniques.METHODS, not qlora) of the `finetune_vision` stage (the pretrained DiT
    adapted to the held-out classes); empty: no such cells."""
    finetune_vlm: tuple[str, ...] = ()
    """Hub VLM slugs (keys of `finetune_vlm.models`) of the `finetune_vlm` stage; empty: no such cells."""
    finetune_vlm_methods: tuple[str, ...] = ("lora",)
    """Method slugs of the `finetune_vlm` stage (the matrix is models x methods)."""
    import_model: tuple[str, ...] = ()
    """Pretrained model slugs (keys of `import_model.models`) the `import_model` stage turns from GGUF files into
    model folders (models/import/<slug>); empty: no such cells."""
    quantize_real: tuple[str, ...] = ()
    """Precision slugs of the `quantize_real` stage, run on every imported model (the matrix is import_model x
    these); empty: no such cells."""

    sweep_attention: tuple[str, ...] = ()
    """Recipe slugs (of `variants`) of the `sweep_attention` stage: one scaling map (latency and memory over context
    length x batch, efficientllm.sweep) per attention variant at `sweep.shape`; empty: no such cells."""
    sweep_precision: tuple[str, ...] = ()
    """Precision slugs (efficientllm.techniques.quantization.PRECISIONS) of the `sweep_precision` stage: one scaling
    map per precision of `sweep.precision_model`; empty: no such cells."""

    VISION_KEYS: ClassVar[tuple[str, ...]] = ("pretrain_vision", "finetune_vision", "finetune_vlm",
                                              "finetune_vlm_methods")
    """The vision axis' keys (efficientllm.vision); every one may be empty."""
    SWEEP_KEYS: ClassVar[tuple[str, ...]] = ("sweep_attention", "sweep_precision")
    """The scaling maps' keys (efficientllm.sweep); both may be empty."""

    def __post_init__(self) -> None:
        optional = ("quantize_sft", "quantize_hub", "import_model", "quantize_real", *self.VISION_KEYS,
                    *self.SWEEP_KEYS)
        for stage in ("pretrain", "finetune_methods", "finetune_datasets", "quantize", *optional):
            slugs = getattr(self, stage)
            if not slugs and stage not in optional:
                raise ConfigError(f"[matrix] {stage}: the list is empty")
            for slug in slugs:
                if not SLUG_RE.match(slug):
                    raise ConfigError(f"[matrix] {stage}: bad slug {slug!r} (lowercase letters, digits, - and _)")
            if len(set(slugs)) != len(slugs):
                raise ConfigError(f"[matrix] {stage}: duplicate slugs in {list(slugs)}")


@dataclass(frozen=True)
class PrepareConfig:
    source: str = field(default="stdlib_docs", metadata=_meta(choices=("stdlib_docs", "text_files", "fineweb_edu")))
    """Corpus source slug: `stdlib_docs` (the documentation every CPython carries; offline), `text_files` or
    `fineweb_edu` (the hub, or local parquet / jsonl shards in `source_paths`)."""
    source_paths: tuple[str, ...] = ()
    """Files for `text_files` (.txt, or .jsonl with a `text` field) and `fineweb_edu` (.parquet / .jsonl, folders;
    empty: stream from the hub)."""
    hub_id: str = "HuggingFaceFW/fineweb-edu"
    """fineweb_edu: hub dataset id, streamed with `datasets` when `source_paths` is empty (needs network)."""
    hub_config: str | None = "sample-10BT"
    """fineweb_edu: hub config name (sample-10BT, sample-100BT, sample-350BT, default, CC-MAIN-<dump>)."""
    hub_split: str = "train"
    """fineweb_edu: hub split."""
    hub_revision: str | None = None
    """fineweb_edu: hub revision (a commit sha pins the exact documents; None: main)."""
    min_int_score: int | None = field(default=None, metadata=_meta(min=0, max=5))
    """fineweb_edu: keep documents with int_score >= this (where the column exists; None: no filter)."""
    max_chars: int | None = field(default=None, metadata=_meta(min=1))
    """fineweb_edu: stop once the kept documents reach this many characters (None: no char budget)."""
    max_source_tokens: int | None = field(default=None, metadata=_meta(min=1))
    """fineweb_edu: stop once the kept documents reach this many tokens of the dataset's own `token_count`
    column (GPT-2 tokens; None: no token budget)."""
    vocab_size: int = field(default=2048, metadata=_meta(min=260))
    """Byte-level BPE vocabulary size, special tokens included."""
    block_len: int = field(default=128, metadata=_meta(min=8))
    """Tokens per packed training block (the pretraining sequence length)."""
    val_fraction: float = field(default=0.05, metadata=_meta(min=0.0, max=0.5, min_exclusive=True))
    """Share of documents held out for validation perplexity."""
    min_doc_chars: int = field(default=200, metadata=_meta(min=1))
    """Documents shorter than this are dropped."""
    max_docs: int | None = field(default=None, metadata=_meta(min=2))
    """Cap on documents read from the source (None: all)."""
    seed: int = 1234
    """Seed of the train/validation split."""


@dataclass(frozen=True)
class ModelConfig:
    """The base decoder shape every pretraining variant starts from (transformers' names)."""

    hidden_size: int = field(default=64, metadata=_meta(min=1))
    """Model width d_model."""
    intermediate_size: int = field(default=172, metadata=_meta(min=1))
    """Hidden size of the MLP (SwiGLU inner width)."""
    num_hidden_layers: int = field(default=2, metadata=_meta(min=1))
    """Decoder blocks."""
    num_attention_heads: int = field(default=4, metadata=_meta(min=1))
    """Query heads."""
    num_key_value_heads: int = field(default=4, metadata=_meta(min=1))
    """Key/value heads (= query heads: MHA; 1: MQA; between: GQA)."""
    rope_theta: float = field(default=10000.0, metadata=_meta(min=0.0, min_exclusive=True))
    """RoPE base frequency."""
    tie_word_embeddings: bool = True
    """Share the input embedding and the LM head."""


@dataclass(frozen=True)
class TrialsConfig:
    """Repeated trials of a measured stage's cells (its section inherits these keys)."""

    trials: int = field(default=1, metadata=_meta(min=1))
    """Runs of every cell: trial 0 writes the cell's outputs and results/<stage>/<cell>/row.json; trials
    1..N-1 run after it, each in a fresh process, and write results/<stage>/<cell>/trials/<k>/row.json (the
    report shows mean +- 95% CI over the ok trials). A changed count re-runs the stage's cells: the trials of a
    cell are measured back to back, under the same machine conditions."""
    trial_seeds: str = field(default="vary", metadata=_meta(choices=("vary", "same")))
    """vary: trial k runs with seed + k (init, data order: the CI covers seed noise too); same: every trial
    with `seed` (the CI is measurement noise alone)."""


@dataclass(frozen=True)
class TrainingConfig(TrialsConfig):
    """What every training section (pretrain, finetune) has: where it runs, its seed, its processes, its
    reliability limits. The recipe itself (batch, steps, learning rate, window) is each section's own."""

    SECTION: ClassVar[str] = "training"
    """The params section a subclass parses (error messages name it)."""

    device: str = "auto"
    """auto | cpu | cuda | cuda:N (auto: cuda when available)."""
    seed: int = 1234
    """Seed of model / adapter init, dropout and batch order."""
    grad_clip: float = field(default=1.0, metadata=_meta(min=0.0))
    """Gradient-norm clipping (0: off)."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations in the backward (less memory, ~1/3 more compute)."""
    nproc_per_node: int = field(default=1, metadata=_meta(min=1))
    """Training processes (devices) on this machine; > 1 makes the stage launch itself under torchrun (nccl on
    GPUs, gloo on CPU). batch_size is global: each process takes batch_size / nproc_per_node of every batch, and
    the optimisation is one process's (same batch order, schedule and loss)."""
    parallelism: str = field(default="ddp", metadata=_meta(choices=("ddp", "fsdp")))
    """With several processes: ddp (a full replica per device) or fsdp (parameters, gradients and optimizer
    state sharded over devices: the shapes one device cannot hold)."""
    checkpoint_every_steps: int = field(default=0, metadata=_meta(min=0))
    """Save a resumable checkpoint (weights, optimizer, scheduler, RNG, step) every N optimizer steps to
    .cache/checkpoints/<section>/<cell>/; a killed cell resumes from the last one (0: off). One process or DDP
    (rank 0 saves, every rank resumes); FSDP runs do not checkpoint. Saves are left out of the measured window."""
    timeout_s: float | None = field(default=None, metadata=_meta(min=0.0, min_exclusive=True))
    """Wall-clock limit of one cell's training loop in seconds, checked after every step; past it the cell
    becomes a status='failed' row (None: no limit)."""
    memory_limit_mb: float | None = field(default=None, metadata=_meta(min=0.0, min_exclusive=True))
    """Resident-memory limit of the stage process in MiB, checked after every step (the CPU stand-in for a
    device out-of-memory); past it the cell becomes a status='failed' row (None: no limit)."""

    def __post_init__(self) -> None:
        steps = getattr(self, "steps", None)
        warmup = getattr(self, "measure_warmup_steps", 0)
        if steps is not None and warmup >= steps:
            raise ConfigError(f"[{self.SECTION}] measure_warmup_steps={warmup} must be < steps={steps}")
        batch_size = getattr(self, "batch_size", 1)
        if batch_size % self.nproc_per_node:
            raise ConfigError(
                f"[{self.SECTION}] batch_size={batch_size} must be a multiple of nproc_per_node={self.nproc_per_node}"
            )


@dataclass(frozen=True)
class PretrainConfig(TrainingConfig):
    """Pretraining: the recipe every variant shares (same data, token budget, schedule and window)."""

    SECTION: ClassVar[str] = "pretrain"
    batch_size: int = field(default=8, metadata=_meta(min=1))
    """Sequences per optimizer step."""
    steps: int = field(default=60, metadata=_meta(min=1))
    """Optimizer steps (the token budget is steps x batch_size x block_len, equal for every variant)."""
    lr: float = field(default=3e-3, metadata=_meta(min=0.0, min_exclusive=True))
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = field(default=0.1, metadata=_meta(min=0.0, max=1.0))
    """Cosine schedule floor as a fraction of lr."""
    lr_warmup_steps: int = field(default=10, metadata=_meta(min=0))
    """Linear learning-rate warm-up steps."""
    weight_decay: float = field(default=0.1, metadata=_meta(min=0.0))
    """AdamW weight decay on matrices (not on norms and biases)."""
    measure_warmup_steps: int = field(default=5, metadata=_meta(min=0))
    """Steps excluded from the measured window (same shapes as the timed steps)."""
    eval_batches: int = field(default=8, metadata=_meta(min=1))
    """Validation batches for perplexity (fixed blocks, the same for every variant)."""
    eval_every_steps: int = field(default=0, metadata=_meta(min=0))
    """Evaluate the validation loss every N optimizer steps (window paused: not timed) for efficiency at equal
    quality: the time, tokens and energy a variant needed to first reach `target_val_loss` (0: off)."""
    target_val_loss: float | None = field(default=None, metadata=_meta(min=0.0, min_exclusive=True))
    """The validation loss (nats per token) the equal-quality figures are measured to (None: off)."""
    dtype: str = field(default="auto", metadata=_meta(choices=("auto", "float32", "bfloat16")))
    """Compute dtype: bfloat16 autocast (fp32 weights and optimizer state), float32, or auto (bf16 on a CUDA
    device that supports it, else fp32)."""
    micro_batch_size: int | None = field(default=None, metadata=_meta(min=1))
    """Sequences per forward on one device; batch_size / (processes x micro_batch_size) forwards accumulate
    gradients into one step. None: batch_size / processes (no accumulation)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        per_process = self.batch_size // self.nproc_per_node
        if self.micro_batch_size is not None and per_process % self.micro_batch_size:
            raise ConfigError(
                f"[pretrain] micro_batch_size={self.micro_batch_size} must divide batch_size / nproc_per_node "
                f"= {per_process}"
            )


def _default_sft_datasets() -> dict[str, Any]:
    return {"arith": {"source": "arith"}, "medical": {"source": "arith_medical"}}


@dataclass(frozen=True)
class SFTConfig:
    """Fine-tuning data: the dataset specs, the train/eval split, and how records become token ids."""

    datasets: dict[str, Any] = field(default_factory=_default_sft_datasets)
    """Dataset slug -> spec `{source: <slug>, **kwargs}`; sources and their keys in efficientllm.data.sft.SFT_SOURCES
    (arith, arith_medical, openo1, medical_o1; `path:` local files or `hub_id:` + `revision:`)."""
    eval_fraction: float = field(default=0.1, metadata=_meta(min=0.0, max=0.5, min_exclusive=True))
    """Share of records held out for eval loss and exact match (a seeded split)."""
    max_eval_examples: int | None = field(default=64, metadata=_meta(min=1))
    """Cap on eval records (None: no cap)."""
    seed: int = 1234
    """Seed of the generator sources and of the train/eval split."""
    template: str = field(default="auto", metadata=_meta(choices=("auto", "chat", "plain")))
    """auto: the tokenizer's chat template when it has one, else `prompt_template`."""
    prompt_template: str = "Question: {instruction}\nAnswer:\n"
    """The plain prompt; `{instruction}` is replaced by the record's instruction, the response follows."""
    max_seq_len: int = field(default=128, metadata=_meta(min=8))
    """Tokens per training sequence (prompt + response); batches are padded to it."""
    overlong: str = field(default="truncate", metadata=_meta(choices=("truncate", "drop")))
    """What happens to a longer sequence: cut to max_seq_len, or left out (counts go in the row)."""

    def __post_init__(self) -> None:
        if "{instruction}" not in self.prompt_template:
            raise ConfigError("[sft] prompt_template: must contain {instruction}")
        if not self.datasets:
            raise ConfigError("[sft] datasets: the mapping is empty")
        for slug, spec in self.datasets.items():
            if not isinstance(slug, str) or not SLUG_RE.match(slug):
                raise ConfigError(f"[sft] datasets: bad slug {slug!r} (lowercase letters, digits, - and _)")
            if not isinstance(spec, Mapping) or "source" not in spec:
                raise ConfigError(f"[sft] datasets.{slug}: expected a mapping with a `source` key, got {spec!r}")


@dataclass(frozen=True)
class FinetuneConfig(TrainingConfig):
    """Fine-tuning: the base model, the shared recipe (same data, batch, steps and window for every method) and
    each method's knobs. Full fine-tuning runs at the same batch size as the PEFT methods."""

    SECTION: ClassVar[str] = "finetune"

    base_model: str = "models/pretrain/mha"
    """The model every method starts from: a local directory (default: the pretrain stage's base) or a hub id."""
    base_revision: str | None = None
    """Hub revision (a commit sha) of a hub base_model; None for local directories."""
    base_source: str | None = None
    """Where a local base_model's weights came from (e.g. `meta-llama/Llama-3.2-1B@<commit>`); copied into rows."""
    dtype: str = field(default="auto", metadata=_meta(choices=("auto", "float32", "bfloat16", "float16")))
    """Compute dtype of every method alike (auto: bfloat16 on a CUDA device that supports it, else float32). A
    16-bit dtype holds the frozen weights at 16 bits and runs the forwards under autocast, while every trained
    parameter stays float32 (master weights: small updates are not rounded away); float16 adds loss scaling."""
    batch_size: int = field(default=4, metadata=_meta(min=1))
    """Sequences per micro-batch, the same for every method (full fine-tuning included). Global: with
    nproc_per_node > 1 each process takes batch_size / nproc_per_node of every micro-batch."""
    grad_accum_steps: int = field(default=1, metadata=_meta(min=1))
    """Micro-batches per optimizer step (samples per step = batch_size x grad_accum_steps)."""
    steps: int | None = field(default=24, metadata=_meta(min=1))
    """Optimizer steps (None: `epochs` passes over the train split)."""
    epochs: float = field(default=1.0, metadata=_meta(min=0.0, min_exclusive=True))
    """Passes over the train split when steps is None."""
    lr: float = field(default=2e-3, metadata=_meta(min=0.0, min_exclusive=True))
    """Peak AdamW learning rate of the adapter methods (lora, loraplus's A matrices, rslora, dora, pissa, qlora)."""
    full_lr: float = field(default=5e-4, metadata=_meta(min=0.0, min_exclusive=True))
    """Peak learning rate of the methods that update base weights (full, freeze)."""
    lr_warmup_steps: int = field(default=2, metadata=_meta(min=0))
    """Linear warm-up steps, then cosine decay to 10% of the peak."""
    weight_decay: float = field(default=0.0, metadata=_meta(min=0.0))
    """AdamW weight decay."""
    lora_r: int = field(default=8, metadata=_meta(min=1))
    """Adapter rank r of every LoRA-family method."""
    lora_alpha: int = field(default=16, metadata=_meta(min=1))
    """LoRA alpha: the update is scaled by alpha / r (rslora: alpha / sqrt(r))."""
    lora_dropout: float = field(default=0.0, metadata=_meta(min=0.0, max=1.0))
    """Dropout on the adapter input."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Module names that get adapters (Llama names; every attention and MLP projection by default)."""
    loraplus_lr_ratio: float = field(default=16.0, metadata=_meta(min=1.0))
    """LoRA+: learning rate of the B matrices / that of the A matrices."""
    pissa_init: str = "pissa"
    """PiSSA initialisation: `pissa` (full SVD) or `pissa_niter_<n>` (fast randomised SVD with n iterations)."""
    freeze_trainable_blocks: int = field(default=1, metadata=_meta(min=0))
    """freeze: how many of the last decoder blocks train (with the final norm, and the LM head when it is not tied
    to the input embedding)."""
    freeze_train_head: bool = False
    """freeze: train the LM head even when it is the input embedding (tied). Off by default: a tied head trains
    the embedding too, so the backward runs through every block and `freeze` is no longer a frozen stack."""
    qlora_quant_type: str = field(default="nf4", metadata=_meta(choices=("nf4", "fp4")))
    """QLoRA: 4-bit data type of the frozen base (bitsandbytes)."""
    qlora_double_quant: bool = True
    """QLoRA: quantize the quantization constants too (saves ~0.4 bit per weight)."""
    measure_warmup_steps: int = field(default=4, metadata=_meta(min=0))
    """Optimizer steps excluded from the measured window (same shapes as the timed steps)."""
    eval_examples: int = field(default=32, metadata=_meta(min=1))
    """Eval records for the eval loss (response tokens only; capped by the eval split)."""
    gen_eval_examples: int = field(default=16, metadata=_meta(min=0))
    """Eval records answered by greedy generation for exact match (0: off; only records with an `answer`)."""
    max_new_tokens: int = field(default=64, metadata=_meta(min=1))
    """Generation budget of the exact-match check."""
    answer_eval: str = field(default="generate", metadata=_meta(choices=("generate", "given_thought")))
    """How exact match is taken: `generate` (the model writes its reasoning and the answer from the prompt) or
    `given_thought` (it reads the record's reference <Thought> and writes the <Output>; multiple-choice records by
    letter choice: efficientllm/answers.py), for reasoning too long to generate on the device."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.target_modules:
            raise ConfigError("[finetune] target_modules: the list is empty")
        if not re.fullmatch(r"pissa(_niter_[1-9][0-9]*)?", self.pissa_init):
            raise ConfigError(f"[finetune] pissa_init: {self.pissa_init!r} is not pissa or pissa_niter_<n>")


@dataclass(frozen=True)
class MeasureConfig:
    sample_interval_s: float = field(default=0.05, metadata=_meta(min=0.001))
    """Background sampling interval of memory (and GPU utilisation)."""
    cpu_watts_per_core: float = field(default=4.0, metadata=_meta(min=0.0, min_exclusive=True))
    """Power per busy core for the CPU energy *estimate* (used only without NVML or RAPL)."""
    peak_calibration_n: int | None = field(default=None, metadata=_meta(min=64))
    """Matrix size of the matmul calibration that measures peak FLOP/s (None: 2048 on CPU, 8192 on GPU)."""
    cache_dir: str = ".cache/efficientllm"
    """Where the peak-FLOP/s calibration is cached (per device, dtype, threads, torch version)."""
    noise_runs: int = field(default=5, metadata=_meta(min=2))
    """Runs of one cell by the `noise_floor` stage: the machine's run-to-run CV of timing, throughput and energy,
    which a one-trial difference between two cells must clear (twice over) to count."""
    noise_variant: str = "mha"
    """The pretraining recipe (a `variants` slug) the noise floor repeats."""
    omp_wait_policy: str = field(default="passive", metadata=_meta(choices=("passive", "active", "inherit")))
    """OpenMP's wait policy in every stage process (set before torch loads; recorded in the row's omp_wait_policy):
    passive (idle OpenMP threads sleep), active (they spin, taking cores) or inherit (the environment's
    OMP_WAIT_POLICY, else libgomp's default). A measured choice: bench/stability.py --omp-wait-policy compares them
    (README, "Getting stable numbers")."""


@dataclass(frozen=True)
class ReportConfig:
    """The report stage (and `efficientllm sql` / `compare` / `recommend`, which read this section when present)."""

    title: str = "efficientllm report"
    """Title of reports/index.md."""
    usd_per_device_hour: float | None = field(default=1.0, metadata=_meta(min=0.0))
    """USER-SET ASSUMPTION, not measured: what one device (a GPU, or the whole CPU machine) costs per hour, USD.
    The cost columns (USD per million tokens) are price x device-hours per token. The default 1.0 is a round
    placeholder; set your own price. None: no cost columns."""
    grid_g_co2_per_kwh: float | None = field(default=400.0, metadata=_meta(min=0.0))
    """USER-SET ASSUMPTION, not measured: carbon intensity of the electricity, grams CO2 per kWh. The CO2 columns
    are energy per token x this. The default 400 is a round placeholder near a world-average grid; set your own
    grid's figure. None: no CO2 columns."""


_FLOAT_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class QuantizeConfig(TrialsConfig):
    """The quantization / inference axis: how each precision loads, the fixed inference workload, the quality gate."""

    device: str = "auto"
    """auto | cpu | cuda | cuda:N (auto: cuda when available)."""
    compute_dtype_4bit: str = field(default="bfloat16", metadata=_meta(choices=_FLOAT_DTYPES))
    """int4 / fp4: dtype the dequantized 4-bit weights multiply in (bitsandbytes bnb_4bit_compute_dtype)."""
    double_quant_4bit: bool = True
    """int4 / fp4: quantize the per-block absmax constants too (QLoRA's double quantization, ~0.4 bit / weight)."""
    int8_threshold: float = field(default=6.0, metadata=_meta(min=0.0))
    """int8: LLM.int8 outlier threshold (activation columns above it take the fp16 path; 0: none)."""
    unquantized_dtype: str = field(default="bfloat16", metadata=_meta(choices=_FLOAT_DTYPES))
    """int8 / int4 / fp4: dtype of what bitsandbytes leaves unquantized (embeddings, norms, LM head); bf16 like the
    reference cell, so measured bytes compare like with like."""
    batch_size: int = field(default=4, metadata=_meta(min=1))
    """Sequences per generate request of the timed workload."""
    prompt_len: int = field(default=32, metadata=_meta(min=1))
    """Prompt tokens per sequence: the first tokens of the held-out blocks (prompt_len + max_new_tokens must fit
    the model's max_position_embeddings)."""
    max_new_tokens: int = field(default=16, metadata=_meta(min=2))
    """Generated tokens per sequence; min_new_tokens is set equal, decoding is greedy."""
    warmup_runs: int = field(default=1, metadata=_meta(min=0))
    """Untimed generate requests before each pass (same shapes, full generation length)."""
    min_runs: int = field(default=3, metadata=_meta(min=1))
    """Timed requests per pass: at least this many ..."""
    min_duration_s: float = field(default=1.0, metadata=_meta(min=0.0))
    """... and at least this long in total (both must hold) ..."""
    max_runs: int = field(default=1000, metadata=_meta(min=1))
    """... and never more than this many."""
    memory_budget_mib: float = field(default=2.0, metadata=_meta(min=0.0, min_exclusive=True))
    """Memory budget (MiB) for weights + KV cache: the row reports the largest batch that fits it (computed from
    weight bytes and KV-cache bytes per token, then checked by one request at that batch)."""
    budget_check_max_s: float = field(default=20.0, metadata=_meta(min=0.0, min_exclusive=True))
    """Time cap of that check: when one request at the largest batch would take longer (estimated from the latency
    pass), the check runs at the largest batch that fits the cap and scales the measured memory growth per sequence
    up to the largest batch; the row says which (`extra.max_batch_check_method`)."""
    ppl_blocks: int = field(default=16, metadata=_meta(min=1))
    """Held-out blocks of the pretraining corpus for perplexity (the first ones: the same tokens for every
    precision)."""
    ppl_batch_size: int = field(default=8, metadata=_meta(min=1))
    """Blocks per perplexity forward."""
    task_limit: int | None = field(default=None, metadata=_meta(min=1))
    """Documents per lm-eval task for this section's cells (the first ones: the same for every precision); None:
    `eval.limit`. Sizes a slow model's workload without changing the other quantize stages' quality sets."""
    quality_gate_ratio: float = field(default=0.99, metadata=_meta(min=0.0, max=1.0, min_exclusive=True))
    """A cell passes the quality gate when its task score >= this x the bf16 cell's (MLPerf uses 0.99)."""
    seed: int = 1234
    """Seed set before loading and generating (greedy decoding itself is deterministic)."""

    def __post_init__(self) -> None:
        if self.min_runs > self.max_runs:
            raise ConfigError(f"[quantize] min_runs={self.min_runs} must be <= max_runs={self.max_runs}")


@dataclass(frozen=True)
class QuantizeHubConfig(QuantizeConfig):
    """The `quantize_hub` stage: hub models, with a workload section of their own (every key of `quantize`), so a
    paper-scale workload never touches the pipeline's own quantize cells."""

    models: dict[str, Any] = field(default_factory=dict)
    """Model slug -> {id: <hub id>, revision: <commit sha, or null: unpinned>} (loaded from the hub; needs network)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for slug, spec in self.models.items():
            if not isinstance(slug, str) or not SLUG_RE.match(slug):
                raise ConfigError(f"[quantize_hub] models: bad slug {slug!r} (lowercase letters, digits, - and _)")
            if slug in ("base", "sft"):
                raise ConfigError(f"[quantize_hub] models: slug {slug!r} is taken by the pipeline's own models")
            if not isinstance(spec, Mapping) or not isinstance(spec.get("id"), str):
                raise ConfigError(
                    f"[quantize_hub] models.{slug}: expected {{id: <hub id>, revision: ...}}, got {spec!r}"
                )
            unknown = sorted(set(spec) - {"id", "revision"})
            if unknown:
                raise ConfigError(f"[quantize_hub] models.{slug}: unknown key {unknown[0]!r} (allowed: id, revision)")


@dataclass(frozen=True)
class QuantizeRealConfig(QuantizeConfig):
    """The `quantize_real` stage: every imported pretrained model (`import_model`) at every precision of
    matrix.quantize_real, with a workload section of its own (every key of `quantize`), sized for a real model on a
    laptop CPU without touching the pipeline's own quantize cells."""


GGUF_SOURCES: dict[str, tuple[str, ...]] = {"package": ("package", "file"), "path": ("path",),
                                            "hub": ("hub_id", "filename", "revision")}
"""Kind of a GGUF model source -> the keys its spec takes (all but `revision` required); efficientllm.model_import."""


def gguf_source_kind(spec: Mapping[str, Any], where: str) -> str:
    """The kind of a GGUF model spec (package | path | hub); ConfigError for a spec that is none or several, lacks a
    key its kind needs or has one it does not take."""
    kinds = [k for k, keys in GGUF_SOURCES.items() if keys[0] in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of package (+ file), path, hub_id (+ filename), got "
                          f"{sorted(spec) or 'nothing'}")
    keys = GGUF_SOURCES[kinds[0]]
    unknown = sorted(set(spec) - set(keys))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} for a {kinds[0]} source (allowed: {', '.join(keys)})")
    missing = [k for k in keys if k != "revision" and (not isinstance(spec.get(k), str) or not spec[k])]
    if missing:
        raise ConfigError(f"{where}: a {kinds[0]} source needs {missing[0]!r} (a non-empty string)")
    return kinds[0]


@dataclass(frozen=True)
class ImportModelConfig:
    """Pretrained models imported from GGUF files (stage `import_model@<slug>`, efficientllm/model_import.py)."""

    models: dict[str, Any] = field(default_factory=dict)
    """Model slug -> its GGUF file: {package: <installed distribution>, file: <path in it>} | {path: <file.gguf>} |
    {hub_id: <repo>, filename: <file.gguf>, revision: <commit sha>} (the hub needs network)."""
    dtype: str = field(default="float32", metadata=_meta(choices=_FLOAT_DTYPES))
    """dtype of the saved weights: float32 keeps the dequantized values exactly (every precision loads from it)."""

    def __post_init__(self) -> None:
        for slug, spec in self.models.items():
            if not isinstance(slug, str) or not SLUG_RE.match(slug):
                raise ConfigError(f"[import_model] models: bad slug {slug!r} (lowercase letters, digits, - and _)")
            if slug in ("base", "sft"):
                raise ConfigError(f"[import_model] models: slug {slug!r} is taken by the pipeline's own models")
            if not isinstance(spec, Mapping):
                raise ConfigError(f"[import_model] models.{slug}: expected a mapping, got {spec!r}")
            gguf_source_kind(spec, f"[import_model] models.{slug}")


def _default_eval_tasks() -> dict[str, Any]:
    return {"quantize": ["efficientllm_cloze"], "quantize_sft": ["efficientllm_arith", "efficientllm_cloze"],
            "quantize_hub": ["efficientllm_cloze"], "quantize_real": ["efficientllm_cloze"]}


def _default_eval_metrics() -> dict[str, Any]:
    return {"efficientllm_cloze": "acc_mutual_info", "efficientllm_arith": "exact_match",
            "efficientllm_arc_easy": "acc_norm", "efficientllm_mmlu": "acc", "leaderboard_mmlu_pro": "acc",
            "leaderboard_bbh": "acc_norm", "leaderboard_gpqa": "acc_norm",
            "leaderboard_ifeval": "prompt_level_strict_acc", "leaderboard_math_hard": "exact_match",
            "leaderboard_musr": "acc_norm"}


@dataclass(frozen=True)
class EvalConfig:
    """Task scores through lm-evaluation-harness (`simple_evaluate` on the in-memory model of a quantize cell)."""

    tasks: dict[str, Any] = field(default_factory=_default_eval_tasks)
    """Quantize stage name -> lm-eval task names it runs on every cell; the cell's quality score is the mean of the
    tasks' primary metrics (as the paper averaged its tasks)."""
    metrics: dict[str, Any] = field(default_factory=_default_eval_metrics)
    """Task name -> its primary metric (higher is better), e.g. acc, acc_norm, acc_mutual_info, exact_match."""
    tasks_dir: str = "tasks"
    """Folder of the repository's task YAMLs (lm-eval include_path)."""
    data_files: dict[str, Any] = field(default_factory=dict)
    """Task name -> a local data file replacing the one its YAML names (e.g. efficientllm_arc_easy -> an ARC-Easy
    jsonl)."""
    batch_size: int = field(default=16, metadata=_meta(min=1))
    """lm-eval batch size, pinned (never `auto`) and recorded in the row: scores can move with padding."""
    limit: int | None = field(default=None, metadata=_meta(min=1))
    """Documents per task (None: all)."""
    num_fewshot: int | None = field(default=None, metadata=_meta(min=0))
    """Few-shot examples (None: each task's own setting, e.g. the leaderboard's)."""
    apply_chat_template: bool = False
    """Format prompts with the tokenizer's chat template (instruction-tuned hub models)."""

    def __post_init__(self) -> None:
        for stage, names in self.tasks.items():
            if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) for n in names):
                raise ConfigError(f"[eval] tasks.{stage}: expected a non-empty list of task names, got {names!r}")
            for name in names:
                if name not in self.metrics:
                    raise ConfigError(f"[eval] tasks.{stage}: task {name!r} has no primary metric in eval.metrics")
        for name, path in self.data_files.items():
            if not isinstance(path, str) or not path:
                raise ConfigError(f"[eval] data_files.{name}: expected a file path, got {path!r}")


@dataclass(frozen=True)
class ClozeConfig:
    """The cloze task built from held-out pretraining text (efficientllm.data.cloze; stage `cloze`)."""

    n_choices: int = field(default=4, metadata=_meta(min=2))
    """Choices per item: the true continuation + n_choices - 1 spans from other documents (chance = 1 / n_choices)."""
    context_words: int = field(default=32, metadata=_meta(min=1))
    """Words of context before the continuation."""
    continuation_words: int = field(default=4, metadata=_meta(min=1))
    """Words per choice (short: the junction with the context carries more of the evidence)."""
    items_per_doc: int = field(default=2, metadata=_meta(min=1))
    """Items cut from each held-out document long enough."""
    max_items: int | None = field(default=None, metadata=_meta(min=1))
    """Cap on items (None: all)."""
    max_choice_chars: int | None = field(default=40, metadata=_meta(min=1))
    """Longer spans (a URL, code without spaces) are redrawn: each choice must fit the model's context alone."""
    seed: int = 1234
    """Seed of cut positions, distractors and choice order."""


@dataclass(frozen=True)
class VisionConfig:
    """The vision axis' images (stage `prepare_vision`): where they come from and the seeded split."""

    source: str = field(default="digits", metadata=_meta(choices=("digits", "image_folder", "hub")))
    """digits: scikit-learn's UCI handwritten digits (1,797 labelled 8x8 images, shipped with scikit-learn:
    offline); image_folder: `path`/<class name>/<image files> (CIFAR-10 / ImageNet-style folders); hub: a
    `datasets` image dataset, `hub_id` (+ `hub_revision`) or a local dataset folder (needs network for a hub id)."""
    path: str | None = None
    """image_folder: the root folder (one sub-folder per class, sorted names = class ids)."""
    hub_id: str | None = None
    """hub: dataset id (e.g. uoft-cs/cifar10) or a local folder `datasets.load_dataset` reads."""
    hub_revision: str | None = None
    """hub: commit sha that pins the images (None: main)."""
    hub_split: str = "train"
    """hub: split read."""
    image_column: str = "img"
    """hub: the column holding the images."""
    label_column: str = "label"
    """hub: the column holding the integer class labels."""
    image_size: int = field(default=8, metadata=_meta(min=4))
    """Side of the square images the DiT sees (resized; digits are 8 natively)."""
    channels: int = field(default=1, metadata=_meta(choices=(1, 3)))
    """1: greyscale (digits), 3: RGB."""
    max_images: int | None = field(default=None, metadata=_meta(min=2))
    """Cap on images read (None: all)."""
    val_fraction: float = field(default=0.2, metadata=_meta(min=0.0, max=0.5, min_exclusive=True))
    """Share of every class held out (stratified, seeded): the classifier's check and the FD reference set."""
    heldout_classes: tuple[int, ...] = (8, 9)
    """Classes kept out of pretraining: `finetune_vision` adapts the pretrained DiT to them (empty: none)."""
    seed: int = 1234
    """Seed of the split."""


@dataclass(frozen=True)
class VisionEvalConfig:
    """How generated images are judged (stages `vision_classifier`, `pretrain_vision`, `finetune_vision`)."""

    classifier_hidden: int = field(default=64, metadata=_meta(min=2))
    """Width of the feature classifier's two hidden layers; the second one's activations are the Fréchet
    distance's feature space."""
    classifier_epochs: int = field(default=300, metadata=_meta(min=1))
    """Full-batch Adam epochs of the classifier on the training split (seconds on a CPU)."""
    classifier_lr: float = field(default=0.01, metadata=_meta(min=0.0, min_exclusive=True))
    """Its learning rate."""
    seed: int = 1234
    """Seed of the classifier init and of sampling (the same noise for every cell)."""
    fd_backend: str = field(default="classifier", metadata=_meta(choices=("classifier", "torchmetrics")))
    """classifier: Fréchet distance in the classifier's feature space (quality_metric `fd_<dataset>`, e.g.
    fd_digits; not FID); torchmetrics: the standard Inception FID (torchmetrics' FrechetInceptionDistance; needs
    torchmetrics + torch-fidelity and the Inception weights, i.e. network once), quality_metric `fid`."""
    fid_feature: int = field(default=2048, metadata=_meta(choices=(64, 192, 768, 2048)))
    """torchmetrics: the Inception layer of the FID features (2048: the standard FID)."""
    samples_per_class: int = field(default=40, metadata=_meta(min=2))
    """Images generated per class for the FD and the per-class accuracy."""
    reference_per_class: int | None = field(default=None, metadata=_meta(min=2))
    """Real held-out images per class in the FD reference set (None: all of the validation split)."""
    sample_steps: int = field(default=25, metadata=_meta(min=1))
    """DDIM sampling steps (diffusers DDIMScheduler, eta 0: deterministic given the noise)."""
    guidance_scale: float = field(default=1.0, metadata=_meta(min=0.0))
    """Classifier-free guidance scale (1.0: plain conditional sampling, no second forward)."""
    sample_batch_size: int = field(default=256, metadata=_meta(min=1))
    """Images per sampling forward."""
    grid_per_class: int = field(default=8, metadata=_meta(min=1))
    """Samples per class in the PNG grid saved next to each row."""


def _default_dit_targets() -> tuple[str, ...]:
    return ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "norm1.linear")


@dataclass(frozen=True)
class DiTConfig(TrainingConfig):
    """The vision training sections' shared recipe keys (`pretrain_vision`, `finetune_vision`)."""

    SECTION: ClassVar[str] = "dit"
    batch_size: int = field(default=64, metadata=_meta(min=1))
    """Images per optimizer step, the same for every cell."""
    steps: int = field(default=200, metadata=_meta(min=1))
    """Optimizer steps."""
    lr: float = field(default=1e-3, metadata=_meta(min=0.0, min_exclusive=True))
    """Peak AdamW learning rate (fine-tuning: of the adapter methods)."""
    min_lr_ratio: float = field(default=0.1, metadata=_meta(min=0.0, max=1.0))
    """Cosine schedule floor as a fraction of the peak."""
    lr_warmup_steps: int = field(default=10, metadata=_meta(min=0))
    """Linear learning-rate warm-up steps."""
    weight_decay: float = field(default=0.0, metadata=_meta(min=0.0))
    """AdamW weight decay on matrices."""
    measure_warmup_steps: int = field(default=5, metadata=_meta(min=0))
    """Steps excluded from the measured window (same shapes as the timed steps)."""
    dtype: str = field(default="auto", metadata=_meta(choices=("auto", "float32", "bfloat16")))
    """bfloat16 autocast (fp32 weights), float32, or auto (bf16 on a CUDA device that supports it)."""


@dataclass(frozen=True)
class PretrainVisionConfig(DiTConfig):
    """`pretrain_vision@<variant>`: a class-conditional DiT (diffusers' DiTTransformer2DModel) trained from scratch
    with DDPM noise prediction; every variant gets the same data, budget, seed, schedule and window."""

    SECTION: ClassVar[str] = "pretrain_vision"
    patch_size: int = field(default=2, metadata=_meta(min=1))
    """Patch side: an image is (image_size / patch_size)^2 tokens."""
    hidden_size: int = field(default=64, metadata=_meta(min=8))
    """Model width (heads x head_dim)."""
    num_layers: int = field(default=2, metadata=_meta(min=1))
    """DiT blocks."""
    num_attention_heads: int = field(default=4, metadata=_meta(min=1))
    """Query heads (head_dim = hidden_size / heads)."""
    train_timesteps: int = field(default=1000, metadata=_meta(min=10))
    """DDPM diffusion steps of training (diffusers DDPMScheduler)."""
    beta_schedule: str = field(default="squaredcos_cap_v2",
                               metadata=_meta(choices=("linear", "scaled_linear", "squaredcos_cap_v2")))
    """DDPM noise schedule."""
    prediction_type: str = field(default="sample", metadata=_meta(choices=("epsilon", "sample", "v_prediction")))
    """What the DiT predicts from a noised image: the noise (epsilon, DDPM), the clean image (sample: x0, which
    converges in far fewer steps at this size) or the velocity (v_prediction); diffusers' schedulers take each."""
    class_dropout: float = field(default=0.1, metadata=_meta(min=0.0, max=1.0))
    """Share of labels replaced by the null class in training (enables classifier-free guidance)."""


@dataclass(frozen=True)
class FinetuneVisionConfig(DiTConfig):
    """`finetune_vision@<method>`: the pretrained DiT adapted to the held-out classes with one PEFT method (the
    text axis' METHODS through peft), same batch, steps, seed and window for every method."""

    SECTION: ClassVar[str] = "finetune_vision"
    PEFT_TASK_TYPE: ClassVar[str | None] = None
    """peft task type of the LoRA methods: none (a plain PeftModel around the diffusers model)."""
    base_model: str = "models/pretrain_vision/mha"
    """The pretrained DiT every method starts from (a `pretrain_vision` out)."""
    steps: int = field(default=60, metadata=_meta(min=1))
    """Optimizer steps."""
    full_lr: float = field(default=5e-4, metadata=_meta(min=0.0, min_exclusive=True))
    """Peak learning rate of the methods that update base weights (full, freeze)."""
    lora_r: int = field(default=4, metadata=_meta(min=1))
    """Adapter rank of every LoRA-family method."""
    lora_alpha: int = field(default=8, metadata=_meta(min=1))
    """LoRA alpha (update scaled by alpha / r; rslora: alpha / sqrt(r))."""
    lora_dropout: float = field(default=0.0, metadata=_meta(min=0.0, max=1.0))
    """Dropout on the adapter input."""
    target_modules: tuple[str, ...] = field(default_factory=_default_dit_targets)
    """DiT modules that get adapters (diffusers names: attention q / k / v / out, both feed-forward layers and the
    adaLN modulation `norm1.linear`, through which the class embedding conditions each block)."""
    loraplus_lr_ratio: float = field(default=16.0, metadata=_meta(min=1.0))
    """LoRA+: learning rate of B / that of A."""
    pissa_init: str = "pissa"
    """PiSSA initialisation: pissa (exact SVD) or pissa_niter_<n>."""
    freeze_trainable_blocks: int = field(default=1, metadata=_meta(min=0))
    """freeze: the last N DiT blocks train, with the output head (adaLN modulation + patch projection)."""
    freeze_train_head: bool = True
    """freeze: the output head trains too (the DiT has no tied input embedding, so this is a frozen stack)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.target_modules:
            raise ConfigError("[finetune_vision] target_modules: the list is empty")
        if not re.fullmatch(r"pissa(_niter_[1-9][0-9]*)?", self.pissa_init):
            raise ConfigError(f"[finetune_vision] pissa_init: {self.pissa_init!r} is not pissa or pissa_niter_<n>")


def _default_vlm_targets() -> tuple[str, ...]:
    return ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class FinetuneVLMConfig(DiTConfig):
    """`finetune_vlm@<model>-<method>`: a hub vision-language model (Qwen2.5-VL, SmolVLM, ...) fine-tuned on image
    + text SFT rows with the loss on the answer tokens; no cells in the default profile (needs network)."""

    SECTION: ClassVar[str] = "finetune_vlm"
    models: dict[str, Any] = field(default_factory=dict)
    """Model slug -> {id: <hub id or local folder>, revision: <commit sha, or null>}."""
    data: str = "data/vision/vlm"
    """Folder with train.jsonl / eval.jsonl of {image: <file, relative to the folder>, question, answer}."""
    steps: int = field(default=30, metadata=_meta(min=1))
    """Optimizer steps."""
    batch_size: int = field(default=2, metadata=_meta(min=1))
    """Rows per optimizer step."""
    lr: float = field(default=1e-4, metadata=_meta(min=0.0, min_exclusive=True))
    """Peak learning rate of the adapter methods."""
    full_lr: float = field(default=1e-5, metadata=_meta(min=0.0, min_exclusive=True))
    """Peak learning rate of full / freeze."""
    max_seq_len: int = field(default=512, metadata=_meta(min=16))
    """Tokens per row (image tokens included); longer rows fail with the row named."""
    eval_examples: int = field(default=16, metadata=_meta(min=1))
    """Held-out rows for the eval loss."""
    lora_r: int = field(default=8, metadata=_meta(min=1))
    """Adapter rank."""
    lora_alpha: int = field(default=16, metadata=_meta(min=1))
    """LoRA alpha."""
    lora_dropout: float = field(default=0.0, metadata=_meta(min=0.0, max=1.0))
    """Adapter dropout."""
    target_modules: tuple[str, ...] = field(default_factory=_default_vlm_targets)
    """Language-model projections that get adapters (the vision tower stays frozen for the adapter methods)."""
    loraplus_lr_ratio: float = field(default=16.0, metadata=_meta(min=1.0))
    """LoRA+: learning rate of B / that of A."""
    pissa_init: str = "pissa_niter_4"
    """PiSSA initialisation (a fast randomised SVD: hub models are large)."""
    freeze_trainable_blocks: int = field(default=2, metadata=_meta(min=0))
    """freeze: the last N language-model blocks train (with the final norm and an untied LM head)."""
    freeze_train_head: bool = False
    """freeze: train a tied LM head too."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for slug, spec in self.models.items():
            if not isinstance(slug, str) or not SLUG_RE.match(slug):
                raise ConfigError(f"[finetune_vlm] models: bad slug {slug!r} (lowercase letters, digits, - and _)")
            if not isinstance(spec, Mapping) or not isinstance(spec.get("id"), str):
                raise ConfigError(f"[finetune_vlm] models.{slug}: expected {{id: ..., revision: ...}}, got {spec!r}")


def _default_sweep_shape() -> dict[str, Any]:
    return {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 9, "rope_theta": 100000.0, "tie_word_embeddings": True}


@dataclass(frozen=True)
class SweepConfig(TrialsConfig):
    """The scaling maps (efficientllm.sweep): inference latency and memory over a grid of context lengths x batch
    sizes, one model per cell: `sweep_attention@<variant>` (our decoder at `shape`, random weights) and
    `sweep_precision@<precision>` (`precision_model` loaded at that precision)."""

    device: str = "auto"
    """auto | cpu | cuda | cuda:N (auto: cuda when available)."""
    seed: int = 1234
    """Seed of the random weights and the random prompt token ids."""
    contexts: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192)
    """Context lengths (prompt tokens per sequence) of the map, ascending."""
    batch_sizes: tuple[int, ...] = (1, 4, 16)
    """Batch sizes (sequences per request) of the map, ascending; a batch whose weights + KV cache exceed
    `memory_budget_mib` at a context is recorded `over_budget` there, not run."""
    grid: str = field(default="cross", metadata=_meta(choices=("cross", "lines")))
    """cross: every context x every batch; lines: every context at the first batch and every batch at the first
    context (the two lines the crossovers are read along, at a fraction of the cost)."""
    max_new_tokens: int = field(default=16, metadata=_meta(min=2))
    """Generated tokens per request (= min_new_tokens, greedy): TPOT is the median of their decode steps."""
    warmup_runs: int = field(default=1, metadata=_meta(min=1))
    """Untimed requests per point before the timed ones (same shapes); the first also counts the KV cache."""
    min_runs: int = field(default=3, metadata=_meta(min=1))
    """Timed requests per point: at least this many ..."""
    min_duration_s: float = field(default=0.0, metadata=_meta(min=0.0))
    """... and at least this long in total ..."""
    max_runs: int = field(default=50, metadata=_meta(min=1))
    """... and never more than this many."""
    memory_budget_mib: float = field(default=16384.0, metadata=_meta(min=0.0, min_exclusive=True))
    """Memory budget (MiB) for weights + KV cache: each point reports the largest batch that fits it at its context."""
    dtype: str = field(default="auto", metadata=_meta(choices=("auto", *_FLOAT_DTYPES)))
    """dtype of the attention map's model (auto: bfloat16 on a CUDA device that supports it, else float32)."""
    vocab_size: int = field(default=49152, metadata=_meta(min=2))
    """The attention map's vocabulary (SmolLM2's 49,152: the embedding and LM head of a real small model)."""
    shape: dict[str, Any] = field(default_factory=dict)
    """The attention map's shape: keys of `model` over SmolLM2-135M's (hidden 576, FFN 1536, 30 layers, 9 heads,
    rope_theta 1e5, tied embeddings); each variant's recipe (`variants`) applies on top."""
    variant_overrides: dict[str, Any] = field(default_factory=dict)
    """Variant slug -> recipe keys replacing its `variants` recipe's at this shape (e.g. gqa's KV heads must divide
    9 query heads)."""
    precision_model: str | None = None
    """The precision map's model: a local transformers folder (safetensors), e.g. an `import_model` out; None: a
    random-initialised LlamaForCausalLM of SmolLM2-135M's config."""
    precision_num_hidden_layers: int | None = field(default=None, metadata=_meta(min=1))
    """Keep only the first N decoder blocks of the precision map's model (a cheaper map; None: all of them)."""

    def model_shape(self) -> dict[str, Any]:
        """SmolLM2-135M's shape with `shape` over it."""
        return {**_default_sweep_shape(), **self.shape}

    def __post_init__(self) -> None:
        for key in ("contexts", "batch_sizes"):
            values = getattr(self, key)
            if not values or any(v < 1 for v in values) or list(values) != sorted(set(values)):
                raise ConfigError(f"[sweep] {key}: expected ascending, distinct positive integers, got {list(values)}")
        if self.min_runs > self.max_runs:
            raise ConfigError(f"[sweep] min_runs={self.min_runs} must be <= max_runs={self.max_runs}")
        parse_section(ModelConfig, "sweep.shape", self.model_shape())
        for slug, recipe in self.variant_overrides.items():
            if not isinstance(recipe, Mapping):
                raise ConfigError(f"[sweep] variant_overrides.{slug}: expected a mapping of recipe keys, "
                                  f"got {recipe!r}")


SECTIONS: dict[str, type] = {
    "matrix": MatrixConfig,
    "prepare": PrepareConfig,
    "model": ModelConfig,
    "pretrain": PretrainConfig,
    "sft": SFTConfig,
    "finetune": FinetuneConfig,
    "measure": MeasureConfig,
    "report": ReportConfig,
    "quantize": QuantizeConfig,
    "quantize_hub": QuantizeHubConfig,
    "import_model": ImportModelConfig,
    "quantize_real": QuantizeRealConfig,
    "eval": EvalConfig,
    "cloze": ClozeConfig,
    "vision": VisionConfig,
    "vision_eval": VisionEvalConfig,
    "pretrain_vision": PretrainVisionConfig,
    "finetune_vision": FinetuneVisionConfig,
    "finetune_vlm": FinetuneVLMConfig,
    "sweep": SweepConfig,
}
FREE_SECTIONS = ("variants", "vision_variants")
"""Params sections without a dataclass (each recipe is checked by `load_variant` and the model that builds it)."""


# ----------------------------------------------------------------------------- parsing


def did_you_mean(name: str, known: Any) -> str:
    """` (did you mean 'x'?)` for the nearest of `known` to a misspelt `name`, or nothing when none is close."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def pick(entries: Mapping[str, Any], slug: str, where: str, what: str) -> Any:
    """`entries[slug]`, or a ConfigError naming `where` (e.g. "[sft] datasets"), the nearest defined slug and every
    defined one: the lookup of a stage's `--<what>` argument in its params section."""
    if slug not in entries:
        raise ConfigError(f"{where}: unknown {what} {slug!r}{did_you_mean(slug, entries)} "
                          f"(defined: {', '.join(entries) or 'none'})")
    return entries[slug]


def check_references(params: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """Every section of a params file parsed, and every matrix slug defined where it points: pretrain slugs in
    `variants`, fine-tuning datasets in `sft.datasets`, hub models in `quantize_hub.models`, imported models in
    `import_model.models` (and not also a hub model: both write results/quantize/<model>-<precision>), a task list
    in `eval.tasks` for every quantize stage with cells. Returns the parsed sections; raises ConfigError naming the
    section, the key or slug and the nearest valid name. (Slugs whose registry lives with the techniques, the
    methods and precisions, are checked by the `check_params` stage.)"""
    parsed = {name: load_section(path, name, params) for name in SECTIONS if name in params}
    matrix = parsed.get("matrix") or MatrixConfig()
    variants = params.get("variants") or {}
    refs = [("pretrain", matrix.pretrain, variants, "[variants]")]
    if "sft" in parsed:
        refs.append(("finetune_datasets", matrix.finetune_datasets, parsed["sft"].datasets, "[sft] datasets"))
    if "quantize_hub" in parsed:
        refs.append(("quantize_hub", matrix.quantize_hub, parsed["quantize_hub"].models, "[quantize_hub] models"))
    if "import_model" in parsed:
        refs.append(("import_model", matrix.import_model, parsed["import_model"].models, "[import_model] models"))
    for key, slugs, defined, where in refs:
        for slug in slugs:
            if slug not in defined:
                raise ConfigError(f"[matrix] {key}: {slug!r} is not defined in {where}{did_you_mean(slug, defined)} "
                                  f"(defined: {', '.join(defined) or 'none'})")
    clash = sorted(set(matrix.import_model) & set(matrix.quantize_hub))
    if clash:
        raise ConfigError(f"[matrix] import_model: {clash[0]!r} is also a quantize_hub model (their rows would share "
                          f"results/quantize/{clash[0]}-<precision>)")
    if "eval" in parsed:
        for stage, cells in (("quantize", matrix.quantize), ("quantize_sft", matrix.quantize_sft),
                             ("quantize_hub", matrix.quantize_hub),
                             ("quantize_real", matrix.quantize_real if matrix.import_model else ())):
            if cells and stage not in parsed["eval"].tasks:
                raise ConfigError(f"[eval] tasks: no task list for stage {stage!r}, which has cells in [matrix]")
    return parsed


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(section: str, key: str, tp: Any, value: Any) -> Any:
    """Check `value` against the annotation `tp`; returns the value converted (lists -> tuples)."""
    where = f"[{section}] {key}"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(section, key, inner[0], value)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(section, f"{key}[{i}]", item_tp, v) for i, v in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {_type_name(tp)} for {where}")


def _check_range(section: str, key: str, meta: Mapping, value: Any) -> None:
    if value is None:
        return
    where = f"[{section}] {key}"
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
        op = ">" if meta.get("min_exclusive") else ">="
        raise ConfigError(f"{where}: {value!r} must be {op} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{where}: {value!r} must be <= {hi}")


def parse_section(cls: type, section: str, raw: Any) -> Any:
    """Build the dataclass `cls` from the mapping `raw`, validating every key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{section}]: expected a mapping of keys, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"[{section}] unknown key {unknown[0]!r}{did_you_mean(unknown[0], fields)} "
                          f"(allowed: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"[{section}] missing key {name!r}")
            continue
        value = _coerce(section, name, hints[name], raw[name])
        _check_range(section, name, f.metadata, value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[{section}] {e}") from None


def read_params(path: str | Path) -> dict[str, Any]:
    """The whole params file as a mapping; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    except yaml.YAMLError as e:  # one line: where, and what the parser says
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"params file {path} is not valid YAML{at}: {what}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"params file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"params file {path}: expected a mapping of sections")
    known = [*SECTIONS, *FREE_SECTIONS]
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:  # a misspelt section would otherwise be ignored and its defaults used silently
        raise ConfigError(f"params file {path}: unknown section {unknown[0]!r}{did_you_mean(unknown[0], known)} "
                          f"(known: {', '.join(known)})")
    return data


def load_section(path: str | Path, name: str, params: Mapping[str, Any] | None = None) -> Any:
    """Parse one section of the params file into its dataclass."""
    if name not in SECTIONS:
        raise ConfigError(f"unknown params section {name!r} (known: {', '.join(SECTIONS)})")
    params = read_params(path) if params is None else params
    if name not in params:
        raise ConfigError(f"params file {path}: missing section [{name}]")
    return parse_section(SECTIONS[name], name, params[name])


def load_variant(path: str | Path, slug: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The recipe of one pretraining variant: its overrides of the base `model` shape.

    The keys are checked against the model config by the caller (`efficientllm.pretrain.model_config`),
    which knows the registered components; here only the slug and the shape of the section are.
    """
    params = read_params(path) if params is None else params
    variants = params.get("variants")
    if not isinstance(variants, Mapping):
        raise ConfigError(f"params file {path}: missing section [variants] (a mapping slug -> recipe)")
    if slug not in variants:
        raise ConfigError(f"[variants] unknown variant {slug!r}{did_you_mean(slug, variants)} "
                          f"(defined: {', '.join(variants) or 'none'})")
    recipe = variants[slug]
    if recipe is None:
        return {}
    if not isinstance(recipe, Mapping):
        raise ConfigError(f"[variants] {slug}: expected a mapping of model keys, got {recipe!r}")
    return dict(recipe)
