"""Fine-tuning methods on a tiny decoder: trainable counts match each method's formula, PEFT steps leave the base
alone, merging keeps the logits, DoRA has its magnitude vectors, PiSSA starts at the base, QLoRA trains in 4-bit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from torch import nn

from efficientllm.config import FinetuneConfig, parse_section
from efficientllm.finetune import parameter_counts, save_cell, training_flops_per_token
from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM
from efficientllm.models.accounting import flops_per_token
from efficientllm.techniques import BASE_QUANTIZATION, METHODS, OPTIMIZERS, make_optimizer, qlora_unsupported

PEFT_METHODS = ("lora", "loraplus", "rslora", "dora", "pissa", "qlora")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CFG = FinetuneConfig(lora_r=4, lora_alpha=8, steps=2, measure_warmup_steps=0, lr=5e-2, full_lr=5e-2,
                     freeze_trainable_blocks=1, qlora_double_quant=False)
SEQ = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))


def tiny_config(tie: bool = False) -> EfficientLMConfig:
    return EfficientLMConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=64, tie_word_embeddings=tie,
                             bos_token_id=0, eos_token_id=0, pad_token_id=1)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A saved tiny base (what the pretrain stage writes), so QLoRA can load it 4-bit through from_pretrained."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base")
    EfficientLMForCausalLM(tiny_config()).save_pretrained(path)
    return path


def load(base_dir: Path, method: str, cfg: FinetuneConfig = CFG) -> nn.Module:
    from transformers import AutoModelForCausalLM

    quant = BASE_QUANTIZATION.get(method)
    kwargs = {"quantization_config": quant(cfg, torch.device("cpu")), "device_map": {"": "cpu"}} if quant else {}
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, **kwargs)


def prepared(base_dir: Path, method: str, cfg: FinetuneConfig = CFG) -> nn.Module:
    torch.manual_seed(0)
    model = METHODS[method](load(base_dir, method, cfg), dataclasses.replace(cfg, base_model=str(base_dir)))
    model.train()
    return model


def train_step(model: nn.Module, method: str, cfg: FinetuneConfig = CFG) -> None:
    opt = make_optimizer(method, model, cfg)
    model(input_ids=SEQ, labels=SEQ).loss.backward()
    opt.step()
    opt.zero_grad()


def expected_trainable(method: str, base: nn.Module) -> int:
    """Each method's formula, from the base model's module shapes."""
    linears = {n: m for n, m in base.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in TARGETS}
    lora = sum(CFG.lora_r * (m.in_features + m.out_features) for m in linears.values())  # r x (in + out) per target
    if method == "dora":
        return lora + sum(m.out_features for m in linears.values())  # + one magnitude per output row
    if method == "freeze":  # the last N blocks + final norm + LM head
        kept = [*base.model.layers[-CFG.freeze_trainable_blocks:], base.model.norm, base.lm_head]
        return sum(p.numel() for m in kept for p in m.parameters())
    if method == "full":
        return sum(p.numel() for p in base.parameters())
    return lora


def test_registry_covers_params_and_documents_itself():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(params["matrix"]["finetune_methods"]) <= set(METHODS)
    assert set(params["matrix"]["finetune_datasets"]) <= set(params["sft"]["datasets"])
    parse_section(FinetuneConfig, "finetune", params["finetune"])
    for slug, fn in METHODS.items():
        assert fn.__doc__ and "param" in fn.__doc__, slug  # says what it changes (params) and what moves
    assert set(OPTIMIZERS) <= set(METHODS) and set(BASE_QUANTIZATION) <= set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_trainable_parameters_match_the_formula(base_dir, method):
    model = prepared(base_dir, method)
    assert parameter_counts(model)["trainable"] == expected_trainable(method, load(base_dir, "full"))


def test_freeze_with_tied_embeddings_keeps_the_embedding_frozen():
    """A tied head is the input embedding: training it would not leave a frozen stack (the backward would run
    through every block), so it trains only when asked (finetune.freeze_train_head)."""
    torch.manual_seed(0)
    model = METHODS["freeze"](EfficientLMForCausalLM(tiny_config(tie=True)), CFG)
    assert model.lm_head.weight is model.model.embed_tokens.weight and not model.model.embed_tokens.weight.requires_grad
    assert not any(p.requires_grad for p in model.model.layers[0].parameters())
    assert all(p.requires_grad for p in model.model.layers[-1].parameters())
    model = METHODS["freeze"](EfficientLMForCausalLM(tiny_config(tie=True)),
                              dataclasses.replace(CFG, freeze_train_head=True))
    assert model.model.embed_tokens.weight.requires_grad


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_a_step_changes_adapters_not_the_base(base_dir, method):
    model = prepared(base_dir, method)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert base and adapters and all("lora_" in n for n in adapters)
    train_step(model, method)
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p.detach(), base[n]), f"base weight {n} changed"
    assert any(not torch.equal(p.detach(), adapters[n]) for n, p in model.named_parameters() if n in adapters)


def test_freeze_step_leaves_lower_blocks_and_embedding_alone(base_dir):
    model = prepared(base_dir, "freeze")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_step(model, "freeze")
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all(n.startswith(("model.layers.1.", "model.norm", "lm_head")) for n in changed)


@pytest.mark.parametrize("method", ["lora", "loraplus", "rslora", "dora", "pissa"])
def test_merge_gives_the_adapter_models_logits(base_dir, method):
    model = prepared(base_dir, method)
    train_step(model, method)  # B != 0 now, so the merge has something to fold in
    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=SEQ).logits
        merged = model.merge_and_unload()
        assert type(merged) is EfficientLMForCausalLM
        torch.testing.assert_close(merged(input_ids=SEQ).logits, adapted, rtol=1e-4, atol=1e-4)


def test_dora_has_a_magnitude_vector_per_target(base_dir):
    model = prepared(base_dir, "dora")
    layers = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in TARGETS and hasattr(m, "lora_A")]
    assert len(layers) == len(TARGETS) * 2
    for m in layers:
        magnitude = m.lora_magnitude_vector["default"].weight
        assert magnitude.shape == (m.out_features,) and magnitude.requires_grad


def test_pissa_initial_adapter_reproduces_the_base(base_dir):
    base = load(base_dir, "full").eval()
    model = prepared(base_dir, "pissa").eval()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert all(p.abs().sum() > 0 for p in lora_b)  # not LoRA's zero init: the principal components
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=SEQ).logits, base(input_ids=SEQ).logits, rtol=1e-4, atol=1e-4)


def test_pissa_saved_adapter_applies_to_the_original_base(base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoTokenizer

    from efficientllm.data import train_tokenizer

    tok = train_tokenizer(["a b c d e f g"] * 4, 300)
    cfg = dataclasses.replace(CFG, base_model=str(base_dir))
    model = prepared(base_dir, "pissa")
    init = tmp_path / "init"
    model.save_pretrained(init)
    train_step(model, "pissa")
    save_cell(model, tok, "pissa", cfg, torch.float32, tmp_path / "cell", init)
    merged = EfficientLMForCausalLM.from_pretrained(tmp_path / "cell/merged").eval()
    portable = PeftModel.from_pretrained(load(base_dir, "full"), tmp_path / "cell/adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(portable(input_ids=SEQ).logits, merged(input_ids=SEQ).logits, rtol=1e-4,
                                   atol=1e-4)
    assert AutoTokenizer.from_pretrained(tmp_path / "cell/merged") is not None


def test_loraplus_optimizer_gives_b_a_higher_learning_rate(base_dir):
    model = prepared(base_dir, "loraplus")
    opt = make_optimizer("loraplus", model, CFG)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    a = {lr_of[id(p)] for n, p in model.named_parameters() if "lora_A" in n}
    b = {lr_of[id(p)] for n, p in model.named_parameters() if "lora_B" in n}
    assert a == {CFG.lr} and b == {CFG.lr * CFG.loraplus_lr_ratio}


def test_qlora_trains_in_4bit_on_this_device_and_exports_a_plain_merge(base_dir, tmp_path):
    if qlora_unsupported(torch.device("cpu")) is not None:
        pytest.skip(f"no 4-bit backend here: {qlora_unsupported(torch.device('cpu'))}")
    from peft import PeftModel

    from efficientllm.data import train_tokenizer

    model = prepared(base_dir, "qlora")
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    assert parameter_counts(model)["total"] == sum(p.numel() for p in load(base_dir, "full").parameters()) + \
        parameter_counts(model)["adapter"]  # 4-bit weights counted unpacked
    train_step(model, "qlora")
    with torch.no_grad():
        model.eval()
        assert torch.isfinite(model(input_ids=SEQ).logits).all()  # eval mode: bitsandbytes' inference path
    cfg = dataclasses.replace(CFG, base_model=str(base_dir))
    facts = save_cell(model, train_tokenizer(["a b c"] * 4, 300), "qlora", cfg, torch.float32, tmp_path / "c", None)
    assert facts["adapter_format"] == "peft" and facts["adapter_size_bytes"] > 0
    merged = EfficientLMForCausalLM.from_pretrained(tmp_path / "c/merged").eval()
    assert not any(type(m).__name__ == "Linear4bit" for m in merged.modules())  # plain weights for quantization
    reference = PeftModel.from_pretrained(load(base_dir, "full"), tmp_path / "c/adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=SEQ).logits, reference(input_ids=SEQ).logits, rtol=1e-4,
                                   atol=1e-4)


def test_training_flops_full_is_three_forwards_and_matches_accounting(base_dir):
    full = prepared(base_dir, "full")
    f = training_flops_per_token(full, seq_len=12)
    assert f["training"] == pytest.approx(3 * f["forward"])
    assert f["training"] == pytest.approx(flops_per_token(full.config, 12, training=True))
    lora = training_flops_per_token(prepared(base_dir, "lora"), seq_len=12)
    # forward + activations' backward (base and adapters) + adapters' weight gradients: between 2x and 3x the base
    assert 2 * f["forward"] < lora["training"] < f["training"]
    freeze = training_flops_per_token(prepared(base_dir, "freeze"), seq_len=12)
    assert freeze["lowest_grad_block"] == 1 and freeze["training"] < lora["training"]
