"""Prefect flow `efficientllm-benchmark`: the DVC pipeline, one Prefect task per stale cell, in the UI.

DVC defines the work and is the cache of record; this flow only schedules it and shows it:
- it reads the cells and their dependency order from DVC (flows.dvc_graph), never from a list here;
- each cell is one task run named `stage@cell` that runs `dvc repro --single-item <cell>`; a cell
  `dvc status` calls up to date is reported `Skipped` and not run. Tasks never cache on their own
  (NO_CACHE, no persisted results), so Prefect and DVC cannot disagree;
- every cell that runs on this machine holds a Prefect global concurrency slot named after the
  device (`device-<host>-<CUDA_VISIBLE_DEVICES>`, limit 1), so nothing else runs on a device while
  a measured cell (`meta: {measured: true}` in dvc.yaml) runs there: not another measured cell, and
  not an unmeasured one (prepare_sft, cloze, report), which would take cores, memory bandwidth and
  energy from the measurement;
- a stage exit code of 1 (I/O, a download) is retried; anything else fails the cell for good. A
  failed cell that wrote no row gets a `status='failed'` row with its error tail (DVC still sees
  the cell as stale: nothing is committed to dvc.lock), cells that need its outputs are `Blocked`,
  every other cell goes on, and the flow's final state names the failures;
- the report (the stage with `meta: {report: reports/index.md}`) is brought up to date on every
  flow run and published as the markdown artifact `efficientllm-report`, its axis pages as
  `efficientllm-report-<axis>` (figures embedded, links that open in the UI: flows.artifacts); every
  cell's key figures are logged as it finishes and collected in the table artifact `efficientllm-cells`,
  and the progress artifact `efficientllm-progress` counts the cells done.

Parameters choose *what* runs (stages, a glob over cell names, a params profile), never numbers.
With `remote=True` each cell pulls what it needs from the project's default DVC remote
(`dvc repro --pull`, which restores cells other machines ran from DVC's run cache) and pushes its
outputs and run-cache entry afterwards; with `dispatch=<flow>/<deployment>` every stale measured cell
becomes its own flow run of that deployment, so the workers of a work pool share the sweep (prefect.yaml).

    make flow                                         # whole pipeline, Prefect's ephemeral local API
    python -m flows.benchmark --cells 'pretrain@gqa*' # some cells (plus stale upstream + the report)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import re
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.settings import PREFECT_UI_URL
from prefect.states import Completed, Failed, State

from flows.artifacts import publish_report
from flows.dvc_graph import Cell, DvcError, Pipeline, dvc_command, dvc_env, missing_deps, read_pipeline, stale

FLOW_NAME = "efficientllm-benchmark"
REPORT_ARTIFACT_KEY = "efficientllm-report"
CELLS_ARTIFACT_KEY = "efficientllm-cells"
PROGRESS_ARTIFACT_KEY = "efficientllm-progress"

RETRYABLE_EXIT_CODES = frozenset({1})
"""Stage exit codes worth a retry (stages/pretrain.py: 1 = I/O error, 2 = bad input, 0 = row written)."""

RETRY_DELAY_S = 10
"""Seconds between retries of a retryable failure."""

ERROR_TAIL_LINES = 40
"""Lines of a failed cell's output kept in its row and task state."""

KEY_FIGURES = ("status", "quality_metric", "quality_value", "al_s", "tokens_per_s", "it_tokens_per_s",
               "mfu", "peak_mem_bytes", "energy_j", "energy_source", "model_size_bytes")
"""Row columns logged per cell and shown in the cells table artifact."""

# Task run state names (all COMPLETED or FAILED state types), read back by dispatching parents.
RAN, RESTORED, SKIPPED, BLOCKED = "Completed", "Restored", "Skipped", "Blocked"
FAILED_ROW, FAILED = "FailedRow", "Failed"  # the stage wrote a failed row (committed) / the stage crashed
OUTCOMES = {RAN: "ran", RESTORED: "restored", SKIPPED: "skipped", FAILED_ROW: "failed", FAILED: "failed",
            BLOCKED: "blocked"}


