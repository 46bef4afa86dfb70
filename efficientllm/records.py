"""The one row schema: every measured cell becomes exactly one flat row.

The column list is defined once, here, and so is the one way to build a row: a cell's identity (`CellId`:
axis, stage, cell, technique, ...) makes its `ok_row(...)` or `failed_row(error, ...)`, with a fresh run id
and the provenance columns; the measured cells, the stages and the Prefect flow all build rows that way.
`write_row` validates a row and writes it (one JSON object per file, atomically), and the DuckDB views take
their typed column list from `duckdb_columns()`, so a column that is null in every row still has its type
in SQL.

Conventions (DESIGN.md): snake_case, units in names, `None` for unknown, never NaN or inf.

    python -c "from efficientllm.records import SCHEMA; print(len(SCHEMA), 'columns')"
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from efficientllm.atomic import atomic_write_text
from efficientllm.provenance import provenance

SCHEMA_VERSION = 1

STATUSES = ("ok", "failed", "skipped")
ERROR_MAX_CHARS = 4000
"""Bound of a row's `error` text."""


def error_field(head: str, detail: str = "") -> str:
    """A row's `error`: `head` (what went wrong, one line) first, then the end of `detail` (a traceback, a
    process's last output), bounded to ERROR_MAX_CHARS so that the first line always survives."""
    head = head.strip()
    room = max(0, ERROR_MAX_CHARS - len(head) - 1)
    return f"{head}\n{detail[-room:] if len(detail) > room else detail}" if detail else head


def exception_text(exc: BaseException) -> str:
    """A row's `error` for an exception: `Type: message` on the first line, then the end of the traceback."""
    return error_field(f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc)))


@dataclass(frozen=True)
class CellId:
    """Who a row is about: the identity columns every row of one cell (and trial) shares.

    `ok_row` / `failed_row` are the only places rows are built; columns given there override these fields (a
    pretraining cell names its model only once it is built).
    """

    axis: str
    stage: str
    cell: str
    technique: str | None = None
    model: str | None = None
    dataset: str | None = None
    trial: int = 0
    seed: int | None = None
    batch_size: int | None = None
    seq_len: int | None = None

    def _row(self, status: str, error: str | None, columns: Mapping[str, Any],
             cwd: str | os.PathLike | None = None) -> dict[str, Any]:

        return {"run_id": uuid.uuid4().hex, **dataclasses.asdict(self), "status": status, "error": error,
                **columns, **provenance(cwd)}

    def ok_row(self, **columns: Any) -> dict[str, Any]:
        """The row of a cell that measured: its identity, `columns`, status ok, provenance."""
        return self._row("ok", None, columns)

    def failed_row(self, error: BaseException | str, *, status: str = "failed", cwd: str | os.PathLike | None = None,
                   **columns: Any) -> dict[str, Any]:
        """The row of a cell that produced no measurements (`failed`, or `skipped`: the device cannot run it);
        `error` is an exception (its type, message and traceback end) or a text (first line: what happened).
        `cwd`: the checkout whose git state the provenance columns record (default: the working directory)."""
        if isinstance(error, BaseException):
            text = exception_text(error)
        else:
            head, _, detail = error.partition("\n")
            text = error_field(head, detail)
        return self._row(status, text, columns, cwd)


@dataclass
class CellOutcome:
    """What a measured cell returns: its row, and the text files written next to it (a loss curve, raw samples)."""

    row: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    """DuckDB type of the column."""
    doc: str


def _c(name: str, sql_type: str, doc: str) -> Column:
    return Column(name, sql_type, doc)


