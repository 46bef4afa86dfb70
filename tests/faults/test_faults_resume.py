"""Kill and resume: `kill -9` a `dvc repro` in the middle of a pretrain and a finetune cell; the next `dvc repro`
resumes from the last checkpoint, and the quality columns equal those of an uninterrupted run (CPU, 1e-6 relative)."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, TINY_OVERRIDES, copy_repo, env, run, write_params

DVC = str(BIN / "dvc")
CELLS = {  # target -> (params section, row/curve folder, checkpoint folder, steps, checkpoint every, quality columns)
    "pretrain@mha": ("pretrain", "results/pretrain/mha", ".cache/checkpoints/pretrain/mha", 150, 10,
                     ("quality_value", "eval_loss", "train_loss_final", "n_params", "seed", "status")),
    "finetune@lora-arith": ("finetune", "results/finetune/lora-arith", ".cache/checkpoints/finetune/lora-arith", 60, 5,
                            ("eval_loss", "train_loss_final", "quality_value", "n_trainable_params", "seed", "status")),
}
MODEL_DIRS = {"pretrain@mha": ["models/pretrain/mha"],
              "finetune@lora-arith": ["models/finetune/lora-arith/adapter", "models/finetune/lora-arith/merged"]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("resume") / "repo")
    write_params(repo, {**TINY_OVERRIDES, "matrix": {**TINY_OVERRIDES["matrix"], "pretrain": ["mha"]}})
    return repo


def _set_params(repo: Path, section: str, steps: int, every: int) -> None:
    write_params(repo, {section: {**TINY_OVERRIDES[section], "steps": steps, "checkpoint_every_steps": every}})


def _row(repo: Path, folder: str) -> dict:
    from efficientllm.records import read_row

    return read_row(repo / folder / "row.json")


def _losses(repo: Path, folder: str) -> list[str]:
    with open(repo / folder / "loss.csv") as f:
        return [r["loss"] for r in csv.DictReader(f)]


def _checkpoint_steps(repo: Path, ckpt: str) -> int:
    # whole checkpoints only: <key>/step-<n>/ (temp folders being written start with a dot)
    for state in sorted((repo / ckpt).glob("[!.]*/step-*/state.json"))[-1:]:
        try:
            return json.loads(state.read_text())["steps_done"]
        except (OSError, ValueError, KeyError):
            return 0
    return 0


def _assert_no_half_written(repo: Path, folder: str, model_dirs: list[str]) -> None:
    """A killed cell's declared outs are absent or whole: no temp files inside them, a row that parses."""
    for out in [folder, *model_dirs]:
        if (repo / out).exists():
            assert not [p for p in (repo / out).rglob("*") if ".tmp" in p.name], list((repo / out).rglob("*"))
    if (repo / folder / "row.json").exists():
        _row(repo, folder)
    for d in model_dirs:
        if (repo / d).exists():
            names = {p.name for p in (repo / d).iterdir()}
            assert names & {"model.safetensors", "adapter_model.safetensors", "FAILED.json"}, (d, names)


@pytest.mark.slow
@pytest.mark.parametrize("target", list(CELLS))  # in this order: the finetune cell trains on the pretrained base
def test_kill9_dvc_repro_then_resume_matches_uninterrupted(repo, target):
    section, folder, ckpt, steps, every, quality = CELLS[target]
    # The uninterrupted reference, without checkpoints. The interrupted run below checkpoints, so its params
    # differ and DVC's run cache cannot hand back the reference's outputs instead of resuming.
    _set_params(repo, section, steps, 0)
    run([DVC, "repro", target], repo)
    ref, ref_losses = _row(repo, folder), _losses(repo, folder)
    assert ref["status"] == "ok" and ref["extra"]["resumed_from_step"] is None

    # Run the cell with checkpoints and kill the whole `dvc repro` process group once a checkpoint is on disk.
    _set_params(repo, section, steps, every)
    proc = subprocess.Popen([DVC, "repro", target], cwd=repo, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while _checkpoint_steps(repo, ckpt) < every and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # polling for the checkpoint file, not a timing assumption
    assert proc.poll() is None, "the cell finished before a checkpoint appeared:\n" + proc.stdout.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    killed_at = _checkpoint_steps(repo, ckpt)
    assert every <= killed_at < steps
    _assert_no_half_written(repo, folder, MODEL_DIRS[target])

    p = run([DVC, "repro", target], repo)
    assert "resuming after" in p.stdout, p.stdout
    row = _row(repo, folder)
    assert row["status"] == "ok"
    assert row["extra"]["resumed_from_step"] >= killed_at
    for col in quality:
        a, b = row[col], ref[col]
        if isinstance(a, float):
            assert math.isclose(a, b, rel_tol=1e-6), (col, a, b)
        else:
            assert a == b, (col, a, b)
    assert _losses(repo, folder) == ref_losses, "the resumed loss curve differs from the uninterrupted one"
    assert not (repo / ckpt).exists(), "checkpoints are removed once the row is written"
    assert "changed" not in run([DVC, "status", target], repo).stdout


@pytest.mark.slow
def test_kill9_during_a_quantize_cell_then_rerun(repo):
    """A quantize cell does not train, so it has no checkpoint: killed, it re-runs whole; its outs stay whole."""
    target, folder = "quantize@bf16", repo / "results/quantize/base-bf16"
    run([DVC, "repro", target], repo)
    from efficientllm.records import read_row

    ref = read_row(folder / "row.json")
    assert ref["status"] == "ok"
    proc = subprocess.Popen([DVC, "repro", "-f", "-s", target], cwd=repo, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    seen = b""
    while b"loglikelihood requests" not in seen:  # lm-eval's log line: the model is loaded, the scoring runs
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, "the cell ended before its evaluation started:\n" + seen.decode(errors="replace")
        seen += chunk
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    for name in ("row.json", "samples.json"):
        if (folder / name).exists():  # absent (DVC removed the outs before the run) or whole
            json.loads((folder / name).read_text())
    assert not [p for p in folder.parent.rglob("*") if ".tmp" in p.name and p.parent == folder]

    # The killed run left the earlier outputs whole (or none), so a plain `dvc repro` may find the cell up to date;
    # force it to really run the cell again, then compare with the first run.
    run([DVC, "repro", "-f", "-s", target], repo)
    row = read_row(folder / "row.json")
    assert row["status"] == "ok" and row["run_id"] != ref["run_id"]
    for col in ("quality_value", "quality_metric", "n_params", "model_size_bytes"):
        a, b = row[col], ref[col]
        assert (math.isclose(a, b, rel_tol=1e-6) if isinstance(a, float) else a == b), (col, a, b)