class CellError(Exception):
    """A cell whose `dvc repro` (or a remote transfer) failed; `retryable` says whether to try again."""

    def __init__(self, cell: str, message: str, *, exit_code: int | None = None, retryable: bool = False,
                 output_tail: str = "") -> None:
        super().__init__(f"{cell}: {message}")
        self.cell = cell
        self.exit_code = exit_code
        self.retryable = retryable
        self.output_tail = output_tail

    def error_text(self) -> str:
        """`message` on the first line, then the end of the command's output (bounded)."""
        return f"{self}\n{self.output_tail}".strip()


@dataclass(frozen=True)
class RunContext:
    """What every cell task of one flow run shares."""

    root: str
    """The DVC project root."""
    remote: bool = False
    """Pull from / push to the default DVC remote around each cell."""
    device_limit: str | None = None
    """Name of the global concurrency limit every cell run on this machine holds (None: no limit)."""
    dispatch: str | None = None
    """`<flow>/<deployment>` that measured cells are sent to."""
    dispatch_timeout_s: float | None = None
    """How long to wait for a dispatched cell (None: as long as it takes)."""
    child_parameters: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Flow parameters of a dispatched cell's run (its `cells` added per cell)."""
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Extra environment of the DVC commands (a profile's `env`)."""


def device_key(device: str | None = None) -> str:
    """Name of the concurrency limit that guards one device: `device-<host>-<visible GPUs or 'all'>`.

    Set EFFICIENTLLM_DEVICE (or the flow's `device`) when the host name does not identify the device,
    e.g. two workers on one GPU node, each with its own CUDA_VISIBLE_DEVICES, get two limits.
    """
    key = device or os.environ.get("EFFICIENTLLM_DEVICE") or (
        f"{socket.gethostname()}-{os.environ.get('CUDA_VISIBLE_DEVICES') or 'all'}")
    return "device-" + re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")


def ensure_device_limit(name: str) -> None:
    """Create the global concurrency limit `name` with one slot unless it exists (then it is kept:
    an operator may have set it otherwise). Prefect 3 no longer creates limits on first use."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            pass


def exit_code_of(output: str) -> int | None:
    """The stage command's exit code from `dvc repro`'s error line (`..., exited with 2`)."""
    m = re.findall(r"exited with (-?\d+)", output)
    return int(m[-1]) if m else None


# DVC's hints after a repro (git add dvc.lock, autostage, dvc push): true, and noise in a run log.
_DVC_HINTS = re.compile(r"^\s*(To track the changes with git|git add |To enable auto staging|dvc config core\.autostage"
                        r"|Use `dvc push`)")


def _dvc(ctx: RunContext, args: Sequence[str], cell: str, log: Any, stream: bool) -> tuple[int, str]:
    """Run one DVC command; stream its lines into the run log; return (exit code, output tail)."""
    tail: collections.deque[str] = collections.deque(maxlen=400)
    with subprocess.Popen(dvc_command(*args), cwd=ctx.root, env={**dvc_env(), **ctx.env}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as p:
        assert p.stdout is not None
        for line in p.stdout:
            line = line.rstrip()
            if not line or _DVC_HINTS.match(line):
                continue
            tail.append(line)
            if stream:
                log.info("%s | %s", cell, line)
    return p.returncode, "\n".join(tail)


def failure_reason(output: str) -> str | None:
    """The stage's own one-line error (`error: ...` from stages.run, or a traceback's last line)."""
    for line in reversed(output.splitlines()):
        s = line.strip()
        if s.startswith("ERROR: failed to reproduce"):  # DVC's summary; the stage's line is above
            continue
        if re.match(r"^(error: |ERROR: |[A-Za-z_.]*(Error|Exception)\b)", s):
            return s
    return None


def _push(ctx: RunContext, cell: Cell, log: Any) -> None:
    """Send the cell's outs and DVC's run-cache entries to the default remote (I/O: retryable)."""
    code, out = _dvc(ctx, ["push", "--run-cache", cell.name], cell.name, log, stream=False)
    if code != 0:
        raise CellError(cell.name, "dvc push failed", retryable=True,
                        output_tail="\n".join(out.splitlines()[-ERROR_TAIL_LINES:]))


def key_figures(row: dict[str, Any] | None) -> dict[str, Any]:
    """The non-null key figures of a row (the columns in KEY_FIGURES)."""
    return {k: row[k] for k in KEY_FIGURES if row and row.get(k) is not None}


def _format_figures(fig: dict[str, Any]) -> str:
    parts = []
    for k, v in fig.items():
        if k in ("status", "quality_metric", "energy_source"):
            continue
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    if "quality_metric" in fig and "quality_value" in fig:
        parts = [f"{fig['quality_metric']}={fig['quality_value']:.4g}"] + [p for p in parts if
                                                                         not p.startswith("quality_value=")]
    if "energy_source" in fig:
        parts.append(f"({fig['energy_source']})")
    return " ".join(parts)


def read_row_file(root: Path, cell: Cell) -> dict[str, Any] | None:
    """The cell's row as written (None when it has no row file or the file is unreadable)."""
    if not cell.row_path:
        return None
    try:
        return json.loads((root / cell.row_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _outcome(root: Path, cell: Cell, state_name: str, error: str | None, t0: float,
             row: dict[str, Any] | None = None) -> dict[str, Any]:
    """The task result of a cell; `row` when the caller has read it already (else it is read here)."""
    row = read_row_file(root, cell) if row is None else row
    return {"cell": cell.name, "outcome": OUTCOMES[state_name], "state": state_name,
            "figures": key_figures(row), "error": error, "duration_s": round(time.perf_counter() - t0, 3)}


def write_cell_row(root: Path, cell: Cell, status: str, error: str, **extra: Any) -> Path | None:
    """Write a `failed` / `skipped` row for a cell that produced none, at the cell's own row path.

    Only the row file is written, nothing is committed to dvc.lock, so DVC keeps the cell stale
    and the next run retries it; the report stage (which reads every row file) lists it.
    """
    if not cell.row_path:
        return None
    from efficientllm.records import CellId, write_row

    row = CellId(axis=cell.axis, stage=cell.stage, cell=cell.item or cell.name, technique=cell.item).failed_row(
        error, status=status, cwd=root, extra={"written_by": "flows.benchmark", "dvc_cell": cell.name, **extra})
    return write_row(root / cell.row_path, row)


def _retryable(task: Any, task_run: Any, state: State) -> bool:
    """Retry only a CellError that says it is retryable (an I/O exit code, a remote transfer)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # the state carries no readable result
        return False
    return isinstance(exc, CellError) and exc.retryable


def _child_cell_state(flow_run_id: Any, cell: str) -> tuple[str | None, str | None]:
    """(state name, message) of the task run `cell` inside a dispatched child flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        # limit and sort explicit: the 3.8.8 client sends null for them, which its server rejects (422)
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                     task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[cell])),
                                     sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=5)
    if not runs or runs[0].state is None:
        return None, None
    return runs[0].state.name, runs[0].state.message