SCHEMA: tuple[Column, ...] = (
    # identity
    _c("schema_version", "INTEGER", "version of this schema"),
    _c("run_id", "VARCHAR", "unique id of the measured cell run"),
    _c("axis", "VARCHAR", "pretrain | finetune | quantize | pretrain_vision | finetune_vision (the DiT and VLM cells; "
                           "their tokens are image patches) | sweep (a scaling map cell: one line over a grid of "
                           "context x batch points, the points in extra.points, view `sweep`)"),
    _c("stage", "VARCHAR", "DVC stage name"),
    _c("cell", "VARCHAR", "matrix cell slug, e.g. mha"),
    _c("technique", "VARCHAR", "technique slug measured in this cell"),
    _c("model", "VARCHAR", "model name or recipe"),
    _c("dataset", "VARCHAR", "dataset / corpus source"),
    _c("status", "VARCHAR", "ok | failed | skipped"),
    _c("error", "VARCHAR", "error message and traceback excerpt when status != ok"),
    _c("trial", "INTEGER", "repeat index of the cell (0 for the first)"),
    # hardware and workload
    _c("device", "VARCHAR", "cpu | cuda | cuda:N"),
    _c("device_name", "VARCHAR", "processor or GPU model name"),
    _c("device_count", "INTEGER", "devices (processes) the cell ran on"),
    _c("num_threads", "INTEGER", "torch intra-op threads (CPU)"),
    _c("dtype", "VARCHAR", "compute dtype: float32 | bfloat16 | float16 | int8 | nf4 ..."),
    _c("batch_size", "INTEGER", "sequences per step / request batch"),
    _c("seq_len", "INTEGER", "tokens per sequence (training) or prompt length (inference)"),
    _c("seed", "BIGINT", "random seed of the cell"),
    _c("steps", "INTEGER", "optimizer steps (training) or requests (inference) in the measured window"),
    _c("warmup_steps", "INTEGER", "steps excluded from the measured window"),
    # parameters
    _c("n_params", "BIGINT", "total parameters"),
    _c("n_active_params", "BIGINT", "parameters active per token (MoE: routed experts only)"),
    _c("n_trainable_params", "BIGINT", "parameters updated by the optimizer"),
    # the paper's metrics
    _c("amu_bytes", "DOUBLE", "average memory used over the window, bytes"),
    _c("amu_ratio", "DOUBLE", "average memory used / memory total over the window"),
    _c("amu_source", "VARCHAR", "nvml | rss"),
    _c("pcu_ratio", "DOUBLE", "average compute utilisation over the window (NVML util, or CPU time / wall / threads)"),
    _c("pcu_source", "VARCHAR", "nvml | cpu_time"),
    _c("other_cpu_cores", "DOUBLE", "CPU other processes used during the window, in cores (machine busy CPU seconds - "
                                    "this process's, per wall second); a busy machine's timings are not compared"),
    _c("mfu", "DOUBLE", "achieved FLOP/s / measured peak FLOP/s"),
    _c("flops_per_token", "DOUBLE", "analytic FLOPs per token of the measured work (fwd+bwd when training)"),
    _c("achieved_flops_per_s", "DOUBLE", "FLOPs per second achieved in the window"),
    _c("peak_flops_per_s", "DOUBLE", "peak FLOP/s of the device, measured by a matmul calibration"),
    _c("al_s", "DOUBLE", "average latency: mean seconds per iteration (training) or per request (inference)"),
    _c("latency_s_mean", "DOUBLE", "mean of the latency samples, s"),
    _c("latency_s_std", "DOUBLE", "standard deviation of the latency samples, s"),
    _c("latency_s_p50", "DOUBLE", "median latency, s"),
    _c("latency_s_p90", "DOUBLE", "90th percentile latency, s"),
    _c("latency_s_p99", "DOUBLE", "99th percentile latency, s"),
    _c("latency_samples_s", "DOUBLE[]", "raw latency samples of the window, s"),
    _c("tt_tokens_per_param_s", "DOUBLE", "training throughput: tokens / parameter / s (pretraining)"),
    _c("st_samples_per_param_s", "DOUBLE", "sample throughput: samples / parameter / s (fine-tuning)"),
    _c("it_tokens_per_s", "DOUBLE", "inference throughput: generated tokens / s"),
    _c("tokens_per_s", "DOUBLE", "tokens per second in the window: pretraining every token; fine-tuning the response "
                                 "tokens (label != -100, padding and prompt excluded); inference prompt + generated"),
    _c("ttft_s_p50", "DOUBLE", "median time to first token, s"),
    _c("tpot_s_p50", "DOUBLE", "median time per output token (decode step), s"),
    _c("peak_mem_bytes", "DOUBLE", "peak memory in the window, bytes"),
    _c("peak_mem_source", "VARCHAR", "torch (max_memory_allocated) | nvml | rss (whole process) | rss_delta (RSS above "
                                     "the process before the cell built its model)"),
    # memory anatomy (efficientllm.measure.anatomy): tensors counted one by one, the same on every device
    _c("mem_weights_bytes", "DOUBLE", "parameters + buffers, each storage once (quantized packs and constants)"),
    _c("mem_grads_bytes", "DOUBLE", "gradients a training step holds (trained parameters); 0 for inference"),
    _c("mem_optimizer_bytes", "DOUBLE", "optimizer state tensors (AdamW moments); 0 for inference"),
    _c("mem_activations_bytes", "DOUBLE", "tensors one micro-batch's forward saves for backward (saved-tensors hook, "
                                          "weights excluded); 0 for inference"),
    _c("mem_kv_cache_bytes", "DOUBLE", "KV cache of one inference request at full length, from its tensors; 0 for "
                                       "training"),
    _c("mem_other_bytes", "DOUBLE", "peak_mem_bytes minus the counted parts (workspace, slack, temporaries); may be "
                                    "negative on CPU (RSS misses or shares counted pages)"),
    _c("kv_cache_bytes_per_token", "DOUBLE", "KV-cache bytes per token (all layers) at the model dtype"),
    _c("aec_w", "DOUBLE", "average energy consumption: joules / seconds over the window, W"),
    _c("energy_j", "DOUBLE", "energy over the window, J"),
    _c("energy_source", "VARCHAR", "nvml | rapl | estimate"),
    _c("tokens_per_j", "DOUBLE", "tokens per joule, the same tokens as tokens_per_s"),
    _c("window_s", "DOUBLE", "length of the measured window, s"),
    _c("model_size_bytes", "DOUBLE", "bytes of the weights as held"),
    _c("mcr_nominal", "DOUBLE", "model compression rate from nominal bit widths x performance ratio"),
    _c("mcr_measured", "DOUBLE", "model compression rate from measured bytes x performance ratio"),
    # quality
    _c("quality_metric", "VARCHAR", "name of the quality metric, e.g. val_ppl"),
    _c("quality_value", "DOUBLE", "value of the quality metric"),
    _c("train_loss_final", "DOUBLE", "mean training loss over the last logged steps"),
    _c("eval_loss", "DOUBLE", "held-out loss"),
    # cost (user-set prices)
    _c("cost_usd_per_mtok", "DOUBLE", "cost per million tokens from the user-set device-hour price"),
    _c("co2_g_per_mtok", "DOUBLE", "grams CO2 per million tokens from the user-set grid intensity"),
    # provenance
    _c("git_sha", "VARCHAR", "git commit of the code"),
    _c("git_dirty", "BOOLEAN", "working tree had uncommitted changes"),
    _c("python_version", "VARCHAR", "python version"),
    _c("torch_version", "VARCHAR", "torch version"),
    _c("transformers_version", "VARCHAR", "transformers version"),
    _c("peft_version", "VARCHAR", "peft version"),
    _c("hostname", "VARCHAR", "host the cell ran on"),
    _c("omp_wait_policy", "VARCHAR", "OMP_WAIT_POLICY of the cell's process (passive | active; null: unset, libgomp's "
                                     "default), from params measure.omp_wait_policy"),
    _c("timestamp_utc", "TIMESTAMP", "end of the cell, UTC, ISO 8601"),
    _c("duration_s", "DOUBLE", "wall time of the whole cell, s"),
    _c("extra", "JSON", "technique-specific fields (JSON object)"),
)

