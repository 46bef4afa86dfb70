"""GPU readiness check: the tiny pipeline profile on one CUDA device, stage by stage, in one command.

Why: the GPU machines the study ran on are bare and offline (no dvc, prefect, duckdb, lm_eval, datasets; the
missing wheels travel in `.whl/`, see bench/gpu_wheels.sh). This runs the stage modules themselves, in the DAG
order of dvc.yaml, each in its own process with a timeout, and refuses the run loudly when what it measured cannot
be trusted:
- pretrain@mha / mqa / mla / nsa / moe in bf16, and pretrain@mha-torchrun (the mha recipe started by
  `torch.distributed.run --nproc_per_node 1`: the stage runs as one rank);
- prepare_sft@arith, finetune@lora / dora / qlora / full on arith, cloze;
- quantize@bf16 / fp16 / int8 / int4 on `models/import/smollm2` when that folder exists (the real SmolLM2-135M),
  else on `smollm2-shape`: a seeded random LlamaForCausalLM with exactly SmolLM2-135M's config (134.5M parameters)
  built here by `make-model`. Its quality columns mean nothing (random weights); latency, memory and energy are
  faithful to the real model's shape.

The params file is params.yaml with overrides (`gpu_params`): device, bf16 pretraining, the matrices above, step
counts, stage timeouts; it is checked with efficientllm.config before anything runs. Stages run with the work folder
as their working directory (data/, models/, results/ land there, never over the checkout's DVC outputs) and the
repository on PYTHONPATH.

Refused (exit 1, the cells named): a failed or timed-out step; a `skipped` cell we expect to run (QLoRA, int8 and
int4 on CUDA when bitsandbytes imports); an ok CUDA row whose energy_source is not `nvml`; a row that ran on another
device than asked; MFU > 1. Bad arguments or params exit 2.

Outputs in --out ($OUT; default .gpu_check/): rows.jsonl (every step's row), table.txt, log.txt (every step's
stdout and stderr), env.txt (nvidia-smi, library versions, the params file). Working data in --work (default: the
folder `<out>-work` beside it). The last line printed is `GPU CHECK: PASS` or `GPU CHECK: FAIL (<reasons>)`.

    bash bench/gpu_check.sh             # on the GPU machine (wheels from bench/gpu_wheels.sh, carried in .whl/)
    bash bench/gpu_check.sh --dry-run   # anywhere: every command, in order; runs nothing
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

PRETRAIN_VARIANTS = ("mha", "mqa", "mla", "nsa", "moe")
TORCHRUN_VARIANT = "mha-torchrun"
"""A copy of the mha recipe, started under torch.distributed.run with one process."""
FINETUNE_METHODS = ("lora", "dora", "qlora", "full")
FINETUNE_DATASET = "arith"
PRECISIONS = ("bf16", "fp16", "int8", "int4")
BNB_CELLS = ("finetune@qlora-arith", "quantize@int8", "quantize@int4")
"""Cells that need bitsandbytes: expected to run (not be skipped) on CUDA when it imports."""

IMPORTED_MODEL = Path("models/import/smollm2")
"""The real SmolLM2-135M (a future import stage's output, relative to the repository); used when present."""
SHAPE_MODEL_SLUG = "smollm2-shape"
SHAPE_MODEL_DIR = Path("models") / SHAPE_MODEL_SLUG
SMOLLM2_135M = {
    "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192, "rope_theta": 100000.0,
    "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "hidden_act": "silu", "initializer_range": 0.041666666666666664,
}
"""HuggingFaceTB/SmolLM2-135M's config.json (LlamaForCausalLM), the keys that set its shape."""
SMOLLM2_135M_PARAMS = 134_515_008
"""49152 x 576 tied embedding + 30 x (q, k, v, o, gate, up, down, 2 norms) + final norm."""

CELL_TIMEOUT_S = 120.0
BUDGET_S = 480.0
STAGE_TIMEOUT_MARGIN_S = 30.0
"""The stages' own training timeout is the cell timeout less this: a slow cell still writes its failed row."""
OUTPUT_FILES = ("rows.jsonl", "table.txt", "log.txt", "env.txt")
WORK_MARKER = ".gpu_check_work"
"""A file in the work folder that says this script made it (and may wipe it at the next run)."""
NOTE_CHARS = 70


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Step:
    name: str
    """`prepare`, `pretrain@mha`, `quantize@int4`, ... (the DVC cell names)."""
    argv: tuple[str, ...]
    row: str | None = None
    """The cell's row.json, relative to the work folder; None for a step that writes no row (data, model)."""


@dataclass(frozen=True)
class QuantModel:
    slug: str
    dir: str
    """As the quantize stage gets it: relative to the work folder, or absolute."""
    built: bool
    """True: a random model of the real one's shape, made by the `make-model` step."""


def quant_model(repo: Path = REPO) -> QuantModel:
    """The imported SmolLM2-135M when the repository has it, else the random model of its shape."""
    if (repo / IMPORTED_MODEL).is_dir():
        return QuantModel("smollm2", str(repo / IMPORTED_MODEL), built=False)
    return QuantModel(SHAPE_MODEL_SLUG, SHAPE_MODEL_DIR.as_posix(), built=True)


def plan(python: str, model: QuantModel, cells: Sequence[str] | None = None) -> list[Step]:
    """Every step, in DAG order (dvc.yaml): data, pretraining, fine-tuning data and cells, cloze, the quantize model
    and cells. `cells` keeps only those measured cells (plus pretrain@mha, the fine-tunes' base) and the data steps
    (the quantize model only with a quantize cell)."""
    py = (python,)
    steps = [Step("prepare", (*py, "-m", "stages.prepare"))]
    for v in PRETRAIN_VARIANTS:
        steps.append(Step(f"pretrain@{v}", (*py, "-m", "stages.pretrain", "--variant", v),
                          f"results/pretrain/{v}/row.json"))
    steps.append(Step(f"pretrain@{TORCHRUN_VARIANT}",
                      (*py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                       "-m", "stages.pretrain", "--variant", TORCHRUN_VARIANT),
                      f"results/pretrain/{TORCHRUN_VARIANT}/row.json"))
    steps.append(Step(f"prepare_sft@{FINETUNE_DATASET}",
                      (*py, "-m", "stages.prepare_sft", "--dataset", FINETUNE_DATASET)))
    for m in FINETUNE_METHODS:
        cell = f"{m}-{FINETUNE_DATASET}"
        steps.append(Step(f"finetune@{cell}",
                          (*py, "-m", "stages.finetune", "--method", m, "--dataset", FINETUNE_DATASET),
                          f"results/finetune/{cell}/row.json"))
    steps.append(Step("cloze", (*py, "-m", "stages.cloze")))
    if model.built:
        steps.append(Step(f"model@{model.slug}", (*py, str(REPO / "bench" / "gpu_check.py"), "make-model",
                                                  "--out", model.dir, "--tokenizer", "data/prepared/tokenizer")))
    for p in PRECISIONS:
        steps.append(Step(f"quantize@{p}", (*py, "-m", "stages.quantize", "--stage", "quantize", "--precision", p,
                                            "--model", model.slug, "--model-dir", model.dir),
                          f"results/quantize/{model.slug}-{p}/row.json"))
    if cells is None:
        return steps
    keep = set(cells)
    if any(c.startswith("finetune@") for c in keep):
        keep.add("pretrain@mha")
    quantizing = any(c.startswith("quantize@") for c in keep)
    return [s for s in steps if s.name in keep or (s.row is None and (quantizing or not s.name.startswith("model@")))]


def cell_names(model: QuantModel | None = None) -> list[str]:
    """The measured cells of the plan (what --cells may name)."""
    return [s.name for s in plan("python3", model or quant_model()) if s.row is not None]


# ----------------------------------------------------------------------------- the params file


def gpu_params(base: Mapping[str, Any], *, device: str, repo: Path = REPO, cell_timeout_s: float = CELL_TIMEOUT_S,
               empty_eval_tasks: bool = False) -> dict[str, Any]:
    """params.yaml turned into the GPU check's profile (a new mapping; `base` is untouched).

    empty_eval_tasks: no lm-eval task for the quantize cells (lm_eval is not importable on the machine).
    """
    p = copy.deepcopy(dict(base))
    p["matrix"] = {**p.get("matrix", {}), "pretrain": [*PRETRAIN_VARIANTS, TORCHRUN_VARIANT],
                   "finetune_methods": list(FINETUNE_METHODS), "finetune_datasets": [FINETUNE_DATASET],
                   "quantize": list(PRECISIONS), "quantize_sft": [], "quantize_hub": []}
    variants = dict(p.get("variants") or {})
    variants[TORCHRUN_VARIANT] = copy.deepcopy(variants["mha"])
    p["variants"] = variants
    stage_timeout = max(cell_timeout_s - STAGE_TIMEOUT_MARGIN_S, 10.0)
    p["pretrain"] = {**p["pretrain"], "device": device, "dtype": "bfloat16", "steps": 40, "lr_warmup_steps": 5,
                     "measure_warmup_steps": 5, "nproc_per_node": 1, "trials": 1, "timeout_s": stage_timeout}
    p["finetune"] = {**p["finetune"], "device": device, "steps": 16, "measure_warmup_steps": 4,
                     "gen_eval_examples": 8, "nproc_per_node": 1, "trials": 1, "timeout_s": stage_timeout,
                     "base_model": "models/pretrain/mha"}
    # memory_budget_mib: room for the 135M model's weights (~270 MB in bf16) and a few sequences' KV cache
    p["quantize"] = {**p["quantize"], "device": device, "memory_budget_mib": 512.0, "trials": 1}
    p["sft"] = {**p["sft"], "datasets": {FINETUNE_DATASET: p["sft"]["datasets"][FINETUNE_DATASET]}}
    evals = {**p.get("eval", {}), "tasks_dir": str(repo / "tasks"), "limit": 64}  # stages run in the work folder
    if empty_eval_tasks:
        evals["tasks"] = {stage: [] for stage in evals.get("tasks", {"quantize": []})}
    p["eval"] = evals
    return p


def check_params(params: Mapping[str, Any]) -> None:
    """Parse every section and every pretrained recipe with the pipeline's own loader; raises ConfigError."""
    from efficientllm.config import SECTIONS, load_section, load_variant

    where = "<gpu check params>"
    for name in SECTIONS:
        if name in params:
            load_section(where, name, params)
    for slug in params["matrix"]["pretrain"]:
        load_variant(where, slug, params)


def choose_eval_tasks(base: Mapping[str, Any], *, device: str, lm_eval_importable: bool,
                      cell_timeout_s: float = CELL_TIMEOUT_S) -> tuple[dict[str, Any], str | None]:
    """The params to run and a warning (None when all is well).

    With lm_eval importable the quantize cells score params.yaml's tasks. Without it they are asked for none; a
    library that refuses an empty task list keeps the tasks, and the warning says the quantize cells will fail.
    """
    if lm_eval_importable:
        return gpu_params(base, device=device, cell_timeout_s=cell_timeout_s), None
    params = gpu_params(base, device=device, cell_timeout_s=cell_timeout_s, empty_eval_tasks=True)
    try:
        from efficientllm.config import load_section

        load_section("<gpu check params>", "eval", params)
    except ValueError as e:  # ConfigError is a ValueError
        return (gpu_params(base, device=device, cell_timeout_s=cell_timeout_s),
                f"lm_eval is not importable and the library refuses an empty eval task list ({e}): the quantize "
                "cells will fail when efficientllm.evaluation.run_tasks imports lm_eval")
    return params, None


# ----------------------------------------------------------------------------- judging the rows


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def evaluate(records: Sequence[Mapping[str, Any]], *, device: str, expected: Sequence[str] = ()) -> list[str]:
    """Every reason to refuse the run, one line each, the step named first."""
    problems: list[str] = []
    want_cuda = device.startswith("cuda")
    for r in records:
        check = r.get("gpu_check", {})
        name = check.get("step", r.get("cell", "?"))
        status = r.get("status")
        if check.get("timed_out"):
            problems.append(f"{name}: timed out after {check.get('timeout_s', 0):.0f} s")
        elif status not in ("ok", "skipped"):
            problems.append(f"{name}: {status}: {_first_line(r.get('error'))}")
        elif check.get("exit_code", 0) != 0:
            problems.append(f"{name}: exited {check['exit_code']} after writing a {status} row")
        if status == "skipped" and name in expected:
            problems.append(f"{name}: skipped, but expected to run here: {_first_line(r.get('error'))}")
        if status != "ok" or check.get("kind") != "cell":
            continue
        row_device = str(r.get("device") or "")
        if want_cuda and not row_device.startswith("cuda"):
            problems.append(f"{name}: ran on {row_device or 'an unknown device'}, not {device}")
        if row_device.startswith("cuda") and r.get("energy_source") != "nvml":
            problems.append(f"{name}: energy_source {r.get('energy_source')!r} on {row_device} (want 'nvml')")
        mfu = _float(r.get("mfu"))
        if mfu is not None and mfu > 1:
            problems.append(f"{name}: MFU {mfu:.3g} > 1")
    return problems


def _first_line(text: Any) -> str:
    lines = str(text or "no error recorded").strip().splitlines()
    return lines[0] if lines else "no error recorded"


def verdict(problems: Sequence[str]) -> str:
    if not problems:
        return "GPU CHECK: PASS"
    names = dict.fromkeys(p.split(":", 1)[0] for p in problems)  # the steps, in order, once each
    return f"GPU CHECK: FAIL ({len(problems)} problem(s): {', '.join(names)})"


def render_table(records: Sequence[Mapping[str, Any]], notes: Sequence[str] = ()) -> str:
    """One fixed-width table: step, status, energy source, AL, MFU, peak memory, and a short note."""
    head = ("cell", "status", "energy_source", "AL s", "MFU", "peak MiB", "note")
    body = []
    for r in records:
        check = r.get("gpu_check", {})
        al, mfu, peak = _float(r.get("al_s")), _float(r.get("mfu")), _float(r.get("peak_mem_bytes"))
        status = "timeout" if check.get("timed_out") else str(r.get("status"))
        note = "" if status == "ok" else _first_line(r.get("error"))
        if status == "ok" and check.get("kind") == "cell":
            note = f"{r.get('device')}, {r.get('dtype')}"
        body.append((
            str(check.get("step", r.get("cell"))), status, str(r.get("energy_source") or "-"),
            f"{al:.4g}" if al is not None else "-", f"{mfu:.3g}" if mfu is not None else "-",
            f"{peak / 2**20:.1f}" if peak is not None else "-",
            note if len(note) <= NOTE_CHARS else note[:NOTE_CHARS - 3] + "...",
        ))
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in body]
    return "\n".join([*out, *notes]) + "\n"


