"""DuckDB over the metric rows: one typed `rows` table plus the views defined in `report/sql/*.sql`.

Every measured cell writes one row file (`records.write_row`). `connect` validates each file with
`records.read_row`, loads them into an in-memory DuckDB as the table `rows` (typed from
`records.duckdb_columns()`, so a column that is null everywhere still has its type), then creates the views
from the plain `.sql` files in `VIEW_FILES` order. Users query them with SQL; the SQL never touches the
row files, so a query cannot change a result.

Read-only (the default, what `efficientllm sql` uses): once the views exist, the database loses file and
network access and its configuration is locked, and `execute_read` refuses any statement that is not a read
(COPY, CREATE, INSERT, ATTACH, INSTALL, SET, ...), classifying statements with DuckDB's own parser.

    python -m efficientllm.cli sql "SELECT * FROM leaderboard_pretrain"
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from efficientllm import records

SQL_DIR = Path(__file__).with_name("sql")

VIEW_FILES: tuple[str, ...] = ("latest.sql", "pretrain.sql", "leaderboard_pretrain.sql", "failures.sql")
"""View definitions, in load order (a view may only use views listed before it)."""

DEFAULT_ROWS_GLOB = "results/*/*/row.json"
"""Where the pipeline stages write their rows: results/<stage>/<cell>/row.json."""

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


def _arrow_type(sql_type: str) -> Any:
    import pyarrow as pa

    types = {
        "VARCHAR": pa.string(),
        "INTEGER": pa.int32(),
        "BIGINT": pa.int64(),
        "DOUBLE": pa.float64(),
        "BOOLEAN": pa.bool_(),
        "TIMESTAMP": pa.timestamp("us"),
        "JSON": pa.string(),  # cast to JSON by the INSERT
        "DOUBLE[]": pa.list_(pa.float64()),
    }
    if sql_type not in types:
        raise NotImplementedError(f"report.views cannot load schema type {sql_type!r}; add it to _arrow_type")
    return types[sql_type]


def load_rows(row_files: RowFiles) -> list[dict[str, Any]]:
    """Read and validate every row file (`records.read_row`); the first bad file raises `RowError` naming it."""
    columns = records.duckdb_columns()
    rows = []
    for path in find_row_files(row_files):
        row = records.read_row(path)
        for name, sql_type in columns.items():
            value = row[name]
            if value is None:
                continue
            if sql_type == "TIMESTAMP":
                row[name] = _utc_naive(str(value), name, path)
            elif sql_type == "JSON":
                row[name] = json.dumps(value, ensure_ascii=False, allow_nan=False)
        rows.append(row)
    return rows


def _create_rows_table(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]) -> None:
    columns = records.duckdb_columns()
    ddl = ",\n    ".join(f'"{name}" {sql_type}' for name, sql_type in columns.items())
    con.execute(f"CREATE TABLE rows (\n    {ddl}\n)")
    if not rows:
        return
    import pyarrow as pa

    incoming = pa.table(
        {name: pa.array([row[name] for row in rows], type=_arrow_type(t)) for name, t in columns.items()}
    )
    con.register("_incoming_rows", incoming)
    try:
        con.execute("INSERT INTO rows BY NAME SELECT * FROM _incoming_rows")
    finally:
        con.unregister("_incoming_rows")


def create_views(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Run every file of `VIEW_FILES` on `con`; returns the view names (the file stems)."""
    names = []
    for file_name in VIEW_FILES:
        path = SQL_DIR / file_name
        try:
            con.execute(path.read_text(encoding="utf-8"))
        except duckdb.Error as e:
            raise RuntimeError(f"view file {path} failed: {e}") from e
        names.append(path.stem)
    return names


def connect(row_files: RowFiles, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding the table `rows` and the report views over `row_files`.

    `row_files` is a list of row files or one glob pattern; no files gives an empty, typed `rows`. A file
    that is not a valid row raises `records.RowError` naming the file. With `read_only` the connection
    then loses file system and network access and its configuration is locked; pass SQL from users
    through `execute_read`, which also refuses statements that are not reads.
    """
    rows = load_rows(row_files)
    con = duckdb.connect(":memory:")
    try:
        _create_rows_table(con, rows)
        create_views(con)
        if read_only:
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


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
