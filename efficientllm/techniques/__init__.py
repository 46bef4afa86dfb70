"""Efficiency techniques as functions that transform a model; registries are plain dicts from slug to function.

Fine-tuning methods (`METHODS`, `OPTIMIZERS`, `BASE_QUANTIZATION`, `UNSUPPORTED`) live in `peft_methods` and are
re-exported here; quantization techniques live in `efficientllm.techniques.quantization`.

    python -c "from efficientllm.techniques import METHODS; print(sorted(METHODS))"
"""

from efficientllm.techniques.peft_methods import (
    BASE_QUANTIZATION,
    METHODS,
    OPTIMIZERS,
    UNSUPPORTED,
    UPDATES_BASE_WEIGHTS,
    adamw_optimizer,
    apply_freeze,
    apply_full,
    apply_lora,
    apply_pissa,
    apply_qlora,
    decoder_blocks,
    is_loaded_in_4bit,
    learning_rate,
    lora_config,
    loraplus_optimizer,
    make_optimizer,
    qlora_quantization_config,
    qlora_unsupported,
    unsupported_reason,
)

__all__ = [
    "METHODS",
    "OPTIMIZERS",
    "BASE_QUANTIZATION",
    "UNSUPPORTED",
    "UPDATES_BASE_WEIGHTS",
    "adamw_optimizer",
    "apply_freeze",
    "apply_full",
    "apply_lora",
    "apply_pissa",
    "apply_qlora",
    "decoder_blocks",
    "is_loaded_in_4bit",
    "learning_rate",
    "lora_config",
    "loraplus_optimizer",
    "make_optimizer",
    "qlora_quantization_config",
    "qlora_unsupported",
    "unsupported_reason",
]
