"""Tests for bench/gpu_check.py, the GPU readiness check, on the CPU: its plan against dvc.yaml, its arguments and
their refusals, its params file (checked with the pipeline's config loader), its verdict on fake results trees, the
dry run of the shell wrapper, the step timeout, and the stages' import chains without the packages the bare GPU
machine lacks. The GPU run itself happens on the GPU machine (`bash bench/gpu_check.sh`).

OMP_WAIT_POLICY=PASSIVE python -m pytest tests/test_gpu_check.py -q
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO

spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
gc = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gc  # dataclasses look their module up while the class body runs
spec.loader.exec_module(gc)

SHAPE = gc.QuantModel(gc.SHAPE_MODEL_SLUG, gc.SHAPE_MODEL_DIR.as_posix(), built=True)
BARE_MISSING = ("dvc", "prefect", "duckdb", "lm_eval", "datasets")
"""Packages the GPU machine does not have (and that no wheel brings for the stages' own code)."""


# ----------------------------------------------------------------------------- the plan


def test_plan_runs_every_cell_in_dag_order():
    names = [s.name for s in gc.plan("python3", SHAPE)]
    assert names == [
        "prepare",
        "pretrain@mha", "pretrain@mqa", "pretrain@mla", "pretrain@nsa", "pretrain@moe", "pretrain@mha-torchrun",
        "prepare_sft@arith",
        "finetune@lora-arith", "finetune@dora-arith", "finetune@qlora-arith", "finetune@full-arith",
        "cloze", "model@smollm2-shape",
        "quantize@bf16", "quantize@fp16", "quantize@int8", "quantize@int4",
    ]
    steps = {s.name: s for s in gc.plan("python3", SHAPE)}
    assert steps["pretrain@mha-torchrun"].argv == (
        "python3", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
        "-m", "stages.pretrain", "--variant", "mha-torchrun")
    assert steps["quantize@int4"].row == "results/quantize/smollm2-shape-int4/row.json"
    assert steps["finetune@qlora-arith"].row == "results/finetune/qlora-arith/row.json"
    assert steps["prepare"].row is None and steps["model@smollm2-shape"].row is None


def test_plan_commands_are_dvc_yaml_commands():
    """Every stage step is dvc.yaml's cmd of that stage with the matrix item filled in (so the check runs what DVC
    runs); only the torchrun launcher and the model builder are the script's own."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    item = {"pretrain": "variant", "prepare_sft": "dataset", "quantize": "precision"}
    for step in gc.plan("python3", SHAPE):
        stage = step.name.split("@")[0]
        if step.name == "pretrain@mha-torchrun" or stage == "model":
            continue
        cmd = " ".join(stages[stage]["cmd"].split())
        value = step.name.partition("@")[2]
        if stage == "finetune":
            method, dataset = value.split("-")
            cmd = cmd.replace("${item.method}", method).replace("${item.dataset}", dataset)
        elif stage in item:
            cmd = cmd.replace(f"${{item.{item[stage]}}}", value)
        if stage == "quantize":  # the model of the GPU check in place of the pretrained base
            cmd = cmd.replace("--model base", "--model smollm2-shape").replace(
                "${quantize_model_dir}", "models/smollm2-shape")
        assert "${" not in cmd, cmd
        assert list(step.argv) == ["python3", *cmd.split()[1:]], step.name


def test_imported_model_replaces_the_random_one(tmp_path):
    assert gc.quant_model(tmp_path) == SHAPE
    (tmp_path / gc.IMPORTED_MODEL).mkdir(parents=True)
    model = gc.quant_model(tmp_path)
    assert model.slug == "smollm2" and not model.built and model.dir == str(tmp_path / gc.IMPORTED_MODEL)
    names = [s.name for s in gc.plan("python3", model)]
    assert not any(n.startswith("model@") for n in names)
    assert gc.plan("python3", model)[-1].argv[-4:] == ("--model", "smollm2", "--model-dir", model.dir)


def test_cells_keep_data_steps_and_the_finetune_base():
    names = [s.name for s in gc.plan("python3", SHAPE, ["finetune@qlora-arith", "quantize@int8"])]
    assert names == ["prepare", "pretrain@mha", "prepare_sft@arith", "finetune@qlora-arith", "cloze",
                     "model@smollm2-shape", "quantize@int8"]
    names = [s.name for s in gc.plan("python3", SHAPE, ["pretrain@nsa"])]  # no quantize cell: no model to build
    assert names == ["prepare", "pretrain@nsa", "prepare_sft@arith", "cloze"]


# ----------------------------------------------------------------------------- arguments


def test_defaults_follow_out(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    args = gc.parse_args([])
    assert args.out == tmp_path / "out" and args.work == tmp_path / "out-work"
    assert args.device == "cuda" and args.cell_timeout_s == 120 and not args.dry_run and args.cells is None
    monkeypatch.delenv("OUT")
    args = gc.parse_args(["--dry-run", "--cells", "pretrain@nsa, quantize@int4"])
    assert args.out == Path(".gpu_check").resolve() and args.work == Path(".gpu_check-work").resolve()
    assert args.dry_run and args.cells == ["pretrain@nsa", "quantize@int4"]


@pytest.mark.parametrize("argv, message", [
    (["--cell-timeout-s", "0"], "must be > 0"),
    (["--budget-s", "-5"], "must be > 0"),
    (["--device", "gpu"], "expected cuda, cuda:N or cpu"),
    (["--device", "cuda:x"], "expected cuda, cuda:N or cpu"),
    (["--cells", "pretrain@gqa"], "unknown cell(s) pretrain@gqa"),
    (["--cells", ","], "unknown cell(s) (none given)"),
    (["--out", "{tmp}/o", "--work", "{tmp}/o/w"], "must not contain each other"),
    (["--out", "{tmp}/o/x", "--work", "{tmp}/o"], "must not contain each other"),
    (["--out", "{tmp}/o", "--work", "{repo}"], "would wipe the repository"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_arguments_exit_2(argv, message, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, repo=REPO) for a in argv]
    with pytest.raises(SystemExit) as e:
        gc.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_work_folder_not_ours_is_refused(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "precious.txt").write_text("x")
    with pytest.raises(SystemExit, match="not made by gpu_check"):
        gc.prepare_folders(tmp_path / "out", work)
    assert (work / "precious.txt").exists()
    (work / "precious.txt").unlink()
    gc.prepare_folders(tmp_path / "out", work)  # empty: taken, marked, and wiped at the next run
    (work / "results").mkdir()
    (tmp_path / "out" / "table.txt").write_text("old")
    gc.prepare_folders(tmp_path / "out", work)
    assert sorted(p.name for p in work.iterdir()) == [gc.WORK_MARKER]
    assert not (tmp_path / "out" / "table.txt").exists()


# ----------------------------------------------------------------------------- the params file


def _base() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_gpu_params_are_valid_and_leave_params_yaml_alone():
    before = (REPO / "params.yaml").read_text()
    base = _base()
    params = gc.gpu_params(base, device="cuda")
    gc.check_params(params)  # every section and recipe through efficientllm.config: unknown keys would raise
    assert (REPO / "params.yaml").read_text() == before and base == _base()
    assert params["variants"]["mha-torchrun"] == base["variants"]["mha"]
    assert params["matrix"]["pretrain"] == ["mha", "mqa", "mla", "nsa", "moe", "mha-torchrun"]
    assert params["matrix"]["finetune_methods"] == ["lora", "dora", "qlora", "full"]
    assert params["matrix"]["quantize"] == ["bf16", "fp16", "int8", "int4"]
    assert {params[s]["device"] for s in ("pretrain", "finetune", "quantize")} == {"cuda"}
    assert params["pretrain"]["dtype"] == "bfloat16"
    assert params["pretrain"]["timeout_s"] == params["finetune"]["timeout_s"] == 90.0
    assert params["eval"]["tasks_dir"] == str(REPO / "tasks")  # the stages run in the work folder
    assert list(params["sft"]["datasets"]) == ["arith"]


def test_eval_tasks_follow_lm_eval():
    base = _base()
    params, warning = gc.choose_eval_tasks(base, device="cuda", lm_eval_importable=True)
    assert warning is None and params["eval"]["tasks"] == base["eval"]["tasks"]
    params, warning = gc.choose_eval_tasks(base, device="cuda", lm_eval_importable=False)
    gc.check_params(params)
    if warning is None:  # the library takes an empty task list: the quantize cells need no lm_eval
        assert params["eval"]["tasks"]["quantize"] == []
    else:  # it refuses one: tasks kept, and the run says why its quantize cells will fail
        assert params["eval"]["tasks"] == base["eval"]["tasks"]
        assert "lm_eval" in warning and "quantize" in warning


def test_smollm2_shape_has_the_real_models_parameter_count():
    from transformers import LlamaForCausalLM

    config = gc.smollm2_config()
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    # 134,515,008: SmolLM2-135M's count (49152 x 576 tied embedding + 30 x 3,540,096 per layer + 576 final norm)
    assert sum(p.numel() for p in model.parameters()) == gc.SMOLLM2_135M_PARAMS == 134_515_008
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert (config.head_dim, config.num_key_value_heads, config.rope_parameters["rope_theta"]) == (64, 3, 100000.0)


# ----------------------------------------------------------------------------- the verdict on a results tree


def _row(cell: str, **fields) -> dict:
    return {"cell": cell, "status": "ok", "device": "cuda:0", "dtype": "bfloat16", "energy_source": "nvml",
            "al_s": 0.012, "mfu": 0.05, "peak_mem_bytes": 300 * 2**20, "error": None, **fields}


def _tree(work: Path, changes: dict[str, dict] | None = None, missing: tuple[str, ...] = ()) -> list:
    """A fake work folder with a row for every cell of the plan (`changes`: fields per step name) and outcomes as if
    every step exited 0."""
    outcomes = []
    for step in gc.plan("python3", SHAPE):
        outcomes.append(gc.Outcome(step, 0, wall_s=1.0, timeout_s=120.0))
        if step.row is None or step.name in missing:
            continue
        path = work / step.row
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_row(step.name, **(changes or {}).get(step.name, {}))))
    return outcomes


def _finish(tmp_path, outcomes, expected=gc.BNB_CELLS, device="cuda"):
    out = tmp_path / "out"
    code = gc.finish(outcomes, work=tmp_path / "work", out=out, device=device, expected=expected,
                     notes=["a note"])
    table = (out / "table.txt").read_text()
    return code, table, [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]


def test_clean_set_passes(tmp_path, capsys):
    code, table, rows = _finish(tmp_path, _tree(tmp_path / "work"))
    assert code == 0
    assert table.rstrip().endswith("GPU CHECK: PASS")
    assert capsys.readouterr().out.rstrip().endswith("GPU CHECK: PASS")
    assert len(rows) == len(gc.plan("python3", SHAPE))
    assert rows[1]["gpu_check"]["step"] == "pretrain@mha" and rows[1]["gpu_check"]["kind"] == "cell"
    header = table.splitlines()[0].split()
    assert header[:4] == ["cell", "status", "energy_source", "AL"] and "MFU" in header and "peak" in header
    assert "pretrain@mha  " in table and "300.0" in table and "a note" in table


@pytest.mark.parametrize("changes, missing, expect", [
    ({"pretrain@mqa": {"energy_source": "estimate"}}, (), "pretrain@mqa: energy_source 'estimate' on cuda:0"),
    ({"quantize@fp16": {"energy_source": None}}, (), "quantize@fp16: energy_source None on cuda:0"),
    ({"finetune@dora-arith": {"status": "failed", "error": "RuntimeError: CUDA error\ntraceback"}}, (),
     "finetune@dora-arith: failed: RuntimeError: CUDA error"),
    ({"pretrain@nsa": {"mfu": 1.2}}, (), "pretrain@nsa: MFU 1.2 > 1"),
    ({"finetune@qlora-arith": {"status": "skipped", "error": "bitsandbytes is not importable"}}, (),
     "finetune@qlora-arith: skipped, but expected to run here: bitsandbytes is not importable"),
    ({"pretrain@moe": {"device": "cpu", "energy_source": "rapl"}}, (), "pretrain@moe: ran on cpu, not cuda"),
    ({}, ("quantize@int4",), "quantize@int4: failed: exited 0 without writing results/quantize/smollm2-shape-int4"),
])
def test_refused(tmp_path, changes, missing, expect):
    code, table, rows = _finish(tmp_path, _tree(tmp_path / "work", changes, missing))
    assert code == 1
    assert f"REFUSED {expect}" in table
    name = expect.split(":")[0]
    assert table.rstrip().splitlines()[-1].startswith("GPU CHECK: FAIL (") and name in table.splitlines()[-1]


def test_skipped_cell_not_expected_is_reported_not_refused(tmp_path):
    changes = {"quantize@int8": {"status": "skipped", "error": "bitsandbytes int8 on cuda: no kernel"}}
    code, table, rows = _finish(tmp_path, _tree(tmp_path / "work", changes), expected=())
    assert code == 0 and "skipped" in table and "no kernel" in table


def test_timeouts_failed_steps_and_unrun_steps_are_refused(tmp_path):
    outcomes = _tree(tmp_path / "work")
    outcomes[0] = gc.Outcome(outcomes[0].step, 1, wall_s=3.0)  # prepare exited 1
    nsa = next(i for i, o in enumerate(outcomes) if o.step.name == "pretrain@nsa")
    outcomes[nsa] = gc.Outcome(outcomes[nsa].step, -9, wall_s=120.0, timed_out=True, timeout_s=120.0)
    outcomes[-1] = gc.Outcome(outcomes[-1].step, None, extra={"reason": "not run: the run's time budget was spent"})
    code, table, rows = _finish(tmp_path, outcomes)
    assert code == 1
    assert "REFUSED prepare: failed: exited 1 (see log.txt)" in table
    assert "REFUSED pretrain@nsa: timed out after 120 s" in table
    assert "REFUSED quantize@int4: failed: not run: the run's time budget was spent" in table
    assert "GPU CHECK: FAIL (3 problem(s): prepare, pretrain@nsa, quantize@int4)" in table
    assert [r["status"] for r in rows if r["gpu_check"]["step"] == "quantize@int4"] == ["failed"]


def test_cpu_smoke_rows_need_no_nvml():
    rows = [{**_row("pretrain@mha", device="cpu", energy_source="estimate"),
             "gpu_check": {"step": "pretrain@mha", "kind": "cell", "exit_code": 0}}]
    assert gc.evaluate(rows, device="cpu") == []
    assert gc.evaluate(rows, device="cuda") == ["pretrain@mha: ran on cpu, not cuda"]


# ----------------------------------------------------------------------------- running


def test_step_timeout_kills_the_process_group(tmp_path):
    step = gc.Step("hang", (sys.executable, "-c", "import signal; print('waiting', flush=True); signal.pause()"))
    with open(tmp_path / "log.txt", "w") as log:
        o = gc.run_step(step, cwd=tmp_path, env=os.environ, log=log, timeout_s=2)
    assert o.timed_out and o.exit_code not in (0, None) and o.wall_s < 30
    text = (tmp_path / "log.txt").read_text()
    assert "===== hang: " in text and "waiting" in text and "(timed out)" in text


def test_dry_run_lists_every_command_and_runs_nothing(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    res = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    listed = [line.split()[1] for line in lines if line[:3].strip().rstrip(".").isdigit()]
    assert listed == ["env", *[s.name for s in gc.plan(sys.executable, gc.quant_model())]]
    assert "-m torch.distributed.run --standalone --nproc_per_node 1 -m stages.pretrain --variant mha-torchrun" \
        in res.stdout
    assert "checked with efficientllm.config" in res.stdout
    assert not (tmp_path / "out").exists() and not (tmp_path / "out-work").exists()


OURS = ("efficientllm", "stages")
STAGES_RUN = ("stages.prepare", "stages.prepare_sft", "stages.pretrain", "stages.finetune", "stages.cloze",
              "stages.quantize")


def _module_file(name: str) -> Path | None:
    path = REPO / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def reachable_imports(roots: tuple[str, ...]) -> tuple[set[str], list[tuple[str, str, bool]]]:
    """The repository's modules reachable from `roots` through any import, function-level (lazy) ones too, read
    from the source; and every import of another package among them as (module, imported, at_top_level)."""
    seen: set[str] = set()
    external: list[tuple[str, str, bool]] = []
    todo = list(roots)
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
                internal = [n for n in names if n.split(".")[0] in OURS]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, one level up per extra dot
                    parts = package.split(".")
                    base = ".".join([*parts[: len(parts) - node.level + 1], base]).strip(".")
                names = [base]
                internal = [base, *(f"{base}.{a.name}" for a in node.names)] if base.split(".")[0] in OURS else []
            else:
                continue
            todo.extend(internal)
            external.extend((name, n, id(node) in top) for n in names if n.split(".")[0] not in OURS)
    return seen, external


def test_stage_import_chains_need_none_of_the_missing_packages():
    """Every repository module the stages the check runs can reach (read from the source, lazy imports followed)
    imports without dvc, prefect, duckdb, lm_eval, datasets; none of those is imported at a module's top level.
    (The lazy ones: lm_eval in efficientllm.evaluation.run_tasks, which the quantize cells call, hence the lm_eval
    wheels of bench/gpu_wheels.sh; datasets for hub / FineWeb sources the check does not use.)"""
    modules, external = reachable_imports(STAGES_RUN)
    assert set(STAGES_RUN) <= modules and "efficientllm.inference" in modules
    top_level = [(m, t) for m, t, at_top in external if t.split(".")[0] in BARE_MISSING and at_top]
    assert top_level == []
    code = "\n".join([
        "import importlib, sys",
        *[f"sys.modules[{m!r}] = None" for m in BARE_MISSING],
        f"for m in {sorted(modules)!r}:",
        "    importlib.import_module(m)",
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {BARE_MISSING!r} and sys.modules[m] is not None)",
        "print('loaded:', bad)",
    ])
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "loaded: []" in res.stdout