COLUMNS: tuple[str, ...] = tuple(c.name for c in SCHEMA)
_TYPES: dict[str, str] = {c.name: c.sql_type for c in SCHEMA}


class RowError(ValueError):
    """A row that does not fit the schema, or a row file that cannot be read."""


def duckdb_columns() -> dict[str, str]:
    """`{column: duckdb type}` in schema order, for `read_json(..., columns=...)`."""
    return dict(_TYPES)


def _clean(name: str, value: Any) -> Any:
    """Coerce one value to what the column holds; NaN/inf become None."""
    if value is None:
        return None
    sql_type = _TYPES[name]
    if sql_type == "DOUBLE[]":
        return [_clean_float(name, v) for v in value]
    if sql_type == "DOUBLE":
        return _clean_float(name, value)
    if sql_type in ("INTEGER", "BIGINT"):
        if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not value.is_integer()
        ):
            raise RowError(f"column {name!r} expects an integer, got {value!r}")
        return int(value)
    if sql_type == "BOOLEAN":
        return bool(value)
    if sql_type == "JSON":
        if not isinstance(value, Mapping):
            raise RowError(f"column {name!r} expects a mapping, got {type(value).__name__}")
        return _json_safe(value)
    return str(value)


def _clean_float(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)  # numpy / torch scalars
        except (TypeError, ValueError):
            raise RowError(f"column {name!r} expects a number, got {value!r}") from None
    value = float(value)
    return value if math.isfinite(value) else None


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    try:
        return _json_safe(float(obj))
    except (TypeError, ValueError):
        return str(obj)


def make_row(**fields: Any) -> dict[str, Any]:
    """A complete row in schema order: unknown keys raise, missing keys are None."""
    unknown = sorted(set(fields) - set(COLUMNS))
    if unknown:
        raise RowError(f"unknown row column(s): {', '.join(unknown)}")
    row = {name: _clean(name, fields.get(name)) for name in COLUMNS}
    row["schema_version"] = SCHEMA_VERSION
    if row["status"] not in STATUSES:
        raise RowError(f"column 'status' must be one of {STATUSES}, got {row['status']!r}")
    if row["axis"] is None:
        raise RowError("column 'axis' is required")
    return row


def write_row(path: str | os.PathLike, row: Mapping[str, Any]) -> Path:
    """Validate `row` and write it as one JSON object on one line, atomically."""
    full = make_row(**dict(row))
    text = json.dumps(full, allow_nan=False, ensure_ascii=False, separators=(",", ":")) + "\n"
    atomic_write_text(path, text)
    return Path(path)


def read_row(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate one row file; errors name the file."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RowError(f"corrupt row file {path}: {e}") from None
    if not isinstance(obj, dict):
        raise RowError(f"corrupt row file {path}: expected a JSON object, got {type(obj).__name__}")
    try:
        return make_row(**obj)
    except RowError as e:
        raise RowError(f"corrupt row file {path}: {e}") from None
