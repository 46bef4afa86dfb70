"""What every measured stage does around its cell: failed rows, failure markers, curves.

Not a stage itself; the stage scripts import it.
"""

from __future__ import annotations

import csv
import io
import json
import traceback
import uuid
from pathlib import Path
from typing import Any

from efficientllm.measure.provenance import provenance
from efficientllm.records import atomic_write_text

ERROR_MAX_CHARS = 4000


def error_text(exc: BaseException) -> str:
    """`Type: message` on the first line, then the end of the traceback (bounded)."""
    head = f"{type(exc).__name__}: {exc}".strip()
    tb = "".join(traceback.format_exception(exc))
    tail = tb[-(ERROR_MAX_CHARS - len(head) - 1):] if len(tb) > ERROR_MAX_CHARS - len(head) else tb
    return f"{head}\n{tail}"


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
