"""Tests for multi-process pretraining: the pieces of efficientllm.distributed, then the real stage under torchrun
with 2 CPU processes on gloo (DDP, and FSDP with gradient accumulation and activation checkpointing) against a
single-process run with the same global batch.

OMP_WAIT_POLICY=PASSIVE python -m pytest tests/test_distributed.py -q      # the torchrun runs are marked slow
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_OVERRIDES, copy_repo, curve_losses, run, write_params

from efficientllm.config import ConfigError, PretrainConfig, load_section, load_variant
from efficientllm.distributed import (
    aggregate_windows,
    micro_batching,
    single_process,
    under_torchrun,
    unsharded_copy,
)
from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM
from efficientllm.records import CellId
from stages.cells import torchrun_command

# --- pieces ---------------------------------------------------------------------------------------------------


def _payload(rank, host="h", device="cuda:0", amu=10.0, total=100.0, peak=20.0, pcu=0.5, energy=30.0,
             source="nvml", energy_source="nvml", window_s=2.0):
    return {"rank": rank, "host": host, "device": device, "amu_bytes": amu, "amu_ratio": amu / total,
            "amu_source": source, "pcu_ratio": pcu, "pcu_source": source, "peak_mem_bytes": peak,
            "peak_mem_source": "torch", "energy_j": energy, "energy_source": energy_source, "aec_w": None,
            "window_s": window_s}


def test_aggregate_gpus_sum_memory_and_energy_time_from_rank0():
    ranks = [_payload(1, device="cuda:1", amu=30.0, peak=40.0, pcu=0.7, energy=50.0, window_s=2.1),
             _payload(0, device="cuda:0", amu=10.0, peak=20.0, pcu=0.5, energy=30.0, window_s=2.0)]
    agg = aggregate_windows(ranks)
    assert agg["window_s"] == 2.0  # rank 0's window, whatever the order given
    assert agg["amu_bytes"] == 40.0 and agg["peak_mem_bytes"] == 60.0 and agg["energy_j"] == 80.0
    assert agg["amu_ratio"] == pytest.approx(40.0 / 200.0)  # two devices of 100 bytes each
    assert agg["pcu_ratio"] == pytest.approx(0.6) and agg["aec_w"] == pytest.approx(40.0)
    assert agg["amu_source"] == "nvml" and agg["energy_source"] == "nvml" and agg["peak_mem_source"] == "torch"


def test_aggregate_cpu_ranks_share_host_ram_and_package_energy():
    ranks = [_payload(r, device="cpu", amu=10.0 + r, total=1000.0, source="rss", energy=5.0 + r,
                      energy_source="rapl") for r in range(2)]
    agg = aggregate_windows(ranks)
    assert agg["amu_bytes"] == 21.0 and agg["amu_ratio"] == pytest.approx(21.0 / 1000.0)  # one host's RAM
    assert agg["energy_j"] == 5.0  # one RAPL package counter read by both ranks: counted once
    estimates = [_payload(r, device="cpu", source="rss", energy=5.0, energy_source="estimate") for r in range(2)]
    assert aggregate_windows(estimates)["energy_j"] == 10.0  # per-process CPU-time estimates add up
    missing = [_payload(0), {**_payload(1, device="cuda:1"), "energy_j": None, "pcu_ratio": None}]
    agg = aggregate_windows(missing)
    assert agg["energy_j"] is None and agg["aec_w"] is None and agg["pcu_ratio"] is None  # never a partial sum
    one = aggregate_windows([_payload(0)])
    assert "rank" not in one and one["energy_j"] == 30.0
    with pytest.raises(ValueError, match="no window results"):
        aggregate_windows([])


def test_micro_batching_and_config_checks():
    assert micro_batching(8, 1, None) == (8, 1)
    assert micro_batching(8, 2, None) == (4, 1)
    assert micro_batching(64, 8, 1) == (1, 8)
    with pytest.raises(ConfigError, match="batch_size=6 must be a multiple of the 4 ranks"):
        micro_batching(6, 4, None)
    with pytest.raises(ConfigError, match="micro_batch_size=3 must divide"):
        micro_batching(8, 2, 3)
    with pytest.raises(ConfigError, match="batch_size=6 must be a multiple of nproc_per_node=4"):
        PretrainConfig(batch_size=6, nproc_per_node=4)
    with pytest.raises(ConfigError, match="micro_batch_size=3 must divide batch_size / nproc_per_node = 4"):
        PretrainConfig(batch_size=8, nproc_per_node=2, micro_batch_size=3)


def test_launch_command_and_torchrun_detection():
    cmd = torchrun_command("stages.pretrain", ["--variant", "mha"], 4)
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                   "-m", "stages.pretrain", "--variant", "mha"]
    assert not under_torchrun({})
    assert under_torchrun({"TORCHELASTIC_RUN_ID": "x", "LOCAL_RANK": "0"})
    assert under_torchrun({"RANK": "0", "WORLD_SIZE": "2"})
    ctx = single_process("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    batch = torch.arange(12).reshape(4, 3)
    assert ctx.shard(batch) is batch and ctx.mean(torch.tensor(2.5)) == 2.5 and ctx.sum([1, 2]) == [1.0, 2.0]
    assert ctx.gather({"a": 1}) == [{"a": 1}] and ctx.broadcast(7) == 7


@pytest.mark.parametrize("tied", [True, False])
def test_unsharded_copy_rebuilds_the_same_model(tied):
    cfg = EfficientLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, tie_word_embeddings=tied)
    model = EfficientLMForCausalLM(cfg)
    copy = unsharded_copy(model, EfficientLMForCausalLM, model.state_dict())
    assert (copy.lm_head.weight is copy.model.embed_tokens.weight) == tied
    x = torch.randint(0, 64, (2, 8))
    torch.testing.assert_close(copy(x).logits, model(x).logits, rtol=0, atol=0)


# --- the stage under torchrun: 2 CPU processes on gloo --------------------------------------------------------

STEPS = {"steps": 3, "lr_warmup_steps": 1, "measure_warmup_steps": 1, "batch_size": 4}
DIST_DEFAULTS = {"nproc_per_node": 2, "device": "cpu", "parallelism": "ddp", "micro_batch_size": None,
                 "gradient_checkpointing": False}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny repository copy with its corpus prepared, and the single-process reference run done in-process."""
    from efficientllm.pretrain import pretrain_cell

    root = tmp_path_factory.mktemp("dist")
    repo = copy_repo(root / "repo")
    write_params(repo, {**TINY_OVERRIDES, "pretrain": {**TINY_OVERRIDES["pretrain"], **STEPS}})
    run([sys.executable, "-m", "stages.prepare"], repo)
    params = repo / "params.yaml"
    measure = load_section(params, "measure")
    ref = pretrain_cell(cell=CellId(axis="pretrain", stage="pretrain", cell="mha"),
                        slug="mha", base=load_section(params, "model"), recipe=load_variant(params, "mha"),
                        cfg=load_section(params, "pretrain"), data_dir=repo / "data/prepared",
                        measure=dataclasses.replace(measure, cache_dir=str(root / "cache")),
                        model_out=root / "single_model")
    return repo, ref, root / "single_model"


