"""Fast checks of the flow's view of the DVC pipeline and of its decisions (no Prefect server, no training).

The real dvc.yaml is read through DVC's index: cells come in dependency order, every stage that writes
a row is marked measured (so a new axis cannot silently run two cells at once on one device), and the
report stage names a markdown out. Selection, retry classification and prefect.yaml are checked too.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from flows.benchmark import (
    FLOW_NAME,
    CellError,
    apply_profile,
    benchmark,
    device_key,
    exit_code_of,
    failure_reason,
)
from flows.dvc_graph import Cell, Pipeline, missing_deps, read_pipeline


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return read_pipeline(REPO)


def test_real_pipeline_cells_in_dependency_order(pipeline):
    names = pipeline.names
    assert names[0] == "check_params"  # upstream of every other cell: a bad params edit stops the run first
    assert all("check_params" in pipeline.ancestors([n]) for n in names[1:])
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for variant in params["matrix"]["pretrain"]:
        cell = pipeline[f"pretrain@{variant}"]
        assert (cell.stage, cell.item) == ("pretrain", variant)
        assert "prepare" in cell.upstream and f"results/pretrain/{variant}/row.json" == cell.row_path
    for i, cell in enumerate(pipeline.cells):
        assert all(names.index(u) < i for u in cell.upstream), f"{cell.name} runs before its upstream"


def test_every_stage_writing_rows_is_measured_and_the_report_is_published(pipeline):
    for cell in pipeline.cells:
        if cell.row_path:
            assert cell.measured, f"{cell.stage} writes rows: add `meta: {{measured: true}}` to it in dvc.yaml"
    reports = [c for c in pipeline.cells if c.report_path]
    assert [c.name for c in reports] == ["report"]
    report = reports[0]
    assert any(report.report_path == o or report.report_path.startswith(o + "/") for o in report.outs)
    assert not report.measured and not pipeline["prepare"].measured
    assert set(pipeline.ancestors(["report"])) >= {"prepare", "pretrain@mha"}


def _cell(name: str, upstream: tuple[str, ...] = (), **meta) -> Cell:
    stage, _, item = name.partition("@")
    return Cell(name=name, stage=stage, item=item or None, upstream=upstream, deps=(), outs=(), meta=meta)


TOY = Pipeline((
    _cell("prepare"),
    _cell("pretrain@mha", ("prepare",), measured=True),
    _cell("pretrain@gqa", ("prepare",), measured=True),
    _cell("finetune@lora-a", ("pretrain@mha",), measured=True),
    _cell("report", ("pretrain@mha", "pretrain@gqa", "finetune@lora-a"), report="reports/index.md"),
))


def test_select_by_stage_glob_upstream_and_report():
    assert [c.name for c in TOY.select()] == TOY.names
    assert [c.name for c in TOY.select(cells=["pretrain@g*"])] == ["prepare", "pretrain@gqa", "report"]
    assert [c.name for c in TOY.select(cells=["pretrain@g*"], upstream=False, report=False)] == ["pretrain@gqa"]
    assert [c.name for c in TOY.select(stages=["finetune"], report=False)] == [
        "prepare", "pretrain@mha", "finetune@lora-a"]
    assert [c.name for c in TOY.select(stages=["pretrain"], cells=["*@mha"], upstream=False)] == [
        "pretrain@mha", "report"]
    with pytest.raises(ValueError, match="unknown stage 'quantise'"):
        TOY.select(stages=["quantise"])
    with pytest.raises(ValueError, match="matches no cell"):
        TOY.select(cells=["pretrain@mla"])


def test_stage_exit_codes_decide_retries():
    from prefect.states import Failed

    from flows.benchmark import _retryable

    out = ("Running stage 'pretrain@bad':\n> python -m stages.pretrain --variant bad\n"
           "error: [variants] bad: num_attention_heads (2) must be divisible by num_key_value_heads (3)\n"
           "ERROR: failed to reproduce 'pretrain@bad': failed to run: python -m stages.pretrain "
           "--variant bad, exited with 2")
    assert exit_code_of(out) == 2 and exit_code_of("nothing ran") is None
    assert failure_reason(out).startswith("error: [variants] bad")
    assert failure_reason("Traceback ...\n  File x\nOSError: disk full\nERROR: failed to reproduce 'x'") == \
        "OSError: disk full"
    io = CellError("pretrain@mha", "stage exited with 1", exit_code=1, retryable=True)
    bad = CellError("pretrain@bad", "stage exited with 2", exit_code=2, retryable=False)
    assert _retryable(None, None, Failed(data=io)) is True
    assert _retryable(None, None, Failed(data=bad)) is False
    assert _retryable(None, None, Failed(data=RuntimeError("a bug in the flow"))) is False


def test_device_key_and_missing_deps(tmp_path, monkeypatch):
    monkeypatch.delenv("EFFICIENTLLM_DEVICE", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert device_key().startswith("device-") and device_key().endswith("-3")
    assert device_key("GPU Node 7/cuda:0") == "device-gpu-node-7-cuda-0"
    monkeypatch.setenv("EFFICIENTLLM_DEVICE", "a100-box")
    assert device_key() == "device-a100-box"
    (tmp_path / "data").mkdir()
    cell = Cell(name="x", stage="x", item=None, upstream=(), deps=("data", "models/pretrain/mha"), outs=())
    assert missing_deps(tmp_path, cell) == ["models/pretrain/mha"]


def test_profile_is_written_into_params_yaml_like_dvc_exp_run(tmp_path):
    import shutil

    from efficientllm.config import ConfigError

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "gpu.yaml").write_text(yaml.safe_dump({
        "description": "a bigger run", "env": {"HF_HUB_OFFLINE": "0"},
        "params": {"pretrain": {"steps": 5000, "device": "cuda"}},
        "sizes": {"small": {"model": {"num_hidden_layers": 4}}, "big": {"model": {"num_hidden_layers": 24}}},
        "default_size": "small"}))
    profile = apply_profile(tmp_path, "gpu", "big")
    assert profile.env == {"HF_HUB_OFFLINE": "0"}
    text = (tmp_path / "params.yaml").read_text()
    assert "# efficientllm default profile" in text  # DVC's writer keeps the comments
    params = yaml.safe_load(text)
    assert (params["pretrain"]["steps"], params["pretrain"]["device"], params["model"]["num_hidden_layers"]) == (
        5000, "cuda", 24)
    assert params["pretrain"]["lr"] == yaml.safe_load((REPO / "params.yaml").read_text())["pretrain"]["lr"]
    (tmp_path / "profiles" / "typo.yaml").write_text(yaml.safe_dump({"params": {"pretrain": {"stepz": 1}}}))
    with pytest.raises(ConfigError, match="stepz"):
        apply_profile(tmp_path, "typo")
    assert yaml.safe_load((tmp_path / "params.yaml").read_text()) == params  # nothing written


def test_prefect_yaml_deploys_this_flow():
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = set(inspect.signature(benchmark.fn).parameters)
    for dep in spec["deployments"]:
        path, _, func = dep["entrypoint"].partition(":")
        assert (REPO / path).exists(), dep["entrypoint"]
        assert set(dep.get("parameters", {})) <= names, dep["name"]
    gpu = next(d for d in spec["deployments"] if d["name"] == "gpu")
    assert gpu["work_pool"]["name"] == "efficientllm" and "pull" not in spec  # recorded by `prefect deploy`
    flow = load_flow_from_entrypoint(str(Path(REPO) / gpu["entrypoint"]))
    assert flow.name == FLOW_NAME
