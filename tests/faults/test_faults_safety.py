"""Safety and the checkpoint format: no code runs from a model folder or a checkpoint, and the Prefect server
binds to loopback. (The read-only SQL command and the refused pickle weights are cases of test_faults_bad_input.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from efficientllm.checkpoint import CellGuard, CellMemoryExceeded, CellTimeout, Checkpointer, require_safetensors

REPO = Path(__file__).resolve().parents[2]


def test_trust_remote_code_is_never_switched_on():
    pattern = re.compile(r"trust_remote_code\s*[=:]\s*True", re.IGNORECASE)
    hits = [f"{p.relative_to(REPO)}:{i}" for folder in ("efficientllm", "stages", "flows", "bench")
            for p in (REPO / folder).rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_prefect_server_binds_to_loopback():
    make = (REPO / "Makefile").read_text()
    starts = [ln for ln in make.splitlines() if "prefect server start" in ln]
    assert starts and all("--host 127.0.0.1" in ln for ln in starts)


def test_pickle_weights_are_refused_by_name(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle, never opened
    with pytest.raises(FileNotFoundError, match=r"pickle weights \(pytorch_model.bin\), refused"):
        require_safetensors(tmp_path, "[finetune] base_model")
    (tmp_path / "model.safetensors").write_bytes(b"")
    require_safetensors(tmp_path, "x")  # present: accepted (the loader reads it with safetensors)


def test_the_quantize_loader_reads_safetensors_only(tmp_path):
    """The loader behind every quantize cell (hub models too, which skip the local-folder check) never falls back
    to a pickle checkpoint."""
    from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM
    from efficientllm.techniques.quantization import _from_pretrained

    config = EfficientLMConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    model = EfficientLMForCausalLM(config)
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # the same weights, as a pickle only
    with pytest.raises(OSError, match="safetensors"):
        _from_pretrained(tmp_path, torch.device("cpu"), None, dtype=torch.float32)


def _trained(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def _step(model, opt, sched):
    loss = model(torch.randn(16, 4)).pow(2).mean()  # torch RNG: inputs and dropout
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    return float(loss.detach())


def test_checkpoint_round_trip_continues_bit_for_bit(tmp_path):
    model, opt, sched = _trained()
    for _ in range(3):
        _step(model, opt, sched)
    ckpt = Checkpointer(tmp_path, "k1", every_steps=3)
    assert ckpt.due(3, 10) and not ckpt.due(10, 10) and not ckpt.due(4, 10)
    ckpt.save(3, model, opt, sched, {"curve": []})
    reference = [_step(model, opt, sched) for _ in range(4)]

    fresh, fopt, fsched = _trained(seed=99)  # different init: everything must come from the checkpoint
    state = ckpt.load(fresh, fopt, fsched)
    assert state["steps_done"] == 3
    assert [_step(fresh, fopt, fsched) for _ in range(4)] == reference
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.bin")), "no pickle in a checkpoint"


def test_a_checkpoint_of_another_key_is_ignored_and_replaced(tmp_path):
    model, opt, sched = _trained()
    Checkpointer(tmp_path, "old", 1).save(1, model, opt, sched, {"curve": []})
    assert Checkpointer(tmp_path, "new", 1).load(model, opt, sched) is None
    Checkpointer(tmp_path, "new", 1).save(1, model, opt, sched, {"curve": []})
    assert [p.name for p in tmp_path.iterdir()] == ["new"]


def test_guard_raises_on_timeout_and_memory():
    with pytest.raises(CellTimeout, match=r"\[pretrain\] timeout_s=1e-09 exceeded at step 3"):
        CellGuard(1e-9, None, "pretrain").check(3)
    with pytest.raises(CellMemoryExceeded, match=r"\[finetune\] memory_limit_mb=1 exceeded at step 0"):
        CellGuard(None, 1, "finetune").check(0)
    CellGuard(None, None, "pretrain").check(0)