# ----------------------------------------------------------------------------- running the steps


@dataclass
class Outcome:
    step: Step
    exit_code: int | None
    """None: not started (the run's budget was spent)."""
    wall_s: float = 0.0
    timed_out: bool = False
    timeout_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def run_step(step: Step, *, cwd: Path, env: Mapping[str, str], log: Any, timeout_s: float,
             stdout: Any = None) -> Outcome:
    """Run one step in its own process group; kill the whole group (torchrun's ranks too) at the timeout."""
    log.write(f"\n===== {step.name}: {shlex.join(step.argv)}  (cwd {cwd}, timeout {timeout_s:.0f} s)\n")
    log.flush()
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(step.argv), cwd=cwd, env=dict(env), stdout=stdout or log, stderr=log,
                            start_new_session=True)
    timed_out = False
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        code = proc.returncode
    wall = time.perf_counter() - t0
    log.write(f"===== {step.name}: exit {code}{' (timed out)' if timed_out else ''} after {wall:.1f} s\n")
    log.flush()
    return Outcome(step, code, wall, timed_out, timeout_s)


def records_of(outcomes: Sequence[Outcome], work: Path) -> list[dict[str, Any]]:
    """One record per step: the cell's row.json (with a `gpu_check` entry added), or a stand-in row when there is
    none (a data step, a cell that died without a row, a step never started)."""
    records = []
    for o in outcomes:
        kind = "cell" if o.step.row is not None else "data"
        check = {"step": o.step.name, "kind": kind, "command": shlex.join(o.step.argv), "exit_code": o.exit_code,
                 "wall_s": round(o.wall_s, 3), "timed_out": o.timed_out, "timeout_s": o.timeout_s, **o.extra}
        row: dict[str, Any] | None = None
        if o.step.row is not None and o.exit_code is not None:
            try:
                loaded = json.loads((work / o.step.row).read_text(encoding="utf-8"))
                row = loaded if isinstance(loaded, dict) else None
            except (OSError, ValueError):
                row = None
        if row is None:
            if o.exit_code is None:
                status, error = "failed", o.extra.get("reason", "not run")
            elif o.timed_out:
                status, error = "failed", f"timed out after {o.timeout_s:.0f} s (see log.txt)"
            elif kind == "cell":
                status, error = "failed", f"exited {o.exit_code} without writing {o.step.row} (see log.txt)"
            elif o.exit_code != 0:
                status, error = "failed", f"exited {o.exit_code} (see log.txt)"
            else:
                status, error = "ok", None
            row = {"cell": o.step.name, "status": status, "error": error}
        records.append({**row, "gpu_check": check})
    return records


