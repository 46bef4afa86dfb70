"""The lifecycle of one measured cell, the same for every measured stage: `run_cell(CellRun(...), body)`.

Not a stage itself; the stage scripts describe their cell (`CellRun`) and call `run_cell` with the library
function that measures it. `run_cell` owns everything around the measurement, once:

- **exit codes**: a row (ok, skipped, failed) exits 0 so DVC records the cell and the sweep goes on; an I/O
  error (OSError) exits 1 and writes nothing (retryable); bad params (ConfigError) exit 2 (`stages.run`).
- **rows**: ok → the outcome's row and files; an exception the cell names (`skip`) → a `skipped` row; any other
  exception → a `failed` row with its traceback, failure markers in place of the models it would have written
  (DVC needs every out to exist; downstream cells then fail with a clear error) and its empty side files.
- **ranks**: with `nproc_per_node > 1` the stage relaunches itself under torchrun (`launch_ranks`); rank 0
  writes the outputs; a group that dies without a row gets a failed row from torchrun's last output lines.
- **repeated trials** (`<section>.trials: N`): trial 0 writes the cell's outputs and `<result_dir>/row.json`,
  then `run_trials` runs trials 1..N-1, each as a fresh `python -m stages.<name> <same args> --trial k` (no
  allocator state, warm caches or RSS peak carried over), which writes only its row (and side files) under
  `<result_dir>/trials/<k>/`. `<result_dir>/trials/index.json` (always written, a DVC out) lists every trial.

    python -m stages.pretrain --variant mha      # a stage whose main is a CellRun and a body
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from efficientllm.atomic import atomic_write_text
from efficientllm.config import ConfigError
from efficientllm.records import CellId, CellOutcome, write_row

# --- one cell ------------------------------------------------------------------------------------------------------


@dataclass
class CellRun:
    """One cell (one trial of it) as its stage runs it."""

    module: str
    """The stage module, e.g. `stages.pretrain` (ranks and trials run it again)."""
    argv: list[str]
    """The stage's own command line, passed unchanged to its ranks and its trials."""
    label: str
    """The DVC stage name, e.g. `pretrain@mha` (printed lines, messages)."""
    section: str
    """The params section that holds `trials`, `device` and, for training, `nproc_per_node`."""
    repeats: Any
    """That section's config as given (trial 0's: `trials`, `trial_seeds`, `device`, `nproc_per_node`)."""
    identity: CellId
    """The identity columns of this trial's row."""
    result_dir: Path
    """`results/<stage>/<cell>`: trial 0 writes here, trial k under `trials/<k>/`."""
    model_dirs: tuple[Path, ...] = ()
    """Model outs this trial writes (trial 0 only): a failed cell leaves a FAILED.json marker in each."""
    failure_files: Callable[[str], dict[str, str]] = lambda status: {}
    """Side files written next to a skipped / failed row (given the status), e.g. an empty loss curve."""
    failed_columns: dict[str, Any] = field(default_factory=dict)
    """Columns a skipped / failed row adds to the identity (its `extra`)."""
    skip: tuple[type[BaseException], ...] = ()
    """Exceptions meaning the device cannot run the cell: a `skipped` row, not a `failed` one."""
    skip_before_launch: BaseException | None = None
    """Known before any rank starts (e.g. QLoRA under FSDP): the `skipped` row's error; no group is launched."""
    checkpoint_dir: Path | None = None
    """The cell's checkpoints, removed once its row is written (ok or failed)."""
    summary: Callable[[dict[str, Any]], str] = lambda row: ""
    """The one line printed after an ok row (key figures)."""

    @property
    def trial(self) -> int:
        return self.identity.trial

    @property
    def out_dir(self) -> Path:
        return trial_dir(self.result_dir, self.trial)

    @property
    def name(self) -> str:
        return self.label + (f" trial {self.trial}" if self.trial else "")


@dataclass
class CellArgs:
    """A measured stage's command line and params, read once: its flags, its params section as given (`repeats`)
    and as this trial runs it (`cfg`), and `measure`. `cell(...)` makes the stage's `CellRun` from them."""

    module: str
    args: Any
    """The parsed flags (the stage's own, `--params`, `--trial`)."""
    argv: list[str]
    params: dict[str, Any]
    section: str
    repeats: Any
    cfg: Any
    measure: Any

    @property
    def trial(self) -> int:
        return int(self.args.trial)

    def load(self, name: str) -> Any:
        """Another params section (checked like every section: `efficientllm.config.load_section`)."""
        from efficientllm.config import load_section

        return load_section(self.args.params, name, self.params)

    def cell(self, *, label: str, identity: CellId, result_dir: Path, **fields: Any) -> CellRun:
        """This stage's `CellRun`: module, argv, section and repeats from the command line, the rest as given."""
        return CellRun(module=self.module, argv=self.argv, label=label, section=self.section, repeats=self.repeats,
                       identity=identity, result_dir=Path(result_dir), **fields)


