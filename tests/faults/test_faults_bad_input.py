"""Bad input, table-driven: every case runs a real stage (or the CLI) on one prepared tiny copy of the repo and must
give exactly one error line on stderr naming the key / file / line, a non-zero exit, and no new or changed file.

The stages run in this process (their `main` through `stages.run`, as `python -m stages.<name>` does) to keep
the suite fast; `test_one_case_as_a_subprocess` checks that the real command line behaves the same."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import TINY_OVERRIDES, copy_repo, run, write_params


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("badinput") / "repo")
    write_params(repo, TINY_OVERRIDES)
    for cmd in (["stages.prepare"], ["stages.pretrain", "--variant", "mha"],
                ["stages.prepare_sft", "--dataset", "arith"], ["stages.cloze"]):
        run([sys.executable, "-m", *cmd], repo)
    return repo


@dataclass
class Case:
    id: str
    stage: str
    """stages.<stage>, or `cli` for the efficientllm command."""
    argv: list[str]
    needle: str
    """Text the one error line must contain (the key, file or line it names)."""
    params: dict = field(default_factory=dict)
    """Overrides of params.yaml, written to a copy passed with --params (`{}`: the repo's own params)."""
    files: dict[str, bytes | Callable[[Path], None]] = field(default_factory=dict)
    """Input files to create under the case's scratch folder `IN/` (bytes, or a function writing the path)."""


def _truncated_parquet(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"instruction": ["q"] * 50, "output": ["a"] * 50}), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _parquet_wrong_columns(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": ["q"], "answer": ["a"]}), path)


def _config_only_model(path: Path) -> None:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "efficientlm", "hidden_size": 32}))


def _pickle_model(path: Path) -> None:
    import shutil

    import torch

    src = Path("models/pretrain/mha")  # the stage's cwd is the repo
    shutil.copytree(src, path, ignore=shutil.ignore_patterns("model.safetensors"))
    from safetensors.torch import load_file

    torch.save(load_file(src / "model.safetensors"), path / "pytorch_model.bin")


