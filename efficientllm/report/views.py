"""DuckDB over the metric rows: one typed `rows` table plus the views defined in `report/sql/*.sql`.

Every measured cell writes one row file (`records.write_row`). `connect` validates each file with
`records.read_row`, loads them into an in-memory DuckDB as the table `rows` (typed from
`records.duckdb_columns()`, so a column that is null everywhere still has its type, plus `rev` and
`row_file`), then creates the views from the plain `.sql` files (`VIEWS` order; a new file in report/sql/ is
picked up too; the three per-axis views come from one template, the leaderboards from another and
`metric_catalog`). `connect_loaded` does the same
for rows read elsewhere, e.g. from several git revisions (`efficientllm.pipeline.revisions`), one `rev` each. Two
small tables sit beside `rows`: `revisions` (the revisions loaded, in order) and `assumptions` (the user-set price
and grid intensity of the cost and CO2 columns). Users query them with SQL; the SQL never touches the row files,
so a query cannot change a result.

Read-only (the default, what `efficientllm sql` uses): once the views exist, the database loses file and
network access and its configuration is locked, and `execute_read` refuses any statement that is not a read
(COPY, CREATE, INSERT, ATTACH, INSTALL, SET, ...), classifying statements with DuckDB's own parser.

    python -m efficientllm.cli sql "SELECT * FROM leaderboard_pretrain"
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from efficientllm import records

SQL_DIR = Path(__file__).with_name("sql")
"""The report's SQL: one file per view (<view>.sql), the per-axis and leaderboard templates (templates/axis.sql,
templates/leaderboard.sql) and the queries of `claims` and `recommend` (claims/*.sql, recommend/*.sql; see `query`)."""

VIEWS: tuple[str, ...] = (
    "latest",
    "measured",
    "pretrain",
    "finetune",
    "quantize",
    "failures",
    "t_critical",
    "metric_catalog",
    "trial_metrics",
    "example_scores",
    "scores",
    "leaderboard_pretrain",
    "leaderboard_finetune",
    "leaderboard_quantize",
    "leaderboard_pretrain_vision",
    "leaderboard_finetune_vision",
    "pareto",
    "revision_diff",
    "sanity",
    "sweep",
    "sweep_crossovers",
)
"""The views in load order, each made from SQL_DIR/<view>.sql except the per-axis views (`axis_sql`) and
`leaderboard_<axis>` (`leaderboard_sql`). The
view of any other .sql file in SQL_DIR is created after these, and a view whose dependencies are not there yet is
retried once the others exist, so the order is a preference, not a contract."""

VIEW_FILES = VIEWS
"""The old name of `VIEWS`, still read by the CLI's help (which strips a '.sql' these names no longer have)."""

LEADERBOARD_TEMPLATE = "templates/leaderboard.sql"
"""The one SQL file (in SQL_DIR) behind the three views `leaderboard_<axis>`."""


AXIS_TEMPLATE = "templates/axis.sql"
"""The one SQL file (in SQL_DIR) behind the per-axis views `pretrain`, `finetune` and `quantize`."""


@dataclass(frozen=True)
class AxisView:
    """The columns the per-axis view of one axis adds to the template's shared ones, by group (SQL expressions over
    `measured`)."""

    cell: tuple[str, ...]
    """What the cell is (after its key rev, stage, board, cell)."""
    size: tuple[str, ...]
    """Model size beyond n_params."""
    quality: tuple[str, ...]
    """Quality beyond quality_value and eval_loss."""
    speed: tuple[str, ...]
    """Speed beyond AL and its percentiles."""
    memory: tuple[str, ...]
    """Memory beyond peak_mem_bytes."""


def _extra(key: str, sql_type: str | None = None) -> str:
    """The view column `key` taken from the row's `extra` (cast to `sql_type`, null where it is not one)."""
    value = f"extra ->> '$.{key}'"
    return f"TRY_CAST({value} AS {sql_type}) AS {key}" if sql_type else f"{value} AS {key}"


AXIS_VIEWS: dict[str, AxisView] = {
    "pretrain": AxisView(
        cell=("technique", *(_extra(k) for k in ("attention", "positional", "mlp", "family")), "dataset"),
        size=("n_active_params",), quality=("train_loss_final",),
        speed=("mfu", "tt_tokens_per_param_s", "tokens_per_s"), memory=("kv_cache_bytes_per_token",)),
    "finetune": AxisView(
        cell=("technique AS method", "task"),
        size=("n_trainable_params", _extra("trainable_fraction", "DOUBLE")),
        quality=("train_loss_final", _extra("exact_match", "DOUBLE")),
        speed=("mfu", "st_samples_per_param_s", "tokens_per_s"), memory=("model_size_bytes",)),
    "quantize": AxisView(
        cell=("technique_key AS precision",), size=("nominal_bits",),
        quality=(_extra("val_ppl", "DOUBLE"), "quality_ratio_vs_baseline AS quality_vs_bf16",
                 _extra("quality_gate_ratio", "DOUBLE"),
                 "quality_ratio_vs_baseline >= TRY_CAST(extra ->> '$.quality_gate_ratio' AS DOUBLE) "
                 "AS passes_quality_gate"),
        speed=("it_tokens_per_s", "ttft_s_p50", "tpot_s_p50"),
        memory=("model_size_bytes", "mcr_nominal", "mcr_measured", "kv_cache_bytes_per_token")),
}
"""The per-axis views (`pretrain`, `finetune`, `quantize`): the template's columns plus these."""


@dataclass(frozen=True)
class Leaderboard:
    """What the view `leaderboard_<axis>` shows besides the metrics `metric_catalog` lists for the axis."""

    baseline: str
    """The axis baseline technique (as `measured.baseline`): the ratio columns are named `<metric>_vs_<baseline>`."""
    cell_columns: tuple[str, ...]
    """The columns describing a cell, after its key (rev, stage, board, cell): columns of the template's `cells`."""


LEADERBOARDS: dict[str, Leaderboard] = {
    "pretrain": Leaderboard("mha", ("technique", "attention", "positional", "mlp", "family", "n_params",
                                    "n_active_params")),
    "finetune": Leaderboard("full", ("method", "task", "n_params", "n_trainable_params")),
    "quantize": Leaderboard("bf16", ("precision", "model", "n_params", "nominal_bits")),
    # the vision axis (efficientllm/vision): DiT attention / FFN variants; PEFT on the DiT (one board per base model)
    "pretrain_vision": Leaderboard("mha", ("technique", "attention", "mlp", "family", "n_params", "n_active_params")),
    "finetune_vision": Leaderboard("full", ("method", "model", "n_params", "n_trainable_params")),
}
"""The leaderboard of each axis, in the order of `VIEWS`."""

EXTRA_COLUMNS: dict[str, str] = {"rev": "VARCHAR", "row_file": "VARCHAR"}
"""Columns of `rows` beyond the schema: the revision a row was read at, and the file it came from."""

_INSERT_BATCH = 100
"""Rows per INSERT statement when loading."""

WORKSPACE = "workspace"
"""The `rev` of rows read from the files on disk (not from a git revision)."""

DEFAULT_ROWS_GLOB = "results/**/row.json"
"""Where the pipeline stages write their rows: results/<stage>/<cell>/row.json (any depth below results/, so a
layout with one folder per trial, results/<stage>/<cell>/<trial>/row.json, is read too)."""

READ_PRAGMAS = frozenset(
    {
        "collations",
        "database_list",
        "database_size",
        "functions",
        "metadata_info",
        "platform",
        "show",
        "show_databases",
        "show_tables",
        "show_tables_expanded",
        "storage_info",
        "table_info",
        "user_agent",
        "version",
    }
)
"""PRAGMAs that only read; every other PRAGMA (they set options) is refused in read-only mode."""

_READ_FORMS = "SELECT, WITH, FROM, EXPLAIN, DESCRIBE, SHOW, SUMMARIZE, PRAGMA table_info"

RowFiles = Sequence[str | os.PathLike] | str
"""Row files: a list of paths, or one glob pattern (relative to the working directory)."""


class ReadOnlyError(ValueError):
    """A statement that is not a read, sent to a read-only report database."""


@dataclass(frozen=True)
class Assumptions:
    """User-set figures behind the cost and CO2 columns (params.yaml `report:`); never measured."""

    usd_per_device_hour: float | None = None
    """Price of one device (GPU, or the CPU machine) for one hour, USD; None: no cost column."""
    grid_g_co2_per_kwh: float | None = None
    """Carbon intensity of the electricity, grams CO2 per kWh; None: no CO2 column."""
    source: str = "not set"
    """Where the figures came from, shown next to them (e.g. 'params.yaml report:')."""

    @classmethod
    def from_params(cls, params_path: str | Path) -> Assumptions:
        """The figures of `params_path`'s `report:` section, labelled with it (the ReportConfig defaults, labelled as
        such, when the file or the section is missing): the one place the stage and the CLI take them from."""
        from efficientllm.config import ReportConfig, load_section, read_params

        path = Path(params_path)
        params = read_params(path) if path.is_file() else {}
        if "report" in params:
            cfg, source = load_section(path, "report", params), f"{path} `report:`"
        else:
            cfg, source = ReportConfig(), "ReportConfig defaults (no `report:` section found)"
        return cls(cfg.usd_per_device_hour, cfg.grid_g_co2_per_kwh, source)


@dataclass(frozen=True)
class RevisionRows:
    """The rows of one revision: its label (the `rev` column), the commit it resolved to, and the row dicts."""

    rev: str
    commit: str | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Typed rows (`typed_row`), each with a 'row_file' key naming where it was read."""
    examples: dict[str, str] = field(default_factory=dict)
    """row_file -> the text of the examples.jsonl beside it (efficientllm.examples), where there is one."""


def find_row_files(row_files: RowFiles) -> list[Path]:
    """The row files to load: the paths given, or the sorted matches of a glob pattern."""
    if isinstance(row_files, str):
        return [Path(p) for p in sorted(glob.glob(row_files, recursive=True))]
    return [Path(p) for p in row_files]


def _utc_naive(value: str, column: str, path: Path) -> datetime:
    """ISO 8601 text -> naive UTC datetime (DuckDB's TIMESTAMP cast would drop a non-UTC offset)."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"  # fromisoformat before Python 3.11 does not read 'Z'
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        message = f"corrupt row file {path}: column {column!r} is not an ISO 8601 time: {value!r}"
        raise records.RowError(message) from None
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(timezone.utc).replace(tzinfo=None)
    return stamp


def typed_row(row: Mapping[str, Any], where: str | os.PathLike) -> dict[str, Any]:
    """A validated row (`records.make_row` output) made ready for the `rows` table: times as naive UTC
    datetimes, `extra` as JSON text, and 'row_file' = `where`. Bad values raise `RowError` naming `where`."""
    columns = records.duckdb_columns()
    out = dict(row)
    for name, sql_type in columns.items():
        value = out[name]
        if value is None:
            continue
        if sql_type == "TIMESTAMP":
            out[name] = _utc_naive(str(value), name, Path(where))
        elif sql_type == "JSON":
            out[name] = json.dumps(value, ensure_ascii=False, allow_nan=False)
    out["row_file"] = str(where)
    return out


def load_rows(row_files: RowFiles) -> list[dict[str, Any]]:
    """Read and validate every row file (`records.read_row`); the first bad file raises `RowError` naming it."""
    return [typed_row(records.read_row(path), path) for path in find_row_files(row_files)]


def load_workspace(row_files: RowFiles) -> RevisionRows:
    """The rows of the files on disk, with the per-example file beside each row (where there is one)."""
    from efficientllm.examples import EXAMPLES_FILE

    rows = load_rows(row_files)
    examples = {}
    for row in rows:
        path = Path(row["row_file"]).with_name(EXAMPLES_FILE)
        if path.is_file():
            examples[row["row_file"]] = path.read_text(encoding="utf-8")
    return RevisionRows(WORKSPACE, None, rows, examples)


EXAMPLE_COLUMNS = {"set": "VARCHAR", "stat": "VARCHAR", "example": "VARCHAR", "value": "DOUBLE", "weight": "DOUBLE"}


def _load_examples(con: duckdb.DuckDBPyConnection, revisions: Sequence[RevisionRows]) -> None:
    """The table `examples` (rev, row_file, set, stat, example, value, weight): every example file of every
    revision, parsed once into one temporary jsonl that DuckDB reads in a single scan (thousands of examples; a
    parameterised INSERT per example would take seconds). A line that is not JSON names its file."""
    import tempfile

    columns = {"rev": "VARCHAR", "row_file": "VARCHAR", **EXAMPLE_COLUMNS}
    ddl = ", ".join(f'"{name}" {sql_type}' for name, sql_type in columns.items())
    con.execute(f"CREATE TABLE examples ({ddl})")
    lines = []
    for revision in revisions:
        for row_file, text in revision.examples.items():
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise records.RowError(f"corrupt examples file beside {row_file}: line {n}: {e}") from None
                lines.append(json.dumps({"rev": revision.rev, "row_file": row_file,
                                         **{k: record.get(k) for k in EXAMPLE_COLUMNS}}))
    if not lines:
        return
    with tempfile.TemporaryDirectory(prefix="efficientllm-examples-") as tmp:
        path = Path(tmp) / "examples.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        spec = ", ".join(f"'{name}': '{sql_type}'" for name, sql_type in columns.items())
        con.execute(f"INSERT INTO examples SELECT * FROM read_json(?, columns = {{{spec}}}, "
                    "format = 'newline_delimited')", [str(path)])


def _create_tables(con: duckdb.DuckDBPyConnection, revisions: Sequence[RevisionRows],
                   assumptions: Assumptions) -> None:
    columns = {**records.duckdb_columns(), **EXTRA_COLUMNS}
    ddl = ",\n    ".join(f'"{name}" {sql_type}' for name, sql_type in columns.items())
    con.execute(f"CREATE TABLE rows (\n    {ddl}\n)")
    con.execute("CREATE TABLE revisions (rev VARCHAR, rev_order INTEGER, commit VARCHAR, n_rows INTEGER)")
    con.execute("CREATE TABLE assumptions (usd_per_device_hour DOUBLE, grid_g_co2_per_kwh DOUBLE, source VARCHAR, "
                "note VARCHAR)")
    con.execute(
        "INSERT INTO assumptions VALUES (?, ?, ?, ?)",
        [assumptions.usd_per_device_hour, assumptions.grid_g_co2_per_kwh, assumptions.source,
         "user-set assumptions, not measurements: cost = price x device-hours per token; "
         "CO2 = energy per token x grid intensity (see the view `measured`)"],
    )
    labels = [r.rev for r in revisions]
    if len(set(labels)) != len(labels):
        raise ValueError(f"each revision may be loaded once; got {', '.join(labels)}")
    for order, revision in enumerate(revisions):
        con.execute("INSERT INTO revisions VALUES (?, ?, ?, ?)",
                    [revision.rev, order, revision.commit, len(revision.rows)])
    rows = [{**row, "rev": revision.rev} for revision in revisions for row in revision.rows]
    # Multi-row INSERT ... VALUES with parameters: a few ms per row and no pandas / pyarrow import (which would
    # cost the CLI a second); DuckDB casts each value to the column's type (JSON text, DOUBLE[] lists, ...).
    names = list(columns)
    placeholders = "(" + ", ".join("?" * len(names)) + ")"
    for start in range(0, len(rows), _INSERT_BATCH):
        batch = rows[start:start + _INSERT_BATCH]
        con.execute(f"INSERT INTO rows VALUES {', '.join([placeholders] * len(batch))}",
                    [row.get(name) for row in batch for name in names])


def query(name: str) -> str:
    """The text of the query SQL_DIR/<name>.sql (e.g. 'claims/positional'): SQL the report runs over the views
    without being one (its named parameters, $axis and so on, are listed in its header)."""
    return (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")


def _leaderboard_axis(view: str) -> str | None:
    axis = view.removeprefix("leaderboard_")
    return axis if axis != view and axis in LEADERBOARDS else None


def view_names() -> list[str]:
    """Every view: `VIEWS` first, in that order, then the view of any other .sql file of SQL_DIR, by name."""
    return [*VIEWS, *sorted(p.stem for p in SQL_DIR.glob("*.sql") if p.stem not in VIEWS)]


def view_file(view: str) -> Path:
    """The file `view` is made from: SQL_DIR/<view>.sql, or the template of a per-axis view or a leaderboard."""
    if view in AXIS_VIEWS:
        return SQL_DIR / AXIS_TEMPLATE
    return SQL_DIR / (LEADERBOARD_TEMPLATE if _leaderboard_axis(view) else f"{view}.sql")


def axis_sql(axis: str) -> str:
    """The CREATE VIEW statement of the per-axis view `axis`: the template filled in with `AXIS_VIEWS[axis]`."""
    columns = AXIS_VIEWS[axis]
    sep = ",\n    "
    return view_file(axis).read_text(encoding="utf-8").format(
        axis=axis, cell_columns=sep.join(columns.cell), size_columns=sep.join(columns.size),
        quality_columns=sep.join(columns.quality), speed_columns=sep.join(columns.speed),
        memory_columns=sep.join(columns.memory))


def _pick(aggregate: str, column: str, metric: str, name: str) -> str:
    """One pivot column of the leaderboard: `column` of `scores` for `metric`, named `name`."""
    if not metric.isidentifier():  # it becomes a column name and a string literal
        raise ValueError(f"metric_catalog: {metric!r} is not a plain column name")
    return f"{aggregate}(s.{column}) FILTER (WHERE s.metric = '{metric}') AS {name}"


def leaderboard_sql(con: duckdb.DuckDBPyConnection, axis: str) -> str:
    """The CREATE VIEW statement of `leaderboard_<axis>`: the template filled in with the axis, its baseline and
    cell columns (`LEADERBOARDS`) and, from the view `metric_catalog` on `con`, one mean per metric of the axis
    (leaderboard_position order), a rank and a score per radar metric (position order) and a ratio to the baseline
    per metric with a vs_baseline_position (in that order). Quality's own columns are written in the template."""
    board = LEADERBOARDS[axis]
    catalog = con.execute("SELECT metric, radar, position, leaderboard_position, vs_baseline_position "
                          "FROM metric_catalog WHERE axis = ?", [axis]).fetchall()
    others = [row for row in catalog if row[0] != "quality"]
    means = [_pick("max", "mean", metric, metric) for metric, *_ in sorted(others, key=lambda row: row[3])]
    ranks_and_scores = [
        column
        for metric, *_ in sorted((row for row in others if row[1]), key=lambda row: row[2])
        for column in (_pick("max", "rank", metric, f"{metric}_rank"),
                       _pick("max", "normalized_score", metric, f"{metric}_score"))
    ]
    ratios = [_pick("max", "vs_baseline", metric, f"{metric}_vs_{board.baseline}")
              for metric, *_ in sorted((row for row in catalog if row[4] is not None), key=lambda row: row[4])]
    sep = ",\n    "
    return view_file(f"leaderboard_{axis}").read_text(encoding="utf-8").format(
        axis=axis,
        baseline=board.baseline,
        cell_columns=sep.join(f"c.{name}" for name in board.cell_columns),
        means=sep.join(means),
        ranks_and_scores=sep.join(ranks_and_scores),
        ratios=sep.join(ratios),
    )


def view_sql(con: duckdb.DuckDBPyConnection, view: str) -> str:
    """The CREATE VIEW statement of `view` (see `view_file`); a leaderboard needs `metric_catalog` on `con`."""
    if view in AXIS_VIEWS:
        return axis_sql(view)
    axis = _leaderboard_axis(view)
    return leaderboard_sql(con, axis) if axis else view_file(view).read_text(encoding="utf-8")


def create_views(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Create every view (`view_names`) on `con`; returns their names in the order they were created.

    A view that fails because a view it reads does not exist yet is retried after the others, so a new view
    file works wherever it sorts; one that still fails raises RuntimeError naming its file.
    """
    pending = view_names()
    created: list[str] = []
    while pending:
        failed: list[tuple[str, duckdb.Error]] = []
        for view in pending:
            try:
                con.execute(view_sql(con, view))
            except duckdb.CatalogException as e:  # reads a view created later: retry
                failed.append((view, e))
                continue
            except duckdb.Error as e:
                raise RuntimeError(f"view {view} ({view_file(view)}) failed: {e}") from e
            created.append(view)
        if len(failed) == len(pending):
            view, error = failed[0]
            raise RuntimeError(f"view {view} ({view_file(view)}) failed: {error}") from error
        pending = [view for view, _ in failed]
    return created


def connect_loaded(revisions: Sequence[RevisionRows], read_only: bool = True,
                   assumptions: Assumptions | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding `rows` (one `rev` per entry of `revisions`), `revisions`, `assumptions` and
    the report views. With `read_only` the connection then loses file system and network access and its
    configuration is locked; pass SQL from users through `execute_read`."""
    # One thread: parallel aggregation adds floats in a varying order, so a mean or a CI could differ in its last
    # bit from run to run; the rows are few, and the same rows must always give the same numbers (and report bytes).
    con = duckdb.connect(":memory:", config={"threads": 1})
    try:
        _create_tables(con, revisions, assumptions or Assumptions())
        _load_examples(con, revisions)
        create_views(con)
        if read_only:
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def connect(row_files: RowFiles, read_only: bool = True,
            assumptions: Assumptions | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding the table `rows` and the report views over `row_files` (rev 'workspace').

    `row_files` is a list of row files or one glob pattern; no files gives an empty, typed `rows`. A file
    that is not a valid row raises `records.RowError` naming the file. `assumptions` sets the price and grid
    intensity of the cost and CO2 columns (default: none, so those columns are null). See `connect_loaded`.
    """
    return connect_loaded([load_workspace(row_files)], read_only=read_only, assumptions=assumptions)


def _token_texts(sql: str) -> list[tuple[int, str]]:
    """(offset, text) of each token of `sql`, from DuckDB's tokenizer."""
    tokens = duckdb.tokenize(sql)
    ends = [offset for offset, _ in tokens[1:]] + [len(sql)]
    return [(offset, sql[offset:end].strip()) for (offset, _), end in zip(tokens, ends, strict=True)]


def _explained(con: duckdb.DuckDBPyConnection, sql: str) -> Any | None:
    """The statement inside an EXPLAIN: the first suffix after a token that parses as one statement.

    This skips the explain options (ANALYZE, `(FORMAT json)`, ...) without knowing their grammar.
    EXPLAIN ANALYZE runs its statement, so that statement must be a read too.
    """
    for offset, _ in _token_texts(sql)[1:]:
        try:
            inner = con.extract_statements(sql[offset:])
        except duckdb.Error:
            continue
        if len(inner) == 1:
            return inner[0]
    return None


def _refuse(kind: str, sql: str) -> ReadOnlyError:
    snippet = " ".join(sql.split())
    if len(snippet) > 80:
        snippet = snippet[:77] + "..."
    return ReadOnlyError(
        f"read-only database: refusing {kind} statement `{snippet}`; only reads run here ({_READ_FORMS})"
    )


def _check_statement(con: duckdb.DuckDBPyConnection, statement: Any) -> None:
    kind = statement.type
    if kind == duckdb.StatementType.SELECT:  # also WITH, FROM-first, DESCRIBE, SHOW, SUMMARIZE
        return
    if kind == duckdb.StatementType.EXPLAIN:
        inner = _explained(con, statement.query)
        if inner is None:
            raise _refuse("unparsed EXPLAIN", statement.query)
        _check_statement(con, inner)
        return
    if kind == duckdb.StatementType.PRAGMA:
        tokens = _token_texts(statement.query)
        name = tokens[1][1].lower() if len(tokens) > 1 else ""
        if name in READ_PRAGMAS and not any(text == "=" for _, text in tokens):
            return
        raise _refuse(f"PRAGMA {name}", statement.query)
    raise _refuse(kind.name, statement.query)


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise `ReadOnlyError` unless every statement in `sql` is a read; bad SQL raises `duckdb.ParserException`."""
    statements = con.extract_statements(sql)
    if not statements:
        raise ReadOnlyError("no SQL statement given")
    for statement in statements:
        _check_statement(con, statement)


def execute_read(con: duckdb.DuckDBPyConnection, sql: str) -> duckdb.DuckDBPyConnection:
    """Check that `sql` only reads (`check_read_only`), run it, and return the cursor holding the last result."""
    check_read_only(con, sql)
    return con.execute(sql)