def finish(outcomes: Sequence[Outcome], *, work: Path, out: Path, device: str, expected: Sequence[str] = (),
           notes: Sequence[str] = (), problems: Sequence[str] = ()) -> int:
    """Read the rows, judge them, write rows.jsonl and table.txt, print the table and the verdict; the exit code."""
    records = records_of(outcomes, work)
    found = [*problems, *evaluate(records, device=device, expected=expected)]
    table = render_table(records, notes)
    final = verdict(found)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in records), encoding="utf-8")
    (out / "table.txt").write_text(table + "\n" + "".join(f"REFUSED {p}\n" for p in found) + final + "\n",
                                   encoding="utf-8")
    print("\n" + table)
    for p in found:
        print(f"REFUSED {p}")
    print(final, flush=True)
    return 0 if not found else 1


# ----------------------------------------------------------------------------- sub-commands run as steps


def env_report(argv: Sequence[str]) -> int:
    """`env`: versions, nvidia-smi, and a last line `probe: {json}` the driver reads (CUDA, bitsandbytes, lm_eval).

    A step of its own so the driver never creates a CUDA context that would sit in every cell's memory readings.
    """
    import platform
    from importlib import metadata

    argparse.ArgumentParser(prog="gpu_check.py env").parse_args(list(argv))
    print(f"python: {sys.version.split()[0]} ({sys.executable}) on {platform.platform()}")
    for dist in ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "numpy", "nvidia-ml-py",
                 "psutil", "pyyaml", "bitsandbytes", "gguf", "lm_eval", "datasets", "dvc", "prefect", "duckdb"):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "not installed"
        print(f"{dist}: {version}")
    probe: dict[str, Any] = {"cuda": False, "bitsandbytes": None, "lm_eval": False}
    try:
        import torch

        probe["cuda"] = torch.cuda.is_available()
        print(f"torch cuda: {torch.version.cuda}, available: {probe['cuda']}, devices: {torch.cuda.device_count()}")
        if probe["cuda"]:
            cap = torch.cuda.get_device_capability(0)
            print(f"device 0: {torch.cuda.get_device_name(0)}, capability {cap[0]}.{cap[1]}, "
                  f"bf16: {torch.cuda.is_bf16_supported(including_emulation=False)}")
    except Exception as e:  # the report must still come back
        print(f"torch: {type(e).__name__}: {e}")
    for name, mods in (("bitsandbytes", ("bitsandbytes",)),
                       ("lm_eval", ("lm_eval", "lm_eval.evaluator", "lm_eval.models.huggingface", "lm_eval.tasks"))):
        try:
            for m in mods:
                __import__(m)
            probe[name] = metadata.version(name) if name == "bitsandbytes" else True
            print(f"import {name}: ok")
        except Exception as e:
            print(f"import {name}: {type(e).__name__}: {_first_line(e)}")
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            res = subprocess.run([smi], capture_output=True, text=True, timeout=30, check=False)
            print(res.stdout + res.stderr)
        except (OSError, subprocess.SubprocessError) as e:
            print(f"nvidia-smi: {e}")
    else:
        print("nvidia-smi: not found")
    print("probe: " + json.dumps(probe), flush=True)
    return 0