OPENO1 = {"source": "openo1", "path": "IN/data.jsonl"}
PRE = ["--variant", "mha"]
FT = ["--method", "lora", "--dataset", "arith"]
QZ = ["--stage", "quantize", "--precision", "bf16", "--model", "base"]
CASES = [
    # --- params: unknown keys and slugs, wrong types, out-of-range values
    Case("unknown-key", "pretrain", PRE, "[pretrain] unknown key 'batch_sizee'", {"pretrain": {"batch_sizee": 4}}),
    Case("unknown-recipe-key", "pretrain", ["--variant", "odd"], "[variants] odd",
         {"variants": {"odd": {"attention": "gqa", "bogus_knob": 1}}}),
    Case("unknown-variant", "pretrain", ["--variant", "nope"], "[variants] unknown variant 'nope'"),
    Case("unknown-method", "finetune", ["--method", "nope", "--dataset", "arith"], "unknown method 'nope'"),
    Case("unknown-precision", "quantize", [*QZ[:2], "--precision", "fp3", "--model", "base", "--model-dir",
                                            "models/pretrain/mha"], "unknown precision 'fp3'"),
    Case("unknown-sft-dataset", "prepare_sft", ["--dataset", "nope"], "[sft] datasets: unknown dataset 'nope'"),
    Case("unknown-source", "prepare", [], "[prepare] source", {"prepare": {"source": "nope"}}),
    Case("wrong-type-int", "pretrain", PRE, "[pretrain] batch_size", {"pretrain": {"batch_size": "eight"}}),
    Case("wrong-type-float", "pretrain", PRE, "[pretrain] memory_limit_mb", {"pretrain": {"memory_limit_mb": "lots"}}),
    Case("wrong-type-bool", "pretrain", PRE, "[pretrain] gradient_checkpointing",
         {"pretrain": {"gradient_checkpointing": "maybe"}}),
    Case("lr-zero", "pretrain", PRE, "[pretrain] lr", {"pretrain": {"lr": 0}}),
    Case("ratio-above-one", "pretrain", PRE, "[pretrain] min_lr_ratio", {"pretrain": {"min_lr_ratio": 1.5}}),
    Case("negative-checkpoint-every", "pretrain", PRE, "[pretrain] checkpoint_every_steps",
         {"pretrain": {"checkpoint_every_steps": -1}}),
    Case("zero-timeout", "pretrain", PRE, "[pretrain] timeout_s", {"pretrain": {"timeout_s": 0}}),
    Case("bad-dtype-choice", "pretrain", PRE, "[pretrain] dtype", {"pretrain": {"dtype": "float8"}}),
    Case("finetune-negative-memory", "finetune", FT, "[finetune] memory_limit_mb",
         {"finetune": {"memory_limit_mb": -5}}),
    Case("zero-trials", "quantize", [*QZ, "--model-dir", "models/pretrain/mha"], "[quantize] trials",
         {"quantize": {"trials": 0}}),
    Case("bad-trial-seeds", "finetune", FT, "[finetune] trial_seeds", {"finetune": {"trial_seeds": "random"}}),
    Case("trial-out-of-range", "pretrain", [*PRE, "--trial", "2"], "--trial 2: [pretrain] trials=1 allows 0..0"),
    # --- contradictory params
    Case("warmup-not-below-steps", "pretrain", PRE, "[pretrain] measure_warmup_steps",
         {"pretrain": {"measure_warmup_steps": 6, "steps": 6}}),
    Case("kv-heads-not-dividing", "pretrain", ["--variant", "bad-kv"], "[variants] bad-kv",
         {"variants": {"bad-kv": {"attention": "gqa", "num_key_value_heads": 3}}}),
    Case("topk-over-experts", "pretrain", ["--variant", "bad-moe"], "[variants] bad-moe",
         {"variants": {"bad-moe": {"mlp": "moe", "num_experts": 2, "num_experts_per_tok": 4}}}),
    Case("batch-vs-processes", "pretrain", PRE, "[pretrain] batch_size=4 must be a multiple of nproc_per_node=3",
         {"pretrain": {"nproc_per_node": 3}}),
    # --- missing / empty / malformed data files
    Case("missing-params-file", "pretrain", [*PRE, "--params", "IN/none.yaml"], "IN/none.yaml"),
    Case("malformed-params-yaml", "pretrain", [*PRE, "--params", "IN/p.yaml"], "IN/p.yaml is not valid YAML (line 2",
         files={"p.yaml": b"pretrain: {steps: [\n"}),
    Case("missing-corpus-file", "prepare", [], "IN/no-such.jsonl",
         {"prepare": {"source": "text_files", "source_paths": ["IN/no-such.jsonl"]}}),
    Case("empty-corpus-file", "prepare", [], "IN/empty.jsonl",
         {"prepare": {"source": "text_files", "source_paths": ["IN/empty.jsonl"]}}, {"empty.jsonl": b""}),
    Case("corpus-malformed-jsonl", "prepare", [], "IN/bad.jsonl:2",
         {"prepare": {"source": "text_files", "source_paths": ["IN/bad.jsonl"]}},
         {"bad.jsonl": b'{"text": "' + b"a" * 300 + b'"}\n{"text": \n'}),
    Case("corpus-non-utf8", "prepare", [], "IN/latin1.txt",
         {"prepare": {"source": "text_files", "source_paths": ["IN/latin1.txt"]}}, {"latin1.txt": b"caf\xe9 " * 100}),
    Case("sft-missing-file", "prepare_sft", ["--dataset", "ext"], "IN/data.jsonl",
         {"sft": {"datasets": {"ext": OPENO1}}}),
    Case("sft-malformed-jsonl-line", "prepare_sft", ["--dataset", "ext"], "IN/data.jsonl line 2",
         {"sft": {"datasets": {"ext": OPENO1}}},
         {"data.jsonl": b'{"instruction": "q", "output": "a"}\n{"instruction": "q", \n'}),
    Case("sft-non-utf8", "prepare_sft", ["--dataset", "ext"], "IN/data.jsonl",
         {"sft": {"datasets": {"ext": OPENO1}}}, {"data.jsonl": b'{"instruction": "caf\xe9", "output": "a"}\n'}),
    Case("sft-json-array-as-jsonl", "prepare_sft", ["--dataset", "ext"], "IN/data.jsonl",
         {"sft": {"datasets": {"ext": OPENO1}}}, {"data.jsonl": b'[{"instruction": "q", "output": "a"}]\n'}),
    Case("sft-wrong-columns", "prepare_sft", ["--dataset", "ext"], "instruction",
         {"sft": {"datasets": {"ext": OPENO1}}}, {"data.jsonl": b'{"question": "q", "answer": "a"}\n'}),
    Case("sft-empty-file", "prepare_sft", ["--dataset", "ext"], "IN/data.jsonl",
         {"sft": {"datasets": {"ext": OPENO1}}}, {"data.jsonl": b"\n"}),
    Case("sft-truncated-parquet", "prepare_sft", ["--dataset", "ext"], "IN/data.parquet",
         {"sft": {"datasets": {"ext": {"source": "openo1", "path": "IN/data.parquet"}}}},
         {"data.parquet": _truncated_parquet}),
    Case("sft-parquet-wrong-columns", "prepare_sft", ["--dataset", "ext"], "IN/data.parquet",
         {"sft": {"datasets": {"ext": {"source": "openo1", "path": "IN/data.parquet"}}}},
         {"data.parquet": _parquet_wrong_columns}),
    Case("finetune-missing-sft-data", "finetune", ["--method", "lora", "--dataset", "nope"],
         "data/sft/nope/train.jsonl"),
    # --- model directories: no weights, a pickle checkpoint (refused: weights load only from safetensors)
    Case("finetune-base-missing", "finetune", FT, "./IN/nowhere", {"finetune": {"base_model": "./IN/nowhere"}}),
    Case("finetune-base-without-weights", "finetune", FT, "IN/model has no weights",
         {"finetune": {"base_model": "IN/model"}}, {"model": _config_only_model}),
    Case("finetune-base-pickle-refused", "finetune", FT, "pickle weights (pytorch_model.bin), refused",
         {"finetune": {"base_model": "IN/model"}}, {"model": _pickle_model}),
    Case("quantize-model-without-weights", "quantize", [*QZ, "--model-dir", "IN/model"], "IN/model has no weights",
         files={"model": _config_only_model}),
    Case("quantize-model-pickle-refused", "quantize", [*QZ, "--model-dir", "IN/model"],
         "IN/model holds pickle weights (pytorch_model.bin), refused",
         files={"model": _pickle_model}),
    # --- rows and SQL
    Case("report-corrupt-row", "report", [], "results/pretrain/broken/row.json",
         files={"../results/pretrain/broken/row.json": b'{"schema_version": 1, "status": "ok", "n_params": '}),
    Case("sql-create", "cli", ["sql", "CREATE TABLE t AS SELECT 1"], "read-only"),
    Case("sql-delete", "cli", ["sql", "DELETE FROM rows"], "read-only"),
    Case("sql-copy-to-file", "cli", ["sql", "COPY (SELECT 1) TO 'IN/out.csv'"], "read-only"),
    Case("sql-attach", "cli", ["sql", "ATTACH 'IN/x.duckdb' AS x"], "read-only"),
    Case("sql-hidden-write", "cli", ["sql", "SELECT 1; DROP VIEW latest"], "read-only"),
]