@task(cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=RETRY_DELAY_S,
      retry_condition_fn=_retryable)
def run_cell(cell: Cell, known_stale: bool | None, ctx: RunContext) -> State:
    """Bring one cell up to date through DVC; the returned state's name says how (see OUTCOMES)."""
    from prefect.runtime import task_run

    log = get_run_logger()
    repo = Path(ctx.root)
    t0 = time.perf_counter()
    # Status is re-read when an upstream cell ran in this flow run, and on every retry.
    if known_stale is None or task_run.run_count > 1:
        known_stale = cell.name in stale(repo, [cell.name])
    if not known_stale:
        if ctx.remote:
            _push(ctx, cell, log)
        outcome = _outcome(repo, cell, SKIPPED, None, t0)
        log.info("%s: up to date in dvc.lock, skipped %s", cell.name, _format_figures(outcome["figures"]))
        return Completed(name=SKIPPED, message=f"{cell.name}: up to date (DVC)", data=outcome)

    if ctx.dispatch and cell.measured:
        return _dispatch_cell(cell, ctx, log, t0)

    args = ["repro", "--single-item", *(["--pull"] if ctx.remote else []), cell.name]
    if ctx.device_limit:  # every local cell: nothing may run beside a measured one
        from prefect.concurrency.sync import concurrency

        log.info("%s: waiting for the device slot %s", cell.name, ctx.device_limit)
        with concurrency(ctx.device_limit, occupy=1, strict=True):
            slot = [time.time()]
            code, output = _dvc(ctx, args, cell.name, log, stream=True)
            slot.append(time.time())
    else:
        slot = None
        code, output = _dvc(ctx, args, cell.name, log, stream=True)
    if code != 0:
        exit_code = exit_code_of(output)
        why = f"stage exited with {exit_code}" if exit_code is not None else f"dvc repro exited with {code}"
        reason = failure_reason(output)
        why = f"{why}: {reason}" if reason else why
        raise CellError(cell.name, why, exit_code=exit_code, retryable=exit_code in RETRYABLE_EXIT_CODES,
                        output_tail="\n".join(output.splitlines()[-ERROR_TAIL_LINES:]))
    if ctx.remote:
        _push(ctx, cell, log)
    how = RAN if "Running stage" in output else RESTORED  # DVC's own words for running vs run-cache/pull
    return _finish(repo, cell, how, log, t0, device_slot=slot)


