"""Measurement integrity: what is inside a measured window, what a technique trains, and how rows are labelled.

Each test pins one finding of the integrity review (issue "Numbers that mean what they say"): checkpoint saves
outside the window, a resumed run warming up again, fine-tuning throughput over response tokens, `freeze` on a
tied base, fp32 master weights for every method, QLoRA under the same autocast as LoRA.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from test_finetune_e2e import stage_dir  # noqa: F401  (the fixture: a tiny tied base + arith data)

from efficientllm.config import FinetuneConfig, MeasureConfig, load_section
from efficientllm.records import CellId


def _finetune(method: str, **overrides):
    from efficientllm.finetune import finetune_cell

    cfg = dataclasses.replace(load_section("params.yaml", "finetune"), **overrides)
    return finetune_cell(cell=CellId(axis="finetune", stage="finetune", cell=f"{method}-arith"), method=method,
                         dataset="arith", sft=load_section("params.yaml", "sft"), cfg=cfg,
                         measure=load_section("params.yaml", "measure"), data_dir=Path("data/sft/arith"),
                         out_dir=None, checkpoint_dir=Path("ckpt") / method)


def test_checkpoint_saves_are_outside_every_window_figure(stage_dir, monkeypatch):  # noqa: F811
    from efficientllm.checkpoint import Checkpointer

    save = Checkpointer.save

    def slow_save(self, *args, **kwargs):  # a checkpoint as slow as a multi-GB one on a real disk
        save(self, *args, **kwargs)
        time.sleep(0.3)

    monkeypatch.setattr(Checkpointer, "save", slow_save)
    row = _finetune("lora", steps=5, measure_warmup_steps=1, checkpoint_every_steps=1).row
    steps_s = sum(row["latency_samples_s"])
    # saves after steps 1, 2 and 3 fall inside the window (none after the last step): 0.9 s of sleeping
    assert row["extra"]["checkpoint_s"] >= 0.9
    assert row["window_s"] < steps_s + 0.2, (row["window_s"], steps_s)
    assert row["tokens_per_s"] == pytest.approx(row["extra"]["window_tokens"] / row["window_s"])


class _Resumed:
    """A checkpointer that 'resumes' after `done` steps and never saves."""

    def __init__(self, done: int) -> None:
        self.done = done

    def load(self, model, opt, sched):
        return {"steps_done": self.done, "curve": [{"step": i, "loss": 1.0} for i in range(self.done)]}

    def due(self, steps_done: int, total: int) -> bool:
        return False


@pytest.mark.parametrize("done, window_start, measured", [(0, 2, 6), (3, 5, 3), (7, 7, 1)])
def test_a_resumed_run_warms_up_again(done, window_start, measured):
    from efficientllm.checkpoint import CellGuard
    from efficientllm.distributed import single_process
    from efficientllm.training import StepWork, train_measured

    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    def step_fn(step):
        loss = model(torch.ones(2, 4)).pow(2).mean()
        loss.backward()
        return StepWork(loss=loss.detach(), tokens=2, computed_tokens=2)

    loop = train_measured(step_fn, section="pretrain", model=model, optimizer=opt, scheduler=sched, steps=8,
                          warmup_steps=2, clip_params=list(model.parameters()), grad_clip=0.0,
                          dist=single_process("cpu"), measure=MeasureConfig(sample_interval_s=0.01),
                          progress=("tokens", 2), guard=CellGuard(None, None, "pretrain"),
                          checkpointer=_Resumed(done) if done else None)
    assert (loop.start, loop.window_start, len(loop.step_s)) == (done, window_start, measured)
    assert loop.tokens == 2 * measured


def test_finetune_throughput_counts_response_tokens_not_padding(stage_dir):  # noqa: F811
    from efficientllm.data.sft import IGNORE_INDEX
    from efficientllm.finetune import batch_order, load_data, load_tokenizer

    cfg = dataclasses.replace(load_section("params.yaml", "finetune"), steps=4, measure_warmup_steps=1)
    sft = load_section("params.yaml", "sft")
    row = _finetune("lora", steps=4, measure_warmup_steps=1).row
    # the same response tokens, counted independently: the measured steps' batches of the seeded order
    data = load_data(Path("data/sft/arith"), sft, cfg, load_tokenizer(cfg))
    targets = [sum(y != IGNORE_INDEX for y in lab[1:sft.max_seq_len]) for lab in data.train.labels]
    batches = batch_order(len(targets), cfg.batch_size, cfg.seed, cfg.steps)
    expected = sum(targets[i] for b in batches[1:] for i in b)
    x = row["extra"]
    assert x["window_tokens"] == expected < x["window_tokens_padded"] == 3 * cfg.batch_size * sft.max_seq_len
    assert row["tokens_per_s"] * row["window_s"] == pytest.approx(expected)
    assert row["tokens_per_j"] * row["energy_j"] == pytest.approx(expected)


def test_freeze_on_a_tied_base_leaves_the_embedding_frozen(stage_dir):  # noqa: F811
    frozen = _finetune("freeze").row
    x = frozen["extra"]
    assert x["trainable_modules"] == ["model.layers.1", "model.norm"]  # the last block and the final norm
    assert x["lowest_grad_block"] == 1  # the backward stops above block 0
    assert frozen["n_trainable_params"] < 0.5 * frozen["n_params"]
    with_head = _finetune("freeze", freeze_train_head=True).row
    assert with_head["extra"]["trainable_modules"] == ["model.embed_tokens", "model.layers.1", "model.norm"]
    assert with_head["extra"]["lowest_grad_block"] == 0 and with_head["n_trainable_params"] > frozen[
        "n_trainable_params"]


@pytest.mark.parametrize("method", ["full", "freeze", "lora"])
def test_every_method_trains_fp32_master_weights_under_16_bit_autocast(stage_dir, method):  # noqa: F811
    from efficientllm.finetune import build_model, mixed_precision

    cfg = dataclasses.replace(load_section("params.yaml", "finetune"), dtype="bfloat16")
    model, _ = build_model(method, cfg, torch.device("cpu"), torch.bfloat16)
    described = mixed_precision(model, torch.bfloat16)
    assert described == {"master_weights": "float32", "frozen_dtype": "bfloat16", "autocast": "bfloat16"}
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), (name, p.dtype)
    row = _finetune(method, dtype="bfloat16").row
    assert row["status"] == "ok" and row["extra"]["master_weights"] == "float32"
    assert row["extra"]["autocast"] == "bfloat16" and row["dtype"] == "bfloat16"


def test_qlora_frozen_parts_match_lora_under_the_same_autocast(stage_dir):  # noqa: F811
    pytest.importorskip("bitsandbytes")
    from efficientllm.finetune import build_model, mixed_precision, unsupported_reason

    if unsupported_reason("qlora", torch.device("cpu")):
        pytest.skip(unsupported_reason("qlora", torch.device("cpu")))
    cfg = dataclasses.replace(load_section("params.yaml", "finetune"), dtype="bfloat16")
    model, _ = build_model("qlora", cfg, torch.device("cpu"), torch.bfloat16)
    # peft's prepare_model_for_kbit_training leaves the frozen embedding / norms / head in float32 ...
    assert any(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
    mixed_precision(model, torch.bfloat16)
    # ... the policy puts them back at the compute dtype, as LoRA's frozen base is; the adapters stay float32
    floating = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    assert all(p.dtype == torch.bfloat16 for n, p in floating if not p.requires_grad)
    assert all(p.dtype == torch.float32 for n, p in floating if p.requires_grad)
    assert FinetuneConfig.__dataclass_fields__["dtype"].default == "auto"


def test_pretraining_reports_efficiency_at_equal_quality(tmp_path):
    """Every 2 steps the validation loss (window paused); the first time it reaches the target: its steps,
    tokens, training time and energy (window power x that time)."""
    from conftest import TINY_OVERRIDES, copy_repo, run, write_params

    repo = copy_repo(tmp_path / "repo")
    write_params(repo, {**TINY_OVERRIDES, "pretrain": {**TINY_OVERRIDES["pretrain"], "steps": 8,
                                                      "eval_every_steps": 2, "target_val_loss": 100.0}})
    run([sys.executable, "-m", "stages.prepare"], repo)
    run([sys.executable, "-m", "stages.pretrain", "--variant", "mha"], repo)
    row = json.loads((repo / "results/pretrain/mha/row.json").read_text())
    t = row["extra"]["to_target"]
    assert [e["steps"] for e in t["evals"]] == [2, 4, 6, 8]
    # a target every evaluation meets: reached at the first one, after 2 steps of 4 x 32 tokens
    assert t["reached"] and t["steps"] == 2 and t["tokens"] == 2 * 4 * 32
    curve = (repo / "results/pretrain/mha/loss.csv").read_text().splitlines()[1:3]
    assert t["train_s"] == pytest.approx(sum(float(line.split(",")[-1]) for line in curve), rel=1e-3)
    assert t["energy_j"] == pytest.approx(row["aec_w"] * t["train_s"])