def make_model(argv: Sequence[str]) -> int:
    """`make-model`: a seeded random LlamaForCausalLM with SmolLM2-135M's exact config, saved in bf16 safetensors with
    the prepared tokenizer copied next to it (its ids, < 2048, fit the 49152-entry vocabulary)."""
    ap = argparse.ArgumentParser(prog="gpu_check.py make-model", description=make_model.__doc__)
    ap.add_argument("--out", required=True, help="model folder to write")
    ap.add_argument("--tokenizer", required=True, help="a save_pretrained tokenizer folder to copy")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(list(argv))

    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(smollm2_config(tokenizer)).to(torch.bfloat16)  # SmolLM2 ships bf16 weights
    n_params = sum(p.numel() for p in model.parameters())
    if n_params != SMOLLM2_135M_PARAMS:
        raise SystemExit(f"make-model: {n_params} parameters, SmolLM2-135M has {SMOLLM2_135M_PARAMS}")
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # safetensors
    for f in Path(args.tokenizer).iterdir():
        if f.is_file():
            shutil.copy2(f, tmp / f.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(json.dumps({"model": str(out), "n_params": n_params, "seed": args.seed, "dtype": "bfloat16",
                      "note": "random weights: quality is meaningless, shape (latency, memory, energy) is real"}))
    return 0


def smollm2_config(tokenizer: Any = None) -> Any:
    """SmolLM2-135M's LlamaConfig, with the special-token ids of `tokenizer` (the prepared one: eos 0, pad 1)."""
    from transformers import LlamaConfig

    ids = {}
    if tokenizer is not None:
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    return LlamaConfig(**SMOLLM2_135M, **ids)


# ----------------------------------------------------------------------------- the driver


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The driver's arguments; bad ones exit 2 (argparse) with the argument named."""
    ap = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="print every command, in order, and exit 0")
    ap.add_argument("--out", default=os.environ.get("OUT") or ".gpu_check",
                    help="where rows.jsonl, table.txt, log.txt, env.txt go (default: $OUT, else .gpu_check)")
    ap.add_argument("--work", default=None, help="working data: params, data/, models/, results/ "
                    "(default: <out>-work beside --out; never inside it)")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (a smoke run)")
    ap.add_argument("--cell-timeout-s", type=float, default=CELL_TIMEOUT_S, help="per step (default 120)")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S,
                    help="whole run (default 480); steps after it are not started and count as failed")
    ap.add_argument("--cells", default=None,
                    help="comma-separated measured cells to run (data steps always run; a finetune cell brings "
                         "pretrain@mha, its base); default: all")
    args = ap.parse_args(list(argv))
    if args.cell_timeout_s <= 0 or args.budget_s <= 0:
        ap.error("--cell-timeout-s and --budget-s must be > 0")
    if not (args.device == "cpu" or args.device == "cuda" or
            (args.device.startswith("cuda:") and args.device[5:].isdigit())):
        ap.error(f"--device {args.device!r}: expected cuda, cuda:N or cpu")
    args.out = Path(args.out).resolve()
    args.work_given = args.work is not None
    args.work = (Path(args.work) if args.work else args.out.with_name(args.out.name + "-work")).resolve()
    if args.work == args.out or args.out in args.work.parents or args.work in args.out.parents:
        ap.error(f"--work {args.work} and --out {args.out} must not contain each other")
    if args.work == REPO or args.work in REPO.parents:
        ap.error(f"--work {args.work} would wipe the repository")
    if args.cells is not None:
        wanted = [c.strip() for c in args.cells.split(",") if c.strip()]
        known = cell_names()
        unknown = [c for c in wanted if c not in known]
        if unknown or not wanted:
            ap.error(f"--cells: unknown cell(s) {', '.join(unknown) or '(none given)'} (known: {', '.join(known)})")
        args.cells = wanted
    return args


