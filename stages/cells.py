"""What every measured stage does around its cell: failed rows, failure markers, curves, repeated trials.

Not a stage itself; the stage scripts import it.

Repeated trials (`<section>.trials: N`): the stage runs its cell as trial 0 (outputs + `<result_dir>/row.json`),
then `run_trials` runs trials 1..N-1, each as a fresh `python -m stages.<name> <same args> --trial k` (a fresh
process: no allocator state, warm caches or RSS peak carried over from the trial before), which writes only its
row (and curve / samples) under `<result_dir>/trials/<k>/`. `<result_dir>/trials/index.json` (always written, a
DVC out) lists every trial's seed and status.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import subprocess
import sys
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from efficientllm.measure.provenance import provenance
from efficientllm.records import atomic_write_text, error_field


def error_text(exc: BaseException) -> str:
    """`Type: message` on the first line, then the end of the traceback (bounded: records.error_field)."""
    return error_field(f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc)))


def failed_row(exc: BaseException, *, axis: str, stage: str, cell: str, status: str = "failed",
               **fields: Any) -> dict[str, Any]:
    """A row for a cell that did not produce measurements."""
    return {
        "run_id": uuid.uuid4().hex,
        "axis": axis,
        "stage": stage,
        "cell": cell,
        "status": status,
        "error": error_text(exc),
        "trial": 0,
        **fields,
        **provenance(),
    }


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


def write_curve(path: Path, records: list[dict[str, Any]], fields: tuple[str, ...] = ("step", "loss")) -> None:
    """A CSV loss curve (a DVC plot), written atomically; an empty curve keeps its header."""
    buf = io.StringIO()
    names = list(records[0]) if records else list(fields)
    w = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


# --- repeated trials ---------------------------------------------------------------------------------------------

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
    import os

    from efficientllm.config import ConfigError
    from efficientllm.distributed import LAUNCHED_RANKS_ENV, under_torchrun

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
                from efficientllm.records import write_row

                error = RuntimeError(f"trial {k} exited {proc.returncode} without writing its row")
                fields = {f: first[f] for f in TRIAL_ROW_FIELDS if first.get(f) is not None}
                row = failed_row(error, trial=k, seed=for_trial(cfg, k, first.get("stage", "?")).seed,
                                 **fields)
                write_row(row_path, row)
            runs.append({"trial": k, "seed": row.get("seed"), "status": row.get("status"),
                         "exit_code": proc.returncode})
    atomic_write_text(result_dir / TRIALS_DIR / "index.json", json.dumps(index, indent=1) + "\n")
    return code