def _run_ranks(repo: Path, **pretrain) -> tuple[dict, list[dict]]:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pretrain"].update(STEPS, **{**DIST_DEFAULTS, **pretrain})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = run([sys.executable, "-m", "stages.pretrain", "--variant", "mha"], repo, timeout=240)
    assert "torch.distributed.run --standalone --nproc_per_node=2" in p.stdout, p.stdout
    rows = list((repo / "results").rglob("row.json"))
    assert rows == [repo / "results/pretrain/mha/row.json"], rows  # exactly one row, rank 0's
    assert not list((repo / "results").rglob("*.tmp*")), "no leftover temporary files"
    with (repo / "results/pretrain/mha/loss.csv").open() as f:
        curve = list(csv.DictReader(f))
    return json.loads(rows[0].read_text()), curve


def _check_same_as_single(row: dict, curve: list[dict], ref) -> None:
    assert row["status"] == "ok", row["error"]
    assert row["device_count"] == 2 and row["batch_size"] == 4
    ref_losses = curve_losses(ref)
    # DDP / FSDP average the ranks' gradients over equal token shares: the same updates as one process with the
    # global batch, up to float summation order (and 1 vs 2 threads); loss.csv keeps 6 significant digits.
    assert [float(r["loss"]) for r in curve] == pytest.approx(ref_losses, rel=2e-5)
    assert row["quality_value"] == pytest.approx(ref.row["quality_value"], rel=2e-5)  # eval sharded, summed
    assert row["steps"] == ref.row["steps"] == 2 and row["extra"]["window_tokens"] == ref.row["extra"]["window_tokens"]
    per = row["extra"]["per_device"]
    assert [d["rank"] for d in per] == [0, 1]
    assert row["amu_bytes"] == pytest.approx(sum(d["amu_bytes"] for d in per))
    assert row["peak_mem_bytes"] == pytest.approx(sum(d["peak_mem_bytes"] for d in per))
    assert row["energy_j"] == pytest.approx(sum(d["energy_j"] for d in per))  # CPU estimates: per process
    assert row["window_s"] == per[0]["window_s"]  # time is rank 0's
    assert row["tokens_per_s"] == pytest.approx(row["extra"]["window_tokens"] / row["window_s"])


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(prepared):
    repo, ref, _ = prepared
    row, curve = _run_ranks(repo, parallelism="ddp")
    _check_same_as_single(row, curve, ref)
    assert row["extra"]["parallelism"] == "ddp" and row["extra"]["grad_accum_steps"] == 1
    assert (repo / "models/pretrain/mha/model.safetensors").exists()