def _finish(repo: Path, cell: Cell, how: str, log: Any, t0: float, device_slot: list[float] | None = None) -> State:
    """The final state of a cell DVC brought up to date, from its row."""
    row = read_row_file(repo, cell)
    if row is not None and row.get("status") == "failed":
        first = (row.get("error") or "").splitlines()[:1]
        message = f"{cell.name}: the stage recorded a failed row: {first[0] if first else 'no error text'}"
        log.error(message)
        outcome = _outcome(repo, cell, FAILED_ROW, message, t0, row)
        return Failed(name=FAILED_ROW, message=message, data={**outcome, "device_slot": device_slot})
    outcome = {**_outcome(repo, cell, how, None, t0, row), "device_slot": device_slot}
    log.info("%s: %s in %.1f s %s", cell.name, OUTCOMES[how], outcome["duration_s"],
             _format_figures(outcome["figures"]))
    return Completed(name=how, message=f"{cell.name}: {OUTCOMES[how]}", data=outcome)


def _dispatch_cell(cell: Cell, ctx: RunContext, log: Any, t0: float) -> State:
    """Run the cell as its own flow run of the `ctx.dispatch` deployment (any worker of its pool), then
    restore it here from the DVC remote the child pushed to."""
    from prefect.deployments import run_deployment

    assert ctx.dispatch is not None
    child = run_deployment(ctx.dispatch, parameters={**ctx.child_parameters, "cells": [cell.name]},
                           flow_run_name=cell.name, poll_interval=2, timeout=ctx.dispatch_timeout_s)
    if child.state is None or not child.state.is_final():
        raise CellError(cell.name, f"dispatched run {child.name} did not finish within {ctx.dispatch_timeout_s} s "
                        f"(is a worker polling the deployment's work pool?)", retryable=False)
    name, message = _child_cell_state(child.id, cell.name)
    log.info("%s: child flow run %s ended %s (cell: %s)", cell.name, child.name,
             child.state.name if child.state else "?", name)
    if name not in (RAN, RESTORED, SKIPPED, FAILED_ROW):
        raise CellError(cell.name, f"dispatched run {child.name} failed", retryable=False,
                        output_tail=message or (child.state.message if child.state else "") or "")
    # The child pushed outs + run cache: `repro --pull` restores them here (and updates dvc.lock).
    args = ["repro", "--single-item", "--pull", cell.name]
    code, output = _dvc(ctx, args, cell.name, log, stream=False)
    if code != 0:
        raise CellError(cell.name, "restoring the dispatched cell from the DVC remote failed", retryable=True,
                        output_tail="\n".join(output.splitlines()[-ERROR_TAIL_LINES:]))
    return _finish(Path(ctx.root), cell, RAN if name == RAN else RESTORED, log, t0)


