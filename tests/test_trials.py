"""Repeated trials: `<section>.trials: N` runs every measured cell N times and the report averages them.

Fast tests drive `stages.cells.run_trials` with stand-in stage modules (a process that writes its row, one that
dies without a row, one that exits 1); the slow one runs `dvc repro` of a pretrain cell with two trials and reads
the leaderboard's mean and CI over them.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import BIN, run, write_params

from efficientllm.config import ConfigError, PretrainConfig
from efficientllm.records import CellId, read_row, write_row
from stages.cells import for_trial, run_trials, trial_dir, trial_name

FIRST = {"axis": "pretrain", "stage": "pretrain", "cell": "mha", "technique": "mha", "batch_size": 4}


def _stage_module(where: Path, name: str, body: str) -> str:
    """A stand-in stage: `python -m <name> ... --trial k` runs `body` with `trial` and `out` (its row path)."""
    (where / f"{name}.py").write_text(textwrap.dedent("""
        import sys
        from pathlib import Path
        trial = int(sys.argv[sys.argv.index("--trial") + 1])
        out = Path("results/pretrain/mha/trials") / str(trial) / "row.json"
    """) + textwrap.dedent(body))
    return name


def _trial0(result_dir: Path, status: str = "ok") -> None:
    row = CellId(seed=7, **FIRST).failed_row(RuntimeError("x"), status=status) if status != "ok" else \
        {"run_id": "r0", "status": "ok", "trial": 0, "seed": 7, **FIRST}
    write_row(result_dir / "row.json", row)


def test_for_trial_offsets_the_seed_and_checks_the_index():
    cfg = PretrainConfig(seed=7, trials=3)
    assert for_trial(cfg, 0, "pretrain") is cfg
    assert for_trial(cfg, 2, "pretrain").seed == 9
    assert for_trial(PretrainConfig(seed=7, trials=3, trial_seeds="same"), 2, "pretrain").seed == 7
    with pytest.raises(ValueError, match=r"--trial 3: \[pretrain\] trials=3 allows 0..2"):
        for_trial(cfg, 3, "pretrain")
    with pytest.raises(ConfigError, match="trial_seeds"):
        from efficientllm.config import parse_section

        parse_section(PretrainConfig, "pretrain", {"trial_seeds": "random"})
    assert trial_dir(Path("r/c"), 0) == Path("r/c") and trial_dir(Path("r/c"), 2) == Path("r/c/trials/2")
    assert trial_name("mha", 0) == "mha" and trial_name("mha", 1) == "mha~trial-1"


def test_run_trials_runs_fresh_processes_and_records_a_dead_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result_dir = Path("results/pretrain/mha")
    _trial0(result_dir)
    # trial 1 writes its row; trial 2 dies (as a killed process would) without one
    module = _stage_module(tmp_path, "fake_stage", """
        import json, os
        if trial == 2:
            os._exit(9)
        from efficientllm.records import write_row
        write_row(out, {"run_id": f"r{trial}", "axis": "pretrain", "stage": "pretrain", "cell": "mha",
                        "status": "ok", "trial": trial, "seed": 7 + trial, "al_s": 0.1 * trial})
    """)
    code = run_trials(module, ["--variant", "mha"], result_dir, PretrainConfig(seed=7, trials=3), "pretrain@mha")
    assert code == 0
    one = read_row(result_dir / "trials/1/row.json")
    assert one["status"] == "ok" and one["trial"] == 1 and one["seed"] == 8
    dead = read_row(result_dir / "trials/2/row.json")
    assert dead["status"] == "failed" and dead["trial"] == 2 and dead["seed"] == 9
    assert dead["cell"] == "mha" and dead["batch_size"] == 4  # identity copied from trial 0
    assert "trial 2 exited 9 without writing its row" in dead["error"]
    index = json.loads((result_dir / "trials/index.json").read_text())
    assert index["trials"] == 3 and index["trial_seeds"] == "vary"
    assert [(r["trial"], r["status"]) for r in index["runs"]] == [(0, "ok"), (1, "ok"), (2, "failed")]


def test_run_trials_stops_on_a_retryable_error_and_skips_repeating_a_failed_cell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result_dir = Path("results/pretrain/mha")
    _trial0(result_dir)
    module = _stage_module(tmp_path, "io_error_stage", "sys.exit(1)\n")
    assert run_trials(module, [], result_dir, PretrainConfig(trials=3), "pretrain@mha") == 1
    assert not (result_dir / "trials/1/row.json").exists()  # nothing half-written; DVC / the flow retries

    _trial0(result_dir, status="failed")
    never = _stage_module(tmp_path, "never_stage", "raise SystemExit('must not run')\n")
    assert run_trials(never, [], result_dir, PretrainConfig(trials=3), "pretrain@mha") == 0
    index = json.loads((result_dir / "trials/index.json").read_text())
    assert index["not_run"] == "trials 1..2: trial 0 is failed" and len(index["runs"]) == 1

    _trial0(result_dir)  # one trial: only the index
    assert run_trials(never, [], result_dir, PretrainConfig(trials=1), "pretrain@mha") == 0
    assert json.loads((result_dir / "trials/index.json").read_text())["runs"][0]["status"] == "ok"


@pytest.mark.slow
def test_dvc_repro_with_two_trials_gives_a_mean_and_ci(tiny_repo):
    repo = tiny_repo
    write_params(repo, {"pretrain": {"batch_size": 4, "steps": 6, "lr_warmup_steps": 2, "measure_warmup_steps": 2,
                                     "eval_batches": 2, "trials": 2, "trial_seeds": "vary"}})
    run([str(BIN / "dvc"), "repro", "pretrain@mha"], repo)
    cell = repo / "results/pretrain/mha"
    rows = [read_row(cell / "row.json"), read_row(cell / "trials/1/row.json")]
    assert [r["trial"] for r in rows] == [0, 1] and all(r["status"] == "ok" for r in rows)
    assert [r["seed"] for r in rows] == [1234, 1235]
    assert len({r["quality_value"] for r in rows}) == 2  # another seed, another model
    assert (cell / "trials/1/loss.csv").exists()
    assert sorted(p.name for p in (repo / "models/pretrain").iterdir()) == ["mha"]  # trial 0's model only
    index = json.loads((cell / "trials/index.json").read_text())
    assert [r["status"] for r in index["runs"]] == ["ok"] * 2

    p = run([str(BIN / "dvc"), "status", "pretrain@mha"], repo)
    assert "changed" not in p.stdout, p.stdout  # the trials folder is a proper out: nothing stale

    p = run([str(BIN / "efficientllm"), "sql", "--format", "json",
             "SELECT n_trials, quality_value, quality_ci95 FROM leaderboard_pretrain WHERE cell = 'mha'"], repo)
    (board,) = json.loads(p.stdout)
    values = [r["quality_value"] for r in rows]
    assert board["n_trials"] == 2
    assert board["quality_value"] == pytest.approx(sum(values) / 2)
    assert board["quality_ci95"] is not None and board["quality_ci95"] > 0