@pytest.mark.slow
def test_fsdp_with_accumulation_and_checkpointing_matches_one_process(prepared):
    from safetensors.torch import load_file

    repo, ref, single_model = prepared
    row, curve = _run_ranks(repo, parallelism="fsdp", micro_batch_size=1, gradient_checkpointing=True)
    _check_same_as_single(row, curve, ref)
    assert row["extra"]["parallelism"] == "fsdp" and row["extra"]["grad_accum_steps"] == 2
    # the sharded weights, gathered on rank 0 and saved as one plain model, equal the single-process ones
    ours = load_file(repo / "models/pretrain/mha/model.safetensors")
    theirs = load_file(single_model / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5)


def test_launcher_records_a_group_that_dies_without_a_row(prepared, monkeypatch, capsys):
    """torchrun exits non-zero and no rank wrote a row: the launching stage writes the failed row itself."""
    import stages.cells as distributed

    repo, _, _ = prepared
    monkeypatch.chdir(repo)
    monkeypatch.syspath_prepend(str(repo))
    import stages.pretrain as stage

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pretrain"].update(STEPS, **DIST_DEFAULTS)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    row_path = repo / "results/pretrain/mha/row.json"
    row_path.parent.mkdir(parents=True, exist_ok=True)
    row_path.write_text("{}")  # a stale row from an earlier run must not count as this run's
    fake = [sys.executable, "-c", "print('rank 1: CUDA out of memory (simulated)'); raise SystemExit(1)"]
    monkeypatch.setattr(distributed, "torchrun_command", lambda module, args, n: fake)
    assert stage.main(["--variant", "mha"]) == 0
    row = json.loads(row_path.read_text())
    assert row["status"] == "failed" and row["device_count"] == 2
    assert "torchrun with 2 processes exited 1 without a row" in row["error"]
    assert "CUDA out of memory (simulated)" in row["error"]
    assert (repo / "models/pretrain/mha/FAILED.json").exists()
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.slow
def test_ddp_group_killed_mid_run_resumes_from_rank0s_checkpoint(prepared, tmp_path):
    """kill -9 the whole torchrun group after its first checkpoint; the next run resumes from it on both ranks and
    ends where an uninterrupted run ends (the one-process reference: DDP matches it, see above)."""
    import os
    import signal
    import subprocess
    import time

    from conftest import env

    from efficientllm.pretrain import pretrain_cell

    repo, _, _ = prepared
    long = {**STEPS, "steps": 80, "checkpoint_every_steps": 10}
    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["pretrain"].update(long, **DIST_DEFAULTS)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    single = load_section(params_path, "pretrain")
    ref = pretrain_cell(cell=CellId(axis="pretrain", stage="pretrain", cell="mha"),
                        slug="mha", base=load_section(params_path, "model"), recipe=load_variant(params_path, "mha"),
                        cfg=dataclasses.replace(single, nproc_per_node=1, checkpoint_every_steps=0),
                        data_dir=repo / "data/prepared", model_out=None,
                        measure=dataclasses.replace(load_section(params_path, "measure"), cache_dir=str(tmp_path)))

    ckpt_root = repo / ".cache/checkpoints/pretrain/mha"
    cmd = [sys.executable, "-m", "stages.pretrain", "--variant", "mha"]
    proc = subprocess.Popen(cmd, cwd=repo, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: the launcher, torchrun and the ranks
    deadline = time.monotonic() + 180
    while not list(ckpt_root.glob("[!.]*/step-*/state.json")):
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)  # let the orphaned ranks die with their group
    assert not (repo / "results/pretrain/mha/row.json").exists()

    run(cmd, repo, timeout=240)
    row = json.loads((repo / "results/pretrain/mha/row.json").read_text())
    assert row["status"] == "ok", row["error"]
    assert row["device_count"] == 2 and row["extra"]["resumed_from_step"] >= 10
    with (repo / "results/pretrain/mha/loss.csv").open() as f:
        curve = [float(r["loss"]) for r in csv.DictReader(f)]
    # All 80 steps, before and after the resume, on the one-process trajectory: 2 ranks vs 1 differ by float
    # summation order only, which grows to ~5e-5 over 80 steps; a resume that lost the optimizer moments or the
    # schedule would be off by orders of magnitude more.
    assert curve == pytest.approx(curve_losses(ref), rel=2e-4)
    assert row["quality_value"] == pytest.approx(ref.row["quality_value"], rel=2e-4)
    assert not list(ckpt_root.glob("*/step-*")), "checkpoints are removed once the row is written"
