"""The VLM fine-tuning path (efficientllm/vision/vlm.py) offline: a tiny random-initialised
Qwen2_5_VLForConditionalGeneration (the class of Qwen2.5-VL) trained with LoRA and freeze on image + text rows, the
loss on the answer tokens only.

The hub processor (Qwen2_5_VLProcessor) also builds a video processor, which needs torchvision (not installed here),
so the test builds the same thing from its parts: transformers' Qwen2VLImageProcessor for the pixels and a word-level
tokenizer with Qwen's special tokens and chat markers, expanding <|image_pad|> to one token per merged patch as the
hub processor does.

    python -m pytest tests/test_vision_vlm.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from efficientllm.config import FinetuneVLMConfig, MeasureConfig  # noqa: E402
from efficientllm.records import CellId  # noqa: E402
from efficientllm.vision.vlm import IGNORE_INDEX, encode_row, finetune_vlm_cell, read_rows  # noqa: E402

WORDS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
         "<|video_pad|>", "user", "assistant", "what", "digit", "is", "this", "?", *[str(d) for d in range(10)]]
TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {% for c in m['content'] %}{% if c['type'] == "
            "'image' %}<|vision_start|> <|image_pad|> <|vision_end|> {% else %}{{ c['text'] }} {% endif %}{% endfor %}"
            "<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")


class TinyQwenProcessor:
    """Qwen2.5-VL's processor, rebuilt offline from its image processor and a word-level tokenizer."""

    def __init__(self) -> None:
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessor

        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        self.tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
        self.tokenizer.chat_template = TEMPLATE
        self.image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56)

    def apply_chat_template(self, chat, tokenize=False, add_generation_prompt=False):
        return self.tokenizer.apply_chat_template(chat, tokenize=tokenize, add_generation_prompt=add_generation_prompt)

    def __call__(self, text, images, return_tensors="pt"):
        pixels = self.image_processor(images=images, return_tensors="pt")
        merge = self.image_processor.merge_size ** 2
        n = int(pixels["image_grid_thw"][0].prod()) // merge
        ids = self.tokenizer(text[0].replace("<|image_pad|>", " ".join(["<|image_pad|>"] * n)),
                             return_tensors="pt")
        return {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"], **pixels}


def tiny_qwen_vl(spec, dtype, device):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vocab = {w: i for i, w in enumerate(WORDS)}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[0]),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"])
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config).to(device=device, dtype=dtype), TinyQwenProcessor()


@pytest.fixture(scope="module")
def vlm_data(tmp_path_factory):
    """Digits as image + question + answer rows (each digit upscaled to 56x56 RGB)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("vlm")
    digits = load_digits()
    for split, idx in (("train", range(0, 12)), ("eval", range(12, 16))):
        lines = []
        for i in idx:
            pixels = (digits.images[i] * 15).astype(np.uint8).repeat(7, 0).repeat(7, 1)
            Image.fromarray(pixels).convert("RGB").save(folder / f"{i}.png")
            lines.append(json.dumps({"image": f"{i}.png", "question": "what digit is this ?",
                                     "answer": str(digits.target[i])}))
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_rows_encode_with_the_loss_on_the_answer_only(vlm_data):
    rows = read_rows(vlm_data, "train")
    enc = encode_row(TinyQwenProcessor(), rows[0], vlm_data, max_seq_len=128)
    labels = enc["labels"][0]
    answer = labels[labels != IGNORE_INDEX].tolist()
    assert WORDS[answer[0]] == rows[0]["answer"] and WORDS[answer[-1]] == "<|im_end|>"
    assert (enc["input_ids"][0] == WORDS.index("<|image_pad|>")).sum() == 4  # 56x56 -> 4x4 patches -> 2x2 merged
    assert enc["pixel_values"].shape[0] == 16 and enc["image_grid_thw"].tolist() == [[1, 4, 4]]
    with pytest.raises(ValueError, match="max_seq_len=8"):
        encode_row(TinyQwenProcessor(), rows[0], vlm_data, max_seq_len=8)


@pytest.mark.parametrize("method", ["lora", "freeze"])
def test_vlm_cell_fine_tunes_a_tiny_qwen2_5_vl(vlm_data, tmp_path, method):
    cfg = FinetuneVLMConfig(models={"tiny": {"id": "tiny-qwen2.5-vl", "revision": None}}, data=str(vlm_data),
                            steps=4, batch_size=2, measure_warmup_steps=1, lr=5e-3, full_lr=5e-3, lr_warmup_steps=0,
                            freeze_trainable_blocks=1, eval_examples=4)
    measure = MeasureConfig(peak_calibration_n=64, cache_dir=str(tmp_path / "cache"))
    cell = CellId(axis="finetune_vision", stage="finetune_vlm", cell=f"vlm-tiny-{method}", technique=method)
    out = finetune_vlm_cell(cell=cell, slug="tiny", spec=cfg.models["tiny"], method=method, cfg=cfg, measure=measure,
                            data_dir=vlm_data, load=tiny_qwen_vl)
    row = out.row
    assert row["status"] == "ok" and row["quality_metric"] == "eval_loss" and row["axis"] == "finetune_vision"
    assert row["quality_value"] < row["extra"]["eval_loss_initial"]  # it learnt something about the answers
    assert 0 < row["n_trainable_params"] < row["n_params"] and row["steps"] == 3
    assert row["tokens_per_s"] > 0 and row["st_samples_per_param_s"] > 0
    if method == "freeze":
        assert any("layers.1" in m for m in row["extra"]["trainable_modules"])
    assert out.files["loss.csv"].startswith("step,loss")