def child_env(work: Path, params_file: Path) -> dict[str, str]:
    """The stages' environment: the repository importable, the params file, unbuffered output, and git pointed at
    the checkout so the rows' provenance (git_sha, git_dirty) is the repository's, not the work folder's."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["EFFICIENTLLM_PARAMS"] = str(params_file)
    env["PYTHONUNBUFFERED"] = "1"
    git_dir = _git("rev-parse", "--absolute-git-dir")
    if git_dir:
        env["GIT_DIR"], env["GIT_WORK_TREE"] = git_dir, str(REPO)
    return env


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def dry_run(args: argparse.Namespace, steps: Sequence[Step], model: QuantModel) -> int:
    params_file = args.work / "params.yaml"
    print(f"gpu_check dry run: nothing is run. Device {args.device}; per-step timeout {args.cell_timeout_s:.0f} s, "
          f"whole run {args.budget_s:.0f} s.")
    print(f"outputs: {args.out}/{{{','.join(OUTPUT_FILES)}}}; work folder (wiped first): {args.work}")
    print(f"every step runs with cwd {args.work}, PYTHONPATH={REPO}, EFFICIENTLLM_PARAMS={params_file}")
    print(f" 0. env                    {sys.executable} {REPO / 'bench' / 'gpu_check.py'} env   (> env.txt)")
    for i, s in enumerate(steps, 1):
        print(f"{i:2d}. {s.name:<22} {shlex.join(s.argv)}")
    if model.built:
        print(f"quantize model: {model.slug}, random weights in SmolLM2-135M's shape ({SMOLLM2_135M_PARAMS:,} params; "
              f"no {IMPORTED_MODEL} in the repository)")
    else:
        print(f"quantize model: {model.dir} (imported SmolLM2-135M)")
    try:
        import yaml

        base = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
        params = gpu_params(base, device=args.device, cell_timeout_s=args.cell_timeout_s)
        check_params(params)
        print("params (params.yaml with these sections overridden; eval.tasks emptied at run time if lm_eval does "
              "not import and the library allows it), checked with efficientllm.config:")
        for name in ("matrix", "pretrain", "finetune", "quantize", "eval"):
            changed = {k: v for k, v in params[name].items() if base.get(name, {}).get(k) != v}
            print(f"  {name}: {json.dumps(changed)}")
        print(f"  variants.{TORCHRUN_VARIANT}: {json.dumps(params['variants'][TORCHRUN_VARIANT])}")
    except Exception as e:  # no yaml / efficientllm here: the command list above is still right
        print(f"params not checked here: {type(e).__name__}: {_first_line(e)}")
    return 0


def prepare_folders(out: Path, work: Path) -> None:
    """A clean work folder (ours: it has WORK_MARKER; anything else non-empty is refused), our outputs cleared."""
    if work.exists() and any(work.iterdir()):
        if not (work / WORK_MARKER).exists():
            raise SystemExit(f"error: --work {work} is not empty and was not made by gpu_check; choose another")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / WORK_MARKER).write_text("made by bench/gpu_check.py; wiped at its next run\n", encoding="utf-8")
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)


def check(args: argparse.Namespace) -> int:
    """The whole check: folders, the environment probe, the params file, every step, the verdict."""
    model = quant_model()
    steps = plan(sys.executable, model, args.cells)
    if args.dry_run:
        return dry_run(args, steps, model)
    import yaml

    out, work = args.out, args.work
    try:
        prepare_folders(out, work)
    except PermissionError:  # $OUT's parent is not ours to write: a temporary folder instead
        if args.work_given:
            raise
        work = Path(tempfile.mkdtemp(prefix="gpu_check_work-"))
        prepare_folders(out, work)
    t_start = time.perf_counter()
    params_file = work / "params.yaml"
    env = child_env(work, params_file)
    cuda = args.device.startswith("cuda")
    with open(out / "log.txt", "a", encoding="utf-8") as log:
        with open(out / "env.txt", "w", encoding="utf-8") as env_f:
            changed = len((_git("status", "--porcelain") or "").splitlines())
            env_f.write(f"gpu_check: {shlex.join(sys.argv)}\n"
                        f"repository: {REPO} at {_git('rev-parse', 'HEAD')} ({changed} changed paths)\n")
            env_f.flush()
            probe_step = Step("env", (sys.executable, str(REPO / "bench" / "gpu_check.py"), "env"))
            probe_out = run_step(probe_step, cwd=work, env=env, log=log, timeout_s=args.cell_timeout_s, stdout=env_f)
        probe = _read_probe(out / "env.txt")
        if cuda and not probe.get("cuda"):
            return finish([probe_out], work=work, out=out, device=args.device,
                          problems=[f"env: torch sees no CUDA device (probe exit {probe_out.exit_code}; env.txt)"])
        expected = list(BNB_CELLS) if cuda and probe.get("bitsandbytes") else []
        notes = [] if expected or not cuda else [
            "bitsandbytes does not import: qlora / int8 / int4 may be skipped (carry .whl: bench/gpu_wheels.sh)"]
        base = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
        params, warning = choose_eval_tasks(base, device=args.device, lm_eval_importable=bool(probe.get("lm_eval")),
                                            cell_timeout_s=args.cell_timeout_s)
        if warning:
            notes.append(f"warning: {warning}")
            print(f"WARNING: {warning}", flush=True)
        try:
            check_params(params)
        except ValueError as e:  # ConfigError: a bug of this script against the library's schema
            print(f"error: the GPU check's params are invalid: {e}\nGPU CHECK: FAIL (params)", file=sys.stderr)
            return 2
        params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        with open(out / "env.txt", "a", encoding="utf-8") as env_f:
            env_f.write(f"\n===== params file ({params_file})\n{params_file.read_text(encoding='utf-8')}")
        if model.built and any(s.name.startswith("quantize@") for s in steps):
            notes.append(f"quantize@*: {model.slug} has random weights in SmolLM2-135M's shape: its quality columns "
                         "are meaningless; latency, memory and energy are faithful to the shape")
        outcomes = run_steps(steps, work=work, env=env, log=log, cell_timeout_s=args.cell_timeout_s,
                             deadline=t_start + args.budget_s)
    notes.append(f"total {time.perf_counter() - t_start:.0f} s (budget {args.budget_s:.0f} s)")
    return finish(outcomes, work=work, out=out, device=args.device, expected=expected, notes=notes)


def run_steps(steps: Sequence[Step], *, work: Path, env: Mapping[str, str], log: Any, cell_timeout_s: float,
              deadline: float) -> list[Outcome]:
    """Each step in turn, one progress line each; a step that cannot start before `deadline` is not run."""
    outcomes: list[Outcome] = []
    for i, step in enumerate(steps, 1):
        left = deadline - time.perf_counter()
        prefix = f"[{i:2d}/{len(steps)}] {step.name}"
        if left < 5:
            outcomes.append(Outcome(step, None, extra={"reason": "not run: the run's time budget was spent"}))
            print(f"{prefix}: not run (budget spent)", flush=True)
            continue
        print(f"{prefix} ...", end=" ", flush=True)
        o = run_step(step, cwd=work, env=env, log=log, timeout_s=min(cell_timeout_s, left))
        outcomes.append(o)
        status = "timeout" if o.timed_out else records_of([o], work)[0]["status"]
        print(f"{status} (exit {o.exit_code}, {o.wall_s:.1f} s)", flush=True)
    return outcomes


def _read_probe(env_txt: Path) -> dict[str, Any]:
    for line in reversed(env_txt.read_text(encoding="utf-8", errors="replace").splitlines()):
        if line.startswith("probe: "):
            try:
                return json.loads(line[len("probe: "):])
            except ValueError:
                break
    return {}


COMMANDS = {"env": env_report, "make-model": make_model}
"""Sub-commands the driver runs as steps of their own (each a fresh process)."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return check(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