def cell_args(module: str, doc: str | None, section: str, flags: dict[str, str],
              argv: list[str] | None = None) -> CellArgs:
    """Parse a measured stage's command line (`flags`: each required `--flag` and its help, then `--params` and
    `--trial`) and read its params: the section that holds `trials` (for this trial: `for_trial`) and `measure`."""
    from stages import stage_parser

    ap = stage_parser(module, doc)
    for flag, help_text in flags.items():
        ap.add_argument(flag, required=True, help=help_text)
    add_trial_argument(ap)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)

    from efficientllm.config import load_section, read_params

    params = read_params(args.params)
    repeats = load_section(args.params, section, params)
    cfg = for_trial(repeats, args.trial, section)  # trial k > 0: seed + k with trial_seeds: vary
    return CellArgs(module, args, argv, params, section, repeats, cfg, load_section(args.params, "measure", params))


def require_input(path: Path, what: str, stage: str) -> None:
    """Refuse to start without an upstream stage's output: FileNotFoundError (exit 2) naming the file and the
    `dvc repro` that makes it."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{what} missing: {path} (run `dvc repro {stage}`)")


def run_cell(run: CellRun, body: Callable[[Any], CellOutcome]) -> int:
    """Run one cell: launch its ranks or call `body(dist)` (dist: None for one process, else this rank's
    DistContext), write its outputs, run its other trials. Returns the stage's exit code."""
    from efficientllm.checkpoint import discard
    from efficientllm.distributed import init_distributed, shutdown, under_torchrun

    start_trials(run.repeats, run.trial, run.result_dir, run.section)
    nproc = getattr(run.repeats, "nproc_per_node", 1)
    if nproc > 1 and not under_torchrun():
        if run.skip_before_launch is not None:
            _record(run, run.skip_before_launch, nproc)
            code = 0
        else:
            code = launch_ranks(run.module, run.argv, nproc, device=run.repeats.device, section=run.section,
                                row_path=run.out_dir / "row.json", label=run.label,
                                record_failure=lambda e: _record(run, e, nproc))
        return _trials(run) if code == 0 else code
    dist = init_distributed(run.repeats.device, section=run.section) if under_torchrun() else None
    try:
        outcome = body(dist)
    except (OSError, ConfigError):  # retryable I/O (exit 1), or params the device cannot run (exit 2, e.g. bf16)
        raise
    except Exception as e:  # the cell failed (or cannot run here): record it as data
        if dist is None or dist.is_main:
            _record(run, e, dist.world_size if dist else 1)
            if run.checkpoint_dir is not None:
                discard(run.checkpoint_dir)
        if dist is None:
            return _trials(run)  # trial 0: the index says why no other trial ran
        # A rank that stops while others wait in a collective must take the group down: exiting non-zero
        # makes torchrun end the other ranks (they would otherwise hang until the collective times out).
        return 1 if dist.distributed else 0
    if dist is not None:
        shutdown(dist)
        if not dist.is_main:
            return 0
    _check_sanity(outcome.row)
    for name, text in outcome.files.items():
        atomic_write_text(run.out_dir / name, text)
    write_row(run.out_dir / "row.json", outcome.row)
    if run.checkpoint_dir is not None:
        discard(run.checkpoint_dir)
    print(f"{run.name}: {run.summary(outcome.row)}", flush=True)
    return _trials(run) if dist is None else 0


def _check_sanity(row: dict[str, Any]) -> None:
    """Every ok row's `extra.sanity` (efficientllm.measure.sanity): its implied FLOP/s, bandwidth, utilisation and
    power against this machine's measured ceilings; a broken bound is printed and flagged, never hidden."""
    from efficientllm.measure.sanity import ceilings_for, check_row

    sanity = check_row(row, ceilings_for(row))
    row.setdefault("extra", {})["sanity"] = sanity
    for violation in sanity["violations"]:
        print(f"warning: sanity: {row.get('stage')}@{row.get('cell')}: {violation}", file=sys.stderr, flush=True)


def _record(run: CellRun, error: BaseException, device_count: int) -> None:
    """The skipped / failed row of a cell that produced no measurements, its markers and side files."""
    status = "skipped" if isinstance(error, run.skip) else "failed"
    row = run.identity.failed_row(error, status=status, device_count=device_count, **run.failed_columns)
    for model_dir in run.model_dirs:
        write_failure_marker(model_dir, row)
    for name, text in run.failure_files(status).items():
        atomic_write_text(run.out_dir / name, text)
    write_row(run.out_dir / "row.json", row)
    print(f"{run.name}: {status.upper()}: {row['error'].splitlines()[0]}", flush=True)


