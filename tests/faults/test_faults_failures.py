"""Failures are data: a NaN loss, a timeout, a memory limit or a bug in one cell gives a `status='failed'` row with
the error and a traceback excerpt, and the stage exits 0 (so DVC records the cell and the sweep goes on); an I/O
error exits non-zero and writes nothing (retryable). Also determinism: the same seed gives the same quality columns.

The stages run in this process (their real `main` through `stages.run`) on one prepared tiny copy of the repo."""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES, copy_repo, curve_losses, run, write_params

from efficientllm.records import read_row


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("failures") / "repo")
    write_params(repo, TINY_OVERRIDES)
    run([sys.executable, "-m", "stages.prepare"], repo)
    run([sys.executable, "-m", "stages.pretrain", "--variant", "mha"], repo)
    run([sys.executable, "-m", "stages.prepare_sft", "--dataset", "arith"], repo)
    return repo


def call_stage(repo: Path, monkeypatch, name: str, *argv: str) -> tuple[int, str, str]:
    """Run stage `name` as `python -m stages.<name>` would, in this process: (exit code, stdout, stderr)."""
    import stages

    monkeypatch.chdir(repo)
    mod = importlib.import_module(f"stages.{name}")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        stages.run(mod.main, list(argv))
    return e.value.code, out.getvalue(), err.getvalue()


def params_with(repo: Path, tmp_path: Path, section: str, **values) -> str:
    path = tmp_path / "params.yaml"
    path.write_text((repo / "params.yaml").read_text())
    write_params(tmp_path, {section: {**TINY_OVERRIDES.get(section, {}), **values}})
    return str(path)


CASES = [  # (stage, section, overrides, text the row's error must contain)
    ("pretrain", "pretrain", {"lr": 1e30}, "TrainingDiverged: loss is"),
    ("pretrain", "pretrain", {"timeout_s": 1e-9}, "CellTimeout: [pretrain] timeout_s=1e-09 exceeded at step 0"),
    ("pretrain", "pretrain", {"memory_limit_mb": 1}, "CellMemoryExceeded: [pretrain] memory_limit_mb=1 exceeded"),
    ("finetune", "finetune", {"lr": 1e30}, "TrainingDiverged: loss is"),
    ("finetune", "finetune", {"timeout_s": 1e-9}, "CellTimeout: [finetune] timeout_s=1e-09 exceeded at step 0"),
    ("finetune", "finetune", {"memory_limit_mb": 1}, "CellMemoryExceeded: [finetune] memory_limit_mb=1 exceeded"),
]
ARGS = {"pretrain": ["--variant", "gqa"], "finetune": ["--method", "lora", "--dataset", "arith"]}
ROWS = {"pretrain": "results/pretrain/gqa", "finetune": "results/finetune/lora-arith"}


@pytest.mark.parametrize(("stage", "section", "overrides", "needle"), CASES,
                         ids=[f"{c[0]}-{next(iter(c[2]))}" for c in CASES])
def test_a_failing_cell_becomes_a_failed_row(repo, tmp_path, monkeypatch, stage, section, overrides, needle):
    params = params_with(repo, tmp_path, section, checkpoint_every_steps=1, **overrides)
    code, out, err = call_stage(repo, monkeypatch, stage, *ARGS[stage], "--params", params)
    assert code == 0, (out, err)
    assert "FAILED" in out
    row = read_row(repo / ROWS[stage] / "row.json")
    assert row["status"] == "failed" and row["seed"] == 1234
    assert needle in row["error"].splitlines()[0], row["error"]
    assert "Traceback" in row["error"]
    left = repo / ".cache/checkpoints" / stage
    assert not left.exists() or not any(left.iterdir()), "a finished cell's checkpoints are removed"


def test_a_bug_in_a_cell_becomes_a_failed_row_with_its_traceback(repo, tmp_path, monkeypatch):
    import efficientllm.pretrain as pt

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in the evaluation")

    monkeypatch.setattr(pt, "evaluate_perplexity", broken)
    code, out, _ = call_stage(repo, monkeypatch, "pretrain", "--variant", "gqa")
    assert code == 0
    row = read_row(repo / "results/pretrain/gqa/row.json")
    assert row["status"] == "failed" and row["error"].startswith("ZeroDivisionError: a bug in the evaluation")
    assert "in broken" in row["error"]
    assert (repo / "models/pretrain/gqa/FAILED.json").exists()


def test_an_io_error_exits_nonzero_and_writes_nothing(repo, monkeypatch):
    import efficientllm.pretrain as pt

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pt, "_save_model_atomic", full_disk)
    monkeypatch.chdir(repo)
    import stages
    import stages.pretrain

    for p in (repo / "results/pretrain/pe-none", repo / "models/pretrain/pe-none"):
        assert not p.exists()
    with pytest.raises(OSError, match="No space left"):  # uncaught: `python -m` exits 1, DVC records no outputs
        stages.run(stages.pretrain.main, ["--variant", "pe-none"])
    assert not (repo / "results/pretrain/pe-none").exists() and not (repo / "models/pretrain/pe-none").exists()


def test_same_seed_same_quality_columns(repo, monkeypatch):
    """Determinism on CPU: two runs of one cell with the same seed agree exactly on every quality column."""
    from efficientllm.config import load_section, load_variant
    from efficientllm.pretrain import pretrain_cell
    from efficientllm.records import CellId

    monkeypatch.chdir(repo)
    p = "params.yaml"
    kw = dict(cell=CellId(axis="pretrain", stage="pretrain", cell="mqa"),
              slug="mqa", base=load_section(p, "model"), recipe=load_variant(p, "mqa"), cfg=load_section(p, "pretrain"),
              measure=load_section(p, "measure"), data_dir=Path("data/prepared"), model_out=None)
    a, b = pretrain_cell(**kw), pretrain_cell(**kw)
    for col in ("quality_value", "eval_loss", "train_loss_final", "n_params", "seed"):
        assert a.row[col] == b.row[col], (col, a.row[col], b.row[col])
    assert curve_losses(a) == curve_losses(b)
    assert a.row["seed"] == 1234 and a.row["run_id"] != b.row["run_id"]
    assert a.row["extra"]["seeds"] == {"pretrain": 1234, "prepare_split": 1234}  # rows record every seed


def test_a_dtype_the_device_cannot_run_is_bad_input_not_a_row(repo, monkeypatch):
    """bf16 on a GPU without bf16 (simulated: CPU can run every dtype here): exit 2, one line, nothing written."""
    import efficientllm.pretrain as pt

    def no_bf16(device, dtype="auto"):
        raise pt.ConfigError(f"[pretrain] dtype: bfloat16 is not supported on {device}")

    monkeypatch.setattr(pt, "_autocast", no_bf16)
    code, _, err = call_stage(repo, monkeypatch, "pretrain", "--variant", "pe-learned")
    # the progress lines of the phases that ran, then the one error line, last
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and errors == ["error: [pretrain] dtype: bfloat16 is not supported on cpu"]
    assert err.strip().splitlines()[-1] == errors[0]
    assert not (repo / "results/pretrain/pe-learned").exists() and not (repo / "models/pretrain/pe-learned").exists()
