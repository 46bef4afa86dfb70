"""Multi-process fine-tuning: the finetune stage under a real torchrun (2 CPU processes on gloo), LoRA with DDP and
full fine-tuning with FSDP (gradient accumulation, activation checkpointing), against a single-process
`finetune_cell` with the same params; then the stage's guards (QLoRA under FSDP, bad params, a dead group).

OMP_WAIT_POLICY=PASSIVE python -m pytest tests/test_finetune_distributed.py -q     # the torchrun runs are slow
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, curve_losses, env, save_arith_base

from efficientllm.config import load_section
from efficientllm.records import CellId

STAGE_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
             "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
             "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
# 3 optimizer steps of a global micro-batch of 4 (2 per process); exact match on 2 records; a resume checkpoint
# after every step (DDP: rank 0 saves; FSDP: off, and the row says so)
FINETUNE = {"base_model": "base", "device": "cpu", "steps": 3, "measure_warmup_steps": 1, "lr_warmup_steps": 1,
            "eval_examples": 6, "gen_eval_examples": 2, "max_new_tokens": 6, "batch_size": 4, "lora_r": 4,
            "lr": 0.01, "full_lr": 0.002, "checkpoint_every_steps": 1}
RUNS = {  # params file -> (method, finetune overrides); the same cell params for the 1- and 2-process runs
    "lora-ddp": ("lora", {"parallelism": "ddp"}),
    "full-fsdp": ("full", {"parallelism": "fsdp", "grad_accum_steps": 2, "gradient_checkpointing": True}),
}


def _params(root: Path, name: str, **finetune) -> str:
    params = {
        "sft": {"datasets": {"arith": {"source": "arith", "n_examples": 48}}, "max_eval_examples": 6},
        "finetune": {**FINETUNE, **finetune},
        "measure": {"peak_calibration_n": 64, "cache_dir": str(root / "cache")},
    }
    (root / f"{name}.yaml").write_text(yaml.safe_dump(params))
    return f"{name}.yaml"


@pytest.fixture(scope="module")
def ft(tmp_path_factory):
    """A working directory with a tiny saved base, prepared arith data and, per entry of RUNS, a params file and the
    single-process reference run (in-process, its adapter / merged model under ref/<name>/)."""
    from efficientllm.finetune import finetune_cell

    root = tmp_path_factory.mktemp("ftdist")
    refs = {}
    with pytest.MonkeyPatch.context() as mp:
        # Importing `stages` sets these with setdefault; setting them here first keeps them out of later tests' env.
        for key, value in STAGE_ENV.items():
            mp.setenv(key, value)
        mp.chdir(root)
        mp.syspath_prepend(str(REPO))
        from stages import prepare_sft

        save_arith_base("base")
        assert prepare_sft.main(["--dataset", "arith", "--params", _params(root, "prep")]) == 0
        for name, (method, overrides) in RUNS.items():
            params = _params(root, name, nproc_per_node=2, **overrides)
            one = dataclasses.replace(load_section(params, "finetune"), nproc_per_node=1)
            refs[name] = finetune_cell(cell=CellId(axis="finetune", stage="finetune", cell=name),
                                       method=method, dataset="arith", sft=load_section(params, "sft"), cfg=one,
                                       measure=load_section(params, "measure"), data_dir=Path("data/sft/arith"),
                                       out_dir=Path("ref") / name)
    return root, refs


def _run_stage(root: Path, method: str, params: str) -> subprocess.CompletedProcess:
    """`python -m stages.finetune` in `root` (outside the repository: the stages package comes from PYTHONPATH)."""
    cmd = [sys.executable, "-m", "stages.finetune", "--method", method, "--dataset", "arith", "--params", params]
    e = {**env(), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    p = subprocess.run(cmd, cwd=root, env=e, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def _stage(root: Path, method: str, params: str) -> tuple[dict, list[dict], str]:
    p = _run_stage(root, method, params)
    assert "torch.distributed.run --standalone --nproc_per_node=2" in p.stdout, p.stdout
    # the ranks got the stage's own arguments, unchanged
    assert f"-m stages.finetune --method {method} --dataset arith --params {params}" in p.stdout, p.stdout
    cell = root / "results/finetune" / f"{method}-arith"
    # rank 0's files, once
    assert sorted(f.name for f in cell.iterdir()) == ["examples.jsonl", "loss.csv", "row.json", "trials"]
    with (cell / "loss.csv").open() as f:
        curve = list(csv.DictReader(f))
    return json.loads((cell / "row.json").read_text()), curve, p.stdout


def _logits(folder: Path, adapter: Path | None = None) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    import efficientllm.models  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(input_ids=ids).logits


def _check_same_as_one_process(row: dict, curve: list[dict], ref, parallelism: str) -> None:
    assert row["status"] == "ok", row["error"]
    assert row["device_count"] == 2 and row["batch_size"] == ref.row["batch_size"] == 4
    # The ranks' losses weighted by their response tokens: the same updates as one process, up to float summation
    # order (loss.csv keeps 6 significant digits).
    assert [float(r["loss"]) for r in curve] == pytest.approx(curve_losses(ref), rel=2e-5)
    assert row["eval_loss"] == pytest.approx(ref.row["eval_loss"], rel=1e-5)  # eval sharded over ranks, summed
    assert row["extra"]["eval_loss_initial"] == pytest.approx(ref.row["extra"]["eval_loss_initial"], rel=1e-6)
    assert row["extra"]["exact_match"] == ref.row["extra"]["exact_match"]
    assert row["extra"]["exact_match_n"] == ref.row["extra"]["exact_match_n"] == 2
    assert row["n_params"] == ref.row["n_params"] and row["n_trainable_params"] == ref.row["n_trainable_params"]
    extra = row["extra"]
    assert row["steps"] == ref.row["steps"] == 2 and extra["window_samples"] == ref.row["extra"]["window_samples"]
    assert extra["parallelism"] == parallelism and extra["per_device_batch_size"] == 2
    per = extra["per_device"]
    assert [d["rank"] for d in per] == [0, 1]
    assert row["amu_bytes"] == pytest.approx(sum(d["amu_bytes"] for d in per))
    assert row["energy_j"] == pytest.approx(sum(d["energy_j"] for d in per))  # CPU estimates: per process
    assert row["window_s"] == per[0]["window_s"]  # time is rank 0's
    # peak FLOP/s: rank 0's calibration (torchrun gives each rank 1 thread), summed over the devices
    assert row["peak_flops_per_s"] == pytest.approx(2 * extra["peak_flops_calibration"]["peak_flops_per_s"])


@pytest.mark.slow
def test_lora_ddp_two_processes_match_one_process(ft):
    root, refs = ft
    row, curve, out = _stage(root, "lora", "lora-ddp.yaml")
    _check_same_as_one_process(row, curve, refs["lora-ddp"], "ddp")
    assert out.count("checkpoint: ") == 2 and "checkpoint: 2 steps saved" in out  # rank 0 alone, steps 1 and 2
    assert row["extra"]["checkpointing"] is None
    assert not list((root / ".cache/checkpoints/finetune").glob("*/*/step-*"))  # ... removed with the row written
    ours, theirs = root / "models/finetune/lora-arith", root / "ref/lora-ddp"
    torch.testing.assert_close(_logits(ours / "merged"), _logits(theirs / "merged"), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_logits(root / "base", ours / "adapter"), _logits(theirs / "merged"),
                               rtol=1e-4, atol=1e-4)  # the saved adapter on the base = the 1-process merged model


@pytest.mark.slow
def test_full_fsdp_with_accumulation_and_checkpointing_matches_one_process(ft):
    root, refs = ft
    row, curve, out = _stage(root, "full", "full-fsdp.yaml")
    _check_same_as_one_process(row, curve, refs["full-fsdp"], "fsdp")
    assert row["extra"]["grad_accum_steps"] == 2 and row["extra"]["gradient_checkpointing"] is True
    assert row["extra"]["checkpointing"].startswith("off: FSDP shards") and "checkpoint: " not in out
    # the sharded weights, gathered on rank 0 into a plain model and saved, give the 1-process model's logits
    ours, theirs = root / "models/finetune/full-arith", root / "ref/full-fsdp"
    torch.testing.assert_close(_logits(ours / "merged"), _logits(theirs / "merged"), rtol=1e-4, atol=1e-4)


def test_qlora_under_fsdp_is_a_skipped_row(ft, monkeypatch):
    """Known before any rank starts: the stage writes the skipped row without launching a group."""
    import stages.cells as distributed

    root, _ = ft
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(REPO))
    from stages import finetune

    monkeypatch.setattr(distributed, "torchrun_command", lambda *a: pytest.fail("a group was launched"))
    params = _params(root, "qlora-fsdp", nproc_per_node=2, parallelism="fsdp")
    assert finetune.main(["--method", "qlora", "--dataset", "arith", "--params", params]) == 0
    row = json.loads((root / "results/finetune/qlora-arith/row.json").read_text())
    assert row["status"] == "skipped" and row["device_count"] == 2
    assert "qlora under finetune.parallelism: fsdp is not supported" in row["error"]
    for sub in ("adapter", "merged"):
        marker = json.loads((root / f"models/finetune/qlora-arith/{sub}/FAILED.json").read_text())
        assert marker["status"] == "skipped"


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 3}, "[finetune] batch_size=3 must be a multiple of nproc_per_node=2"),
    ({"device": "cuda:1"}, "[finetune] device: 'cuda:1' names one GPU, but nproc_per_node=2"),
    ({"parallelism": "zero3"}, "[finetune] parallelism: 'zero3' is not one of ddp, fsdp"),
])
def test_bad_multi_process_params_exit_2_and_write_nothing(ft, overrides, message, monkeypatch, capsys):
    root, _ = ft
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(REPO))
    from stages import finetune
    from stages import run as run_stage
    params = _params(root, "bad", nproc_per_node=2, **overrides)
    with pytest.raises(SystemExit) as e:
        run_stage(finetune.main, ["--method", "freeze", "--dataset", "arith", "--params", params])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err, err
    assert not (root / "results/finetune/freeze-arith").exists()
    assert not (root / "models/finetune/freeze-arith").exists()


def test_a_group_that_dies_without_a_row_gets_a_failed_row(ft, monkeypatch, capsys):
    """torchrun exits non-zero and no rank wrote a row: the launching stage writes the failed row itself; the
    ranks were given the stage's own arguments, whatever they are."""
    import stages.cells as distributed

    root, _ = ft
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(REPO))
    from stages import finetune
    params = _params(root, "dies", nproc_per_node=2)
    row_path = root / "results/finetune/dora-arith/row.json"
    row_path.parent.mkdir(parents=True, exist_ok=True)
    row_path.write_text("{}")  # a stale row from an earlier run must not count as this run's
    launched = []

    def dying_group(module: str, args: list[str], n: int) -> list[str]:
        launched.append((module, args, n))
        return [sys.executable, "-c", "print('rank 1: CUDA out of memory (simulated)'); raise SystemExit(1)"]

    monkeypatch.setattr(distributed, "torchrun_command", dying_group)
    argv = ["--dataset", "arith", "--params", params, "--method", "dora"]
    assert finetune.main(argv) == 0
    assert launched == [("stages.finetune", argv, 2)]
    row = json.loads(row_path.read_text())
    assert row["status"] == "failed" and row["device_count"] == 2 and row["technique"] == "dora"
    assert "torchrun with 2 processes exited 1 without a row" in row["error"]
    assert "CUDA out of memory (simulated)" in row["error"]
    for sub in ("adapter", "merged"):
        assert json.loads((root / f"models/finetune/dora-arith/{sub}/FAILED.json").read_text())["status"] == "failed"
    assert "FAILED" in capsys.readouterr().out