def _snapshot(repo: Path) -> dict[str, str]:
    """Every file of the repo (less git, caches, the case's scratch folder) -> a hash of its bytes."""
    skip = (".git", ".cache", "IN", ".dvc")
    return {p.relative_to(repo).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in repo.rglob("*") if p.is_file() and p.relative_to(repo).parts[0] not in skip
            and "__pycache__" not in p.parts}


def call(repo: Path, stage: str, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if stage == "cli":
            from efficientllm.cli import main

            with pytest.raises(SystemExit) as e:
                raise SystemExit(main(argv))
        else:
            import stages

            mod = importlib.import_module(f"stages.{stage}")
            with pytest.raises(SystemExit) as e:
                stages.run(mod.main, argv)
    return e.value.code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(repo: Path, case: Case, monkeypatch) -> None:
    import shutil

    monkeypatch.chdir(repo)
    scratch = repo / "IN"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    created: list[Path] = []
    try:
        for name, content in case.files.items():
            path = scratch / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.resolve().is_relative_to(scratch.resolve()):
                created.append(path)
            content(path) if callable(content) else path.write_bytes(content)
        argv = list(case.argv)
        if case.params:
            params = yaml.safe_load((repo / "params.yaml").read_text())
            for section, values in case.params.items():
                if isinstance(values, dict) and isinstance(params.get(section), dict):
                    params[section] = {**params[section], **values}
                else:
                    params[section] = values
            (scratch / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            argv += ["--params", "IN/params.yaml"]
        before = _snapshot(repo)
        before = {k: v for k, v in before.items() if Path(k) not in {c.relative_to(repo) for c in created}}
        code, out, err = call(repo, case.stage, argv)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code not in (0, None), (code, out, err)
        assert len(lines) == 1, f"expected one error line, got:\n{err}"
        assert case.needle in lines[0], lines[0]
        after = {k: v for k, v in _snapshot(repo).items() if Path(k) not in {c.relative_to(repo) for c in created}}
        assert after == before, f"files changed: {set(after.items()) ^ set(before.items())}"
    finally:
        for path in created:
            path.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)


def test_one_case_as_a_subprocess(repo: Path) -> None:
    """The real command line: exit 2, one line, nothing written."""
    before = _snapshot(repo)
    p = run([sys.executable, "-m", "stages.pretrain", "--variant", "nope"], repo, check=False)
    assert p.returncode == 2 and [ln for ln in p.stderr.splitlines() if ln.strip()] == [
        "error: [variants] unknown variant 'nope' (defined: " + p.stderr.split("(defined: ", 1)[1].strip()]
    assert _snapshot(repo) == before


def test_at_least_30_cases() -> None:
    assert len(CASES) >= 30