def _trials(run: CellRun) -> int:
    """After trial 0 (in the process that started it): its other trials; a later trial runs no others."""
    return run_trials(run.module, run.argv, run.result_dir, run.repeats, run.label) if run.trial == 0 else 0


def write_failure_marker(out_dir: Path, row: dict[str, Any]) -> None:
    """Stand-in for a model directory the failed cell never produced (DVC needs every out to exist).

    Downstream stages that load it find no weights and fail with a clear error of their own.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.iterdir():
        if stale.is_file():
            stale.unlink()
    atomic_write_text(out_dir / "FAILED.json", json.dumps({"status": row["status"], "error": row["error"]}) + "\n")


# --- ranks -----------------------------------------------------------------------------------------------------------

TORCHRUN_TAIL_LINES = 60
"""Output lines of a torchrun group that died without a row, kept in the failed row's error."""
LAUNCHED_RANKS_ENV = "EFFICIENTLLM_STAGE_LAUNCHED_RANKS"
"""Set to 1 for the ranks a stage starts itself (`launch_ranks`); an outside launcher's ranks lack it (a stage
that runs repeated trials after its ranks end needs to be the one that started them)."""


def torchrun_command(module: str, args: Sequence[str], nproc_per_node: int) -> list[str]:
    """The command that runs `python -m module args` as `nproc_per_node` ranks on this machine.

    `python -m torch.distributed.run` is the `torchrun` console script, found through the running interpreter
    so the same environment runs the workers; `--standalone` rendezvouses on a free local port.
    """
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be >= 1, got {nproc_per_node}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
            "-m", module, *args]


