"""End to end: `dvc repro` of the vision stages (prepare_vision -> vision_classifier -> pretrain_vision@mha ->
finetune_vision@lora) on the tiny params profile of conftest.py, then the rows through SQL and a no-op repro.

Slow (about a minute: four stage processes that import torch + diffusers): marked `slow`.

    python -m pytest tests/test_vision_e2e.py -q
"""

from __future__ import annotations

import json

import pytest
from conftest import BIN, run

from efficientllm.records import COLUMNS

pytestmark = pytest.mark.slow


def test_dvc_repro_of_the_vision_axis(tiny_repo):
    repo = tiny_repo
    run([str(BIN / "dvc"), "repro", "finetune_vision"], repo)

    stats = json.loads((repo / "data/vision/stats.json").read_text())
    assert stats["dataset"] == "digits" and stats["heldout_classes"] == [8, 9]
    assert (repo / "models/vision_classifier/model.safetensors").exists()

    row = json.loads((repo / "results/pretrain_vision/mha/row.json").read_text())
    assert list(row) == list(COLUMNS)
    assert row["status"] == "ok" and row["axis"] == "pretrain_vision" and row["quality_metric"] == "fd_digits"
    assert row["steps"] == 3 and row["kv_cache_bytes_per_token"] == 2 * 32 * 2 * 4  # MHA, width 32, 2 blocks, fp32
    for col in ("al_s", "amu_bytes", "tt_tokens_per_param_s", "st_samples_per_param_s", "energy_j", "mfu"):
        assert row[col] is not None and row[col] > 0, col
    assert (repo / "results/pretrain_vision/mha/samples/grid.png").exists()
    assert (repo / "models/pretrain_vision/mha/config.json").exists()

    ft = json.loads((repo / "results/finetune_vision/lora/row.json").read_text())
    assert ft["status"] == "ok" and ft["extra"]["classes"] == [8, 9] and 0 < ft["n_trainable_params"] < ft["n_params"]
    assert (repo / "models/finetune_vision/lora/adapter_config.json").exists()

    p = run([str(BIN / "dvc"), "repro", "finetune_vision"], repo)
    assert "up to date" in p.stdout, p.stdout

    p = run([str(BIN / "efficientllm"), "sql", "--format", "json",
             "SELECT axis, cell, status FROM rows ORDER BY axis, cell"], repo)
    assert json.loads(p.stdout) == [{"axis": "finetune_vision", "cell": "lora", "status": "ok"},
                                    {"axis": "pretrain_vision", "cell": "mha", "status": "ok"}]