def apply_profile(root: Path, name: str, size: str | None = None) -> Any:
    """Write a profile (profiles/<name>.yaml, see efficientllm.pipeline.profiles) into params.yaml, as the
    `dvc exp run -S` that `efficientllm profile` runs would: the same `++section.key=value` overrides,
    applied by DVC's own writer (comments kept), after the merged params parse. DVC then sees what
    changed and re-runs exactly that. Returns the Profile (its `env` is for the stage commands)."""
    from dvc.utils.hydra import apply_overrides

    from efficientllm.config import read_params
    from efficientllm.pipeline.profiles import hydra_overrides, load_profile, merged_params

    profile = load_profile(name, root)
    overrides = profile.overrides(size)
    merged_params(read_params(root / "params.yaml"), overrides)  # a typo fails here, before any write
    apply_overrides(root / "params.yaml", hydra_overrides(overrides))
    return profile


def _summary(cells: list[Cell], outcomes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    counts = {k: 0 for k in ("ran", "restored", "skipped", "failed", "blocked")}
    for o in outcomes.values():
        counts[o["outcome"]] += 1
    failed = [n for n, o in outcomes.items() if o["outcome"] == "failed"]
    blocked = [n for n, o in outcomes.items() if o["outcome"] == "blocked"]
    parts = [f"{len(cells)} cells: {counts['ran']} ran, {counts['skipped']} skipped, {counts['failed']} failed"]
    if counts["restored"]:
        parts.append(f"{counts['restored']} restored from the DVC cache")
    if counts["blocked"]:
        parts.append(f"{counts['blocked']} blocked ({', '.join(blocked)})")
    message = ", ".join(parts) + (f"; failed: {', '.join(failed)}" if failed else "")
    return {**counts, "cells": len(cells), "failed_cells": failed, "blocked_cells": blocked, "message": message,
            "outcomes": [outcomes[c.name] for c in cells if c.name in outcomes]}


def _publish(root: Path, pipeline_cells: list[Cell], summary: dict[str, Any]) -> None:
    """The report and a table of this run's cells, as artifacts of the flow run.

    The report's pages are published by flows.artifacts: figures embedded as data URIs, links to the axis
    pages' own artifacts (or plain text), so the UI shows what the files show.
    """
    report = next((c.report_path for c in pipeline_cells if c.report_path), None)
    footer = f"\n\n---\nFlow run: {summary['message']}\n"
    description = f"{report}: the leaderboard after this flow run"
    if report and (root / report).exists():
        publish_report(root / report, REPORT_ARTIFACT_KEY, PREFECT_UI_URL.value(), footer=footer,
                       description=description)
    else:
        text = f"# efficientllm\n\nNo report yet ({report or 'no report stage in dvc.yaml'} not built)."
        create_markdown_artifact(markdown=text + footer, key=REPORT_ARTIFACT_KEY, description=description)
    table = [{"cell": o["cell"], "outcome": o["outcome"], **o["figures"],
              "error": (o["error"] or "").splitlines()[0] if o["error"] else None,
              "duration_s": o["duration_s"]} for o in summary["outcomes"]]
    if table:
        create_table_artifact(table=table, key=CELLS_ARTIFACT_KEY, description=summary["message"])


def _run_cells(pipeline: Pipeline, selected: list[Cell], ctx: RunContext, initially_stale: set[str], retries: int,
               progress: Any) -> dict[str, dict[str, Any]]:
    """Submit every selected cell once its selected upstream cells are done, in dependency order; returns each
    cell's outcome. A cell whose upstream failed (or whose inputs are missing) is blocked, the others go on."""
    log = get_run_logger()
    root = Path(ctx.root)
    outcomes: dict[str, dict[str, Any]] = {}
    done: queue.Queue = queue.Queue()
    futures: dict[str, Any] = {}
    submitted: dict[str, float] = {}
    waiting = list(selected)
    names = {c.name for c in selected}
    while waiting or futures:
        for cell in list(waiting):
            ups = [u for u in cell.upstream if u in names]
            if any(u not in outcomes for u in ups):
                continue
            waiting.remove(cell)
            bad = [u for u in ups if outcomes[u]["outcome"] in ("failed", "blocked")]
            missing = missing_deps(root, cell)
            if missing:
                outcomes[cell.name] = _blocked(root, cell, bad, missing, log)
                continue
            ran_upstream = any(outcomes[u]["outcome"] in ("ran", "restored", "failed") for u in ups)
            known = None if ran_upstream else cell.name in initially_stale
            submitted[cell.name] = time.time()
            fut = run_cell.with_options(name=cell.stage, task_run_name=cell.name, retries=retries).submit(
                cell, known, ctx)
            futures[cell.name] = fut
            fut.add_done_callback(lambda f, n=cell.name: done.put(n))
        if not futures:
            if waiting:  # cannot happen in a DAG; never spin
                raise RuntimeError(f"cells left with no runnable upstream: {[c.name for c in waiting]}")
            continue
        name = done.get()
        result = futures.pop(name).result(raise_on_failure=False)
        outcomes[name] = result if isinstance(result, dict) else _failed(root, pipeline[name], result,
                                                                         submitted[name], log)
        progress(len(outcomes))
    return outcomes


def _blocked(root: Path, cell: Cell, bad: list[str], missing: list[str], log: Any) -> dict[str, Any]:
    """The outcome of a cell that cannot run: its inputs are missing (an upstream cell failed, or is not selected)."""
    why = (f"upstream {', '.join(bad)} failed; missing {', '.join(missing)}" if bad else
           f"missing dependency {', '.join(missing)} (its stage is not selected, or failed before)")
    log.warning("%s: blocked: %s", cell.name, why)
    if bad:  # the sweep records why this cell has no result
        write_cell_row(root, cell, "skipped", f"not run: {why}", blocked_by=bad)
    return {"cell": cell.name, "outcome": "blocked", "state": BLOCKED, "figures": {}, "error": why,
            "duration_s": 0.0}


def _failed(root: Path, cell: Cell, error: BaseException, submitted_at: float, log: Any) -> dict[str, Any]:
    """The outcome of a task that raised (a CellError after its retries, or something unexpected); the cell gets a
    failed row unless its stage wrote one itself during this run."""
    text = error.error_text() if isinstance(error, CellError) else f"{type(error).__name__}: {error}"
    log.error("%s: failed for good: %s", cell.name, text.splitlines()[0])
    row_file = root / cell.row_path if cell.row_path else None
    # A row newer than the cell's start was written by the stage itself; otherwise record the failure.
    if row_file and not (row_file.exists() and row_file.stat().st_mtime >= submitted_at):
        write_cell_row(root, cell, "failed", text, exit_code=getattr(error, "exit_code", None))
    return {"cell": cell.name, "outcome": "failed", "state": FAILED, "figures": {}, "error": text,
            "duration_s": None}


@flow(name=FLOW_NAME, persist_result=False, log_prints=True)
def benchmark(
    stages: list[str] | None = None,
    cells: list[str] | None = None,
    upstream: bool = True,
    report: bool = True,
    profile: str | None = None,
    profile_size: str | None = None,
    remote: bool = False,
    dispatch: str | None = None,
    dispatch_timeout_s: float | None = None,
    device: str | None = None,
    retries: int = 2,
    repo: str = ".",
) -> State:
    """Bring the selected cells of the DVC pipeline up to date, one task run per cell.

    Args:
        stages: dvc.yaml stages (the axes: pretrain, finetune, quantize, ...) to run; None = all.
        cells: globs over cell names (`pretrain@gqa*`, `report`); None = all.
        upstream: also run the stale cells the selected ones depend on (as `dvc repro <target>`).
        report: always include the report stage (re-run when stale; its markdown is published).
        profile: a params profile (`profiles/<name>.yaml` or a path) written into params.yaml first.
        profile_size: one of the profile's sizes (None: its default size).
        remote: pull from / push to the project's default DVC remote around each cell.
        dispatch: `<flow>/<deployment>`: run each stale measured cell as its own flow run of that
            deployment, on any worker of its pool (implies remote); prepare/report run here.
        dispatch_timeout_s: give up on a dispatched cell after this long (None: wait as long as it takes).
        device: name of the device guarded by the concurrency limit (default: host + CUDA_VISIBLE_DEVICES).
        retries: retries of a retryable failure (exit code 1, a remote transfer).
        repo: the DVC project root (the working directory by default).
    """
    log = get_run_logger()
    root = Path(repo).resolve()
    remote = remote or bool(dispatch) or os.environ.get("EFFICIENTLLM_DVC_REMOTE", "") not in ("", "0", "false")
    env: dict[str, str] = {}
    if profile:
        prof = apply_profile(root, profile, profile_size)
        env = dict(prof.env)
        log.info("profile %s (%s) written into params.yaml; %s", prof.name, profile_size or prof.default_size
                 or "no sizes", prof.description)
    pipeline: Pipeline = read_pipeline(root)
    selected = pipeline.select(stages=stages, cells=cells, upstream=upstream, report=report)
    log.info("DVC pipeline: %d cells; this run: %s", len(pipeline.cells), ", ".join(c.name for c in selected))
    if remote:
        p = subprocess.run(dvc_command("remote", "default"), cwd=root, env=dvc_env(), capture_output=True, text=True)
        if p.returncode != 0 or not p.stdout.strip():
            raise DvcError("remote=True needs a default DVC remote: `dvc remote add -d <name> <url>`")
        log.info("DVC remote: %s", p.stdout.strip())
    limit = None
    if not (dispatch and all(c.measured for c in selected)):
        limit = device_key(device)
        ensure_device_limit(limit)
        log.info("cells run here one at a time (concurrency slot %s)", limit)
    initially_stale = stale(root, [c.name for c in selected])
    ctx = RunContext(root=str(root), remote=remote, device_limit=limit, dispatch=dispatch,
                     dispatch_timeout_s=dispatch_timeout_s, env=env,
                     child_parameters={"upstream": True, "report": False, "remote": True, "profile": profile,
                                       "profile_size": profile_size, "retries": retries})

    progress = create_progress_artifact(progress=0.0, key=PROGRESS_ARTIFACT_KEY,
                                        description=f"cells of this flow run done, of {len(selected)}")
    outcomes = _run_cells(pipeline, selected, ctx, initially_stale, retries,
                          lambda n: update_progress_artifact(progress, 100.0 * n / max(len(selected), 1)))
    update_progress_artifact(progress, 100.0)
    summary = _summary(selected, outcomes)
    _publish(root, pipeline.cells, summary)
    log.info(summary["message"])
    if summary["failed"]:
        return Failed(message=summary["message"], data=summary)
    return Completed(message=summary["message"], data=summary)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="flows.benchmark", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", nargs="+", help="dvc.yaml stages (axes) to run")
    ap.add_argument("--cells", nargs="+", help="globs over cell names, e.g. 'pretrain@gqa*'")
    ap.add_argument("--no-upstream", dest="upstream", action="store_false", help="do not add stale upstream cells")
    ap.add_argument("--no-report", dest="report", action="store_false", help="do not re-run/publish the report")
    ap.add_argument("--profile", help="params profile (profiles/<name>.yaml) written into params.yaml first")
    ap.add_argument("--profile-size", help="one of the profile's sizes (default: its default size)")
    ap.add_argument("--remote", action="store_true", help="pull/push through the default DVC remote")
    ap.add_argument("--dispatch", help="<flow>/<deployment>: run each stale measured cell on its work pool")
    ap.add_argument("--dispatch-timeout-s", type=float, help="give up on a dispatched cell after this long")
    ap.add_argument("--device", help="device name for the one-measured-cell-at-a-time limit")
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--repo", default=".")
    a = ap.parse_args(argv)
    state = benchmark(stages=a.stages, cells=a.cells, upstream=a.upstream, report=a.report,
                      profile=a.profile, profile_size=a.profile_size, remote=a.remote, dispatch=a.dispatch,
                      dispatch_timeout_s=a.dispatch_timeout_s, device=a.device,
                      retries=a.retries, repo=a.repo, return_state=True)
    print(state.message)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    raise SystemExit(main())