def launch_ranks(module: str, argv: Sequence[str], nproc_per_node: int, *, device: str, section: str,
                 row_path: Path, record_failure: Callable[[BaseException], None], label: str) -> int:
    """Run stage `module` as `nproc_per_node` ranks on this machine (torchrun) and wait for them; returns 0.

    `argv` is the stage's own command line, passed through unchanged (every flag a stage has, today's and later
    ones, reaches its ranks). Refused before anything starts, as bad params (ValueError: the stage exits 2): a
    `device` naming one GPU, and fewer visible GPUs than ranks. Rank 0 writes the row; a row left at `row_path`
    by an earlier run is removed first so it cannot pass for this one's. A group that ends without a row (a rank
    killed or out of memory while rank 0 waited in a collective, a crash before rank 0 could record it) gets one
    from `record_failure`, called with an error holding torchrun's exit code and last output lines.
    """
    import torch

    from efficientllm.measure.device import resolve_device

    if device.strip().lower().startswith("cuda:"):
        raise ValueError(f"[{section}] device: {device!r} names one GPU, but nproc_per_node={nproc_per_node}; "
                         "use cuda or auto")
    if resolve_device(device).type == "cuda" and torch.cuda.device_count() < nproc_per_node:
        raise ValueError(f"[{section}] nproc_per_node={nproc_per_node} but {torch.cuda.device_count()} GPU(s) "
                         "are visible")
    row_path = Path(row_path)
    row_path.unlink(missing_ok=True)
    cmd = torchrun_command(module, list(argv), nproc_per_node)
    print(f"{label}: {shlex.join(cmd)}", flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=TORCHRUN_TAIL_LINES)
    env = {**os.environ, LAUNCHED_RANKS_ENV: "1"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # show the ranks' output as it comes, keep the end for a failed row
            sys.stdout.write(line)
            tail.append(line)
    if row_path.exists():  # rank 0 wrote the row: ok, or failed as recorded by rank 0 itself
        return 0
    record_failure(RuntimeError(f"torchrun with {nproc_per_node} processes exited {proc.returncode} without a row; "
                                "last output:\n" + "".join(tail)))
    return 0


# --- repeated trials -------------------------------------------------------------------------------------------------

TRIALS_DIR = "trials"
"""`<result_dir>/trials/`: trial k > 0 writes `trials/<k>/row.json`; `trials/index.json` lists them all."""
TRIAL_ROW_FIELDS = ("axis", "stage", "cell", "technique", "model", "dataset", "batch_size", "seq_len")
"""Identity fields a trial's failed row copies from trial 0's row when the trial process left none."""


def add_trial_argument(ap: Any) -> None:
    ap.add_argument("--trial", type=int, default=0,
                    help="repeat index: 0 (default) runs the cell and then its other trials; k > 0 runs only "
                         "trial k (what the stage starts itself for trials 1..N-1)")


def for_trial(cfg: Any, trial: int, section: str) -> Any:
    """`cfg` as trial `trial` runs it: seed + trial with `trial_seeds: vary`. Raises ValueError for a trial index
    outside 0..trials-1."""
    if not 0 <= trial < cfg.trials:
        raise ValueError(f"--trial {trial}: [{section}] trials={cfg.trials} allows 0..{cfg.trials - 1}")
    if trial and cfg.trial_seeds == "vary":
        return dataclasses.replace(cfg, seed=cfg.seed + trial)
    return cfg


def trial_dir(result_dir: Path, trial: int) -> Path:
    """Where trial `trial` writes its row: the cell's own folder for trial 0, `trials/<k>/` beneath it after."""
    return Path(result_dir) if trial == 0 else Path(result_dir) / TRIALS_DIR / str(trial)


def trial_name(name: str, trial: int) -> str:
    """A per-trial name for things kept outside the row folders (checkpoints): `name` for trial 0."""
    return name if trial == 0 else f"{name}~trial-{trial}"


def start_trials(repeats: Any, trial: int, cell_dir: Path, section: str) -> None:
    """Before a cell runs: refuse trials under an outside launcher, and (trial 0 of the launching process) clear the
    trial rows an earlier run left.

    Ranks this stage started itself carry LAUNCHED_RANKS_ENV; the process that launched them runs trials 1..N-1 once
    they are done. An outside launcher's ranks (a multi-node torchrun) have nobody to do that, so N > 1 is an error.
    """
    from efficientllm.distributed import under_torchrun

    if under_torchrun():
        if repeats.trials > 1 and os.environ.get(LAUNCHED_RANKS_ENV) != "1":
            raise ConfigError(f"[{section}] trials > 1 needs the stage to start its own processes (nproc_per_node), "
                              "not an outside launcher: the launching process runs the trials after trial 0")
    elif trial == 0:
        clear_trials(cell_dir)


def clear_trials(result_dir: Path) -> None:
    """Remove trial rows left by an earlier run (DVC removes outs before a run; a direct run must too), so rows
    of a larger earlier `trials` cannot pass for this run's."""
    shutil.rmtree(Path(result_dir) / TRIALS_DIR, ignore_errors=True)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def run_trials(module: str, argv: Sequence[str], result_dir: Path, cfg: Any, label: str) -> int:
    """After trial 0 (its row at `<result_dir>/row.json`): run trials 1..cfg.trials-1 and write the index.

    Trials run only when trial 0 is ok (a skipped or failed cell is not repeated; the index says so). A trial
    process that exits without writing its row (killed, crashed) gets a `failed` row here; one that exits 1 (an
    I/O error: retryable) stops the trials and the stage exits 1 too. Returns the stage's exit code.
    """
    result_dir = Path(result_dir)
    first = _read(result_dir / "row.json")
    if first is None:
        raise FileNotFoundError(f"{label}: trial 0 wrote no row at {result_dir / 'row.json'}")
    runs = [{"trial": 0, "seed": first.get("seed"), "status": first.get("status")}]
    index: dict[str, Any] = {"trials": cfg.trials, "trial_seeds": cfg.trial_seeds, "runs": runs}
    code = 0
    if cfg.trials > 1 and first.get("status") != "ok":
        index["not_run"] = f"trials 1..{cfg.trials - 1}: trial 0 is {first.get('status')}"
    elif cfg.trials > 1:
        for k in range(1, cfg.trials):
            row_path = trial_dir(result_dir, k) / "row.json"
            row_path.unlink(missing_ok=True)
            cmd = [sys.executable, "-m", module, *argv, "--trial", str(k)]
            print(f"{label}: trial {k} of {cfg.trials - 1} more: {' '.join(cmd[1:])}", flush=True)
            proc = subprocess.run(cmd, check=False)
            row = _read(row_path)
            if proc.returncode == 1 and row is None:  # retryable I/O error: the whole stage is retried
                print(f"{label}: trial {k} exited 1 (I/O error); the stage exits 1", file=sys.stderr)
                code = 1
                break
            if row is None:
                fields = {f: first[f] for f in TRIAL_ROW_FIELDS if first.get(f) is not None}
                seed = for_trial(cfg, k, first.get("stage", "?")).seed
                row = CellId(trial=k, seed=seed, **fields).failed_row(
                    RuntimeError(f"trial {k} exited {proc.returncode} without writing its row"))
                write_row(row_path, row)
            runs.append({"trial": k, "seed": row.get("seed"), "status": row.get("status"),
                         "exit_code": proc.returncode})
    atomic_write_text(result_dir / TRIALS_DIR / "index.json", json.dumps(index, indent=1) + "\n")
    return code
