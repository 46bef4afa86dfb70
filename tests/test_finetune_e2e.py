"""The finetune stages: in-process runs of the stage scripts on a tiny base (ok, skipped and failed rows, bad params),
and (slow) `dvc repro` of a reduced finetune matrix in a copy of the repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import BIN, run, save_arith_base, write_params

from efficientllm.records import COLUMNS

STAGE_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
             "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
             "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
TINY_FINETUNE = {"steps": 3, "measure_warmup_steps": 1, "eval_examples": 4, "gen_eval_examples": 2,
                 "max_new_tokens": 8, "batch_size": 2, "lora_r": 4}


@pytest.fixture
def stage_dir(tmp_path, monkeypatch) -> Path:
    """A working directory with a tiny saved base (`base/`), a params file and prepared arith data."""
    # Importing `stages` sets these with setdefault; setting them here first keeps them out of later tests' env.
    for key, value in STAGE_ENV.items():
        monkeypatch.setenv(key, value)
    from stages import prepare_sft

    monkeypatch.chdir(tmp_path)
    save_arith_base("base")
    params = {
        "sft": {"datasets": {"arith": {"source": "arith", "n_examples": 40}}, "max_eval_examples": 4},
        "finetune": {"base_model": "base", **TINY_FINETUNE},
        "measure": {"peak_calibration_n": 64, "cache_dir": str(tmp_path / "cache")},
    }
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert prepare_sft.main(["--dataset", "arith"]) == 0
    return tmp_path


def read_row(cell: str) -> dict:
    return json.loads(Path(f"results/finetune/{cell}/row.json").read_text())


def test_prepare_sft_writes_split_with_prompt_and_answer(stage_dir):
    evals = [json.loads(line) for line in Path("data/sft/arith/eval.jsonl").read_text().splitlines()]
    train = Path("data/sft/arith/train.jsonl").read_text().splitlines()
    assert len(evals) == 4 and len(train) == 36
    assert {"id", "instruction", "output", "answer", "prompt", "source"} <= set(evals[0])
    assert evals[0]["prompt"] == f"Question: {evals[0]['instruction']}\nAnswer:\n"
    stats = json.loads(Path("data/sft/arith/stats.json").read_text())
    assert stats["source"] == "arith" and stats["n_eval"] == 4


def test_finetune_stage_writes_an_ok_row_adapter_and_merged_model(stage_dir):
    from stages import finetune

    assert finetune.main(["--method", "lora", "--dataset", "arith"]) == 0
    row = read_row("lora-arith")
    assert list(row) == list(COLUMNS)
    assert row["status"] == "ok" and row["cell"] == "lora-arith" and row["technique"] == "lora"
    assert row["quality_metric"] == "eval_loss" and row["quality_value"] == row["eval_loss"] > 0
    assert row["steps"] == 2 and row["batch_size"] == 2
    for col in ("al_s", "amu_bytes", "pcu_ratio", "mfu", "st_samples_per_param_s", "aec_w", "peak_mem_bytes",
                "n_trainable_params", "train_loss_final"):
        assert row[col] is not None and row[col] > 0, col
    extra = json.loads(row["extra"]) if isinstance(row["extra"], str) else row["extra"]
    assert extra["adapter_size_bytes"] > 0 and extra["exact_match_n"] == 2 and 0 <= extra["exact_match"] <= 1
    assert extra["st_samples_per_trainable_param_s"] > row["st_samples_per_param_s"]
    assert Path("models/finetune/lora-arith/adapter/adapter_model.safetensors").exists()
    assert Path("models/finetune/lora-arith/merged/model.safetensors").exists()
    assert len(Path("results/finetune/lora-arith/loss.csv").read_text().splitlines()) == 1 + 3


def test_a_method_the_device_cannot_run_is_a_skipped_row(stage_dir, monkeypatch):
    import efficientllm.finetune as ft
    from stages import finetune

    monkeypatch.setattr(ft, "unsupported_reason", lambda method, device: "no 4-bit backend on this device")
    assert finetune.main(["--method", "qlora", "--dataset", "arith"]) == 0
    row = read_row("qlora-arith")
    assert row["status"] == "skipped" and "no 4-bit backend" in row["error"]
    assert row["technique"] == "qlora" and row["dataset"] == "arith"
    for sub in ("adapter", "merged"):
        assert json.loads(Path(f"models/finetune/qlora-arith/{sub}/FAILED.json").read_text())["status"] == "skipped"


def test_a_failed_base_gives_a_failed_row(stage_dir):
    from stages import finetune
    from stages.cells import write_failure_marker

    write_failure_marker(Path("base"), {"status": "failed", "error": "TrainingDiverged: NaN"})  # as pretrain does
    assert finetune.main(["--method", "full", "--dataset", "arith"]) == 0
    row = read_row("full-arith")
    assert row["status"] == "failed" and "base model's cell failed" in row["error"]


def test_bad_params_exit_2_and_write_nothing(stage_dir, capsys):
    from stages import finetune, prepare_sft, run

    with pytest.raises(SystemExit) as e:
        run(finetune.main, ["--method", "adapterx", "--dataset", "arith"])
    assert e.value.code == 2 and "unknown method 'adapterx'" in capsys.readouterr().err
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["sft"]["datasets"]["bad"] = {"source": "openo1", "path": "bad.jsonl"}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    Path("bad.jsonl").write_text('{"instruction": "x"}\n')
    with pytest.raises(SystemExit) as e:
        run(prepare_sft.main, ["--dataset", "bad"])
    assert e.value.code == 2 and "bad.jsonl line 1: missing field 'output'" in capsys.readouterr().err
    assert not Path("data/sft/bad").exists() and not Path("results/finetune").exists()


@pytest.mark.slow
def test_dvc_repro_of_a_reduced_finetune_matrix(tiny_repo):
    repo = tiny_repo
    write_params(repo, {"matrix": {"finetune_methods": ["qlora", "full"], "finetune_datasets": ["arith"]}})
    p = run([str(BIN / "dvc"), "repro", "finetune"], repo)  # the matrix group: every cell and what it needs
    for method in ("qlora", "full"):
        assert f"Running stage 'finetune@{method}-arith'" in p.stdout, p.stdout
        row = json.loads((repo / f"results/finetune/{method}-arith/row.json").read_text())
        assert row["status"] in ("ok", "skipped"), row["error"]
        if row["status"] == "ok":
            assert (repo / f"models/finetune/{method}-arith/merged/model.safetensors").exists()
            assert row["n_trainable_params"] <= row["n_params"]
    rows = {m: json.loads((repo / f"results/finetune/{m}-arith/row.json").read_text()) for m in ("qlora", "full")}
    assert rows["full"]["n_trainable_params"] == rows["full"]["n_params"]
    assert rows["qlora"]["batch_size"] == rows["full"]["batch_size"]  # full FT at the PEFT batch size
    if rows["qlora"]["status"] == "ok":  # bitsandbytes trains 4-bit layers on this machine's CPU
        assert rows["qlora"]["n_trainable_params"] < rows["full"]["n_trainable_params"]
        assert rows["qlora"]["dtype"] == "nf4"
    evals = (repo / "data/sft/arith/eval.jsonl").read_text().splitlines()
    assert len(evals) == 5 and "answer" in json.loads(evals[0])  # 48 records x 0.1 (TINY_OVERRIDES)
    p = run([str(BIN / "efficientllm"), "sql", "--format", "json",
             "SELECT cell, status FROM rows WHERE axis = 'finetune' ORDER BY cell"], repo)
    assert [r["cell"] for r in json.loads(p.stdout)] == ["full-arith", "qlora-arith"]
