"""The `efficientllm` command line: a plain dict of subcommands, each a function of its own arguments.

`COMMANDS` maps a name to `fn(argv: list[str]) -> int` (an exit code); each command parses its own argv,
so adding one is a function plus a dict entry. Commands import what they need when they run, so
`efficientllm --help` and `efficientllm sql` never import torch.

    efficientllm sql "SELECT rank, cell, quality_value, al_s_vs_mha FROM leaderboard_pretrain"
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Callable, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, TextIO

Command = Callable[[list[str]], int]
"""A subcommand: takes the arguments after its name, returns the process exit code."""

EXIT_USAGE = 2
"""Exit code for bad input: bad SQL, a write statement, a corrupt row file, bad flags."""

_NUMERIC_TYPES = frozenset(
    "TINYINT SMALLINT INTEGER BIGINT HUGEINT UTINYINT USMALLINT UINTEGER UBIGINT UHUGEINT FLOAT DOUBLE".split()
)


def _one_line(error: BaseException) -> str:
    """An error message on one line (DuckDB adds a `LINE 1: ...` excerpt and a caret line; drop those)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("LINE ") and set(line) != {"^"}]
    return " ".join(lines) or type(error).__name__


def _fail(command: str, error: BaseException) -> int:
    print(f"efficientllm {command}: error: {_one_line(error)}", file=sys.stderr)
    return EXIT_USAGE


# --- output formats of `sql`: (column names, column DuckDB types, rows, stream) -> None --------------------------


def _jsonable(value: Any) -> Any:
    """A fetched DuckDB value as JSON data: numbers stay numbers, times become ISO 8601 strings."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return _jsonable(float(value))
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return str(value)  # UUID, INTERVAL (timedelta), ...


def _cell_text(value: Any, for_table: bool) -> str:
    if value is None:
        return "NULL" if for_table else ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}" if for_table else repr(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ") if for_table else value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, list | tuple | dict):
        if for_table and isinstance(value, list | tuple) and len(value) > 6:
            head = ", ".join(_cell_text(v, True) for v in value[:3])
            return f"[{head}, … {len(value)} values]"
        return json.dumps(_jsonable(value), ensure_ascii=False)
    return str(value)


def _write_table(names: list[str], types: list[str], rows: list[tuple], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=True, header_style="bold")
    for name, sql_type in zip(names, types, strict=True):
        numeric = sql_type in _NUMERIC_TYPES or sql_type.startswith("DECIMAL")
        table.add_column(name, justify="right" if numeric else "left")
    for row in rows:
        # Text, not str: a value like "[red]" must print as itself, not as rich markup.
        table.add_row(*(Text(_cell_text(v, True), style="dim" if v is None else "") for v in row))
    console = Console(file=out)
    if not console.is_terminal:  # piped or captured: print the table at its natural width, never squeezed
        console = Console(file=out, width=100_000)
    console.print(table)
    console.print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", style="dim")


def _write_csv(names: list[str], types: list[str], rows: list[tuple], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_cell_text(v, False) for v in row])


def _write_json(names: list[str], types: list[str], rows: list[tuple], out: TextIO) -> None:
    objects = []
    for row in rows:
        obj = {}
        for name, sql_type, value in zip(names, types, row, strict=True):
            if sql_type == "JSON" and isinstance(value, str):
                value = json.loads(value)  # a JSON column is fetched as text; nest it as data
            obj[name] = _jsonable(value)
        objects.append(obj)
    json.dump(objects, out, indent=2, ensure_ascii=False, allow_nan=False)
    out.write("\n")


SQL_FORMATS: dict[str, Callable[[list[str], list[str], list[tuple], TextIO], None]] = {
    "table": _write_table,
    "csv": _write_csv,
    "json": _write_json,
}


def _add_source_flags(parser: argparse.ArgumentParser, revs: str = "many") -> None:
    """--rows / --rev / --repo / --params: where the rows come from and the report's cost assumptions."""
    from efficientllm.report import views

    parser.add_argument(
        "--rows",
        default=views.DEFAULT_ROWS_GLOB,
        help="glob of row files, relative to the working directory, or with --rev to the repository root "
        "(default: %(default)s)",
    )
    if revs == "many":
        parser.add_argument(
            "--rev", action="append", default=[], metavar="REV",
            help="load the rows as they were at this git revision or DVC experiment (repeatable; 'workspace' = "
            "the files on disk), through git and DVC without touching the work tree; each gets its own `rev`",
        )
    elif revs == "one":
        parser.add_argument("--rev", default=None, metavar="REV",
                            help="the git revision or DVC experiment to read the rows at (default: the files on disk)")
    parser.add_argument("--repo", default=".", help="repository of --rev (default: the working directory)")
    parser.add_argument("--params", default="params.yaml",
                        help="params file whose `report:` section sets the cost / CO2 assumptions (default: "
                        "%(default)s; its defaults when the file or section is missing)")


def _open_rows(command: str, args: argparse.Namespace, revs: list[str]) -> Any:
    """A read-only report database over the row files (no revs) or the rows at each of `revs`."""
    from efficientllm.report import views
    from efficientllm.report.views import Assumptions

    assumptions = Assumptions.from_params(args.params)
    if revs:
        from efficientllm.pipeline import revisions

        return revisions.connect_revisions(revs, repo=args.repo, pattern=args.rows, assumptions=assumptions)
    row_files = views.find_row_files(args.rows)
    if not row_files:
        print(f"efficientllm {command}: note: no row files match {args.rows!r}; `rows` is empty", file=sys.stderr)
    return views.connect(row_files, assumptions=assumptions)


def _input_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (exit 2, one line): bad rows, SQL, revisions or params."""
    import duckdb

    from efficientllm import records
    from efficientllm.config import ConfigError
    from efficientllm.pipeline import revisions
    from efficientllm.report import views

    return (records.RowError, views.ReadOnlyError, revisions.RevisionError, ConfigError, duckdb.Error)


def sql(argv: list[str]) -> int:
    """Query the metric rows with read-only DuckDB SQL (table `rows`, views `latest`, `pretrain`, ...)."""
    import textwrap

    from efficientllm.report import views

    parser = argparse.ArgumentParser(
        prog="efficientllm sql",
        description=textwrap.fill(
            "Run read-only DuckDB SQL over the metric rows. Tables: rows (every row file, typed by the schema, "
            "plus rev and row_file), revisions, assumptions. Views: "
            + ", ".join(name.removesuffix(".sql") for name in views.VIEW_FILES) + ". "
            "Only reads run: SELECT, WITH, EXPLAIN, DESCRIBE, SHOW, SUMMARIZE, PRAGMA table_info.", 100
        ),
        epilog='example: efficientllm sql "SELECT rank, cell, quality_value FROM leaderboard_pretrain" --format csv\n'
        "         efficientllm sql --rev HEAD~1 --rev HEAD \"SELECT cell, metric, relative_change FROM revision_diff "
        "WHERE verdict = 'worse'\"",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("query", help="SQL to run; several statements print the result of the last")
    _add_source_flags(parser)
    parser.add_argument("--format", choices=sorted(SQL_FORMATS), default="table", help="output format")
    args = parser.parse_args(argv)

    try:
        con = _open_rows("sql", args, args.rev)
        try:
            cursor = views.execute_read(con, args.query)
            description = cursor.description or []
            names = [d[0] for d in description]
            types = [str(d[1]) for d in description]
            rows = cursor.fetchall() if description else []
        finally:
            con.close()
    except _input_errors() as e:
        return _fail("sql", e)
    SQL_FORMATS[args.format](names, types, rows, sys.stdout)
    return 0


def compare(argv: list[str]) -> int:
    """Markdown diff of the rows at two revisions: every metric of every cell, its relative change."""
    parser = argparse.ArgumentParser(
        prog="efficientllm compare",
        description="Load the rows as they were at revision A and revision B (git revisions or DVC experiments, read "
        "through git and DVC without a checkout; 'workspace' = the files on disk) and print a Markdown diff: per "
        "board, each cell's metrics at A and B (mean ± 95%% CI over trials), the relative change (B - A) / |A|, and "
        "whether it got better or worse in the metric's direction (or is within noise).",
        epilog="example: efficientllm compare HEAD~1 workspace --metric al_s --metric quality --min-change 0.05",
    )
    parser.add_argument("rev_a", metavar="A", nargs="?", help="the earlier revision (git rev or DVC experiment name)")
    parser.add_argument("rev_b", metavar="B", nargs="?", default="workspace",
                        help="the later revision (default: workspace, the row files on disk)")
    parser.add_argument("--cells", nargs=2, metavar=("CELL_A", "CELL_B"),
                        help="compare two cells of one revision instead (stage@cell or a unique cell name; the rows "
                        "on disk, or --rev): every metric they share, its difference with a 95%% CI and p from the "
                        "test that fits it")
    parser.add_argument("--rev", default=None, help="with --cells: the revision to read (default: the files on disk)")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown", help="with --cells")
    _add_source_flags(parser, revs="none")
    parser.add_argument("--metric", action="append", default=[],
                        help="keep this metric only (repeatable; names as in the view metric_catalog, e.g. al_s)")
    parser.add_argument("--min-change", type=float, default=0.0,
                        help="hide cell-metrics whose |relative change| is below this (e.g. 0.05 = 5%%)")
    parser.add_argument("-o", "--output", help="write the Markdown to this file instead of stdout")
    args = parser.parse_args(argv)
    if args.cells:
        return _compare_cells(args)
    if args.rev_a is None:
        parser.error("give a revision A (or --cells CELL_A CELL_B)")

    from efficientllm.report.compare import compare_markdown

    try:
        con = _open_rows("compare", args, [args.rev_a, args.rev_b])
        try:
            text = compare_markdown(con, metrics=args.metric, min_change=args.min_change,
                                    title=f"{args.rev_a} → {args.rev_b}")
        finally:
            con.close()
    except _input_errors() as e:
        return _fail("compare", e)
    if args.output:
        from efficientllm.atomic import atomic_write_text

        atomic_write_text(args.output, text)
        print(f"efficientllm compare: wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _compare_cells(args: argparse.Namespace) -> int:
    """`efficientllm compare --cells A B`: the paired comparison of two cells, as Markdown or JSON."""
    from efficientllm.report.compare import cells_markdown, compare_cells

    try:
        con = _open_rows("compare", args, [args.rev] if args.rev else [])
        try:
            rows = compare_cells(con, *args.cells, rev=args.rev or "workspace")
        finally:
            con.close()
    except (*_input_errors(), ValueError) as e:
        return _fail("compare", e)
    text = json.dumps(rows, indent=1) + "\n" if args.format == "json" else cells_markdown(rows, *args.cells)
    if args.output:
        from efficientllm.atomic import atomic_write_text

        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def recommend(argv: list[str]) -> int:
    """Pareto-optimal techniques under memory / latency / quality-drop limits, with the numbers behind them."""
    from efficientllm.report import recommend as rec

    parser = argparse.ArgumentParser(
        prog="efficientllm recommend",
        description="From the measured rows (means over trials), keep the cells that meet every limit given, then "
        "print the Pareto-optimal ones of each board (stage, model size, dataset): no other cell meeting the limits "
        "is at least as good on quality, peak memory, latency (AL) and energy per token and better on one. Cells "
        "left out are listed with the reason.",
        epilog="example: efficientllm recommend --axis quantize --max-memory-bytes 2e9 --max-quality-drop 0.02",
    )
    parser.add_argument("--axis", choices=rec.AXES, help="only this axis (default: every axis)")
    parser.add_argument("--max-memory-bytes", type=float, help="peak memory limit in bytes (e.g. 8e9)")
    parser.add_argument("--max-latency-s", type=float,
                        help="limit on AL, the mean seconds per training step or per generate request")
    parser.add_argument("--max-quality-drop", type=float,
                        help="largest relative quality loss against the axis baseline (mha / full / bf16), e.g. 0.02 "
                        "= 2%%; a perplexity or loss rise counts as a drop")
    _add_source_flags(parser, revs="one")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown", help="output format")
    args = parser.parse_args(argv)

    from efficientllm.report import views

    try:
        constraints = rec.Constraints(args.axis, args.max_memory_bytes, args.max_latency_s, args.max_quality_drop)
        con = _open_rows("recommend", args, [args.rev] if args.rev else [])
        try:
            boards = rec.recommend(con, constraints, rev=args.rev or views.WORKSPACE)
        finally:
            con.close()
    except (*_input_errors(), ValueError) as e:
        return _fail("recommend", e)
    if args.format == "json":
        payload = [{"rev": b.rev, "axis": b.axis, "stage": b.stage, "board": b.board, "chosen": b.chosen,
                    "dominated": b.dominated, "rejected": b.rejected} for b in boards]
        json.dump(_jsonable(payload), sys.stdout, indent=2, ensure_ascii=False, allow_nan=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(rec.render(boards, constraints))
    return 0


def profile(argv: list[str]) -> int:
    """Run a profile (profiles/NAME.yaml, e.g. paper-pretrain) as DVC experiments, one per model size."""
    from efficientllm.pipeline.profiles import profile_command

    return profile_command(argv)


def export(argv: list[str]) -> int:
    """Export a pretrained variant to a standard architecture (Llama) loadable without this package."""
    parser = argparse.ArgumentParser(
        prog="efficientllm export",
        description="Write a pretrained EfficientLM variant (gqa/mqa/mha attention + rope + swiglu) as a plain "
        "transformers checkpoint. The exported logits are checked against the source model before writing.",
        epilog="example: efficientllm export models/pretrain/mha exports/mha-llama",
    )
    parser.add_argument("model_dir", help="a saved model directory (e.g. models/pretrain/<variant>)")
    parser.add_argument("out_dir", help="where to write the exported checkpoint")
    parser.add_argument("--format", default="llama", help="target architecture (default: %(default)s)")
    parser.add_argument("--no-verify", action="store_true", help="skip the logits parity check")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    args = parser.parse_args(argv)

    from efficientllm import export as exporting

    try:
        out = exporting.export(args.model_dir, args.out_dir, args.format, verify=not args.no_verify,
                               overwrite=args.overwrite)
    except (exporting.ExportError, FileNotFoundError) as e:
        return _fail("export", e)
    print(f"efficientllm export: wrote {args.format} checkpoint to {out}")
    return 0


def paper_check(argv: list[str]) -> int:
    """The study's published figures recomputed with its formulas, checked against physical bounds."""
    parser = argparse.ArgumentParser(
        prog="efficientllm paper-check",
        description="Recompute figures the EfficientLLM study published with its own metric definitions and hold "
        "them against physical bounds (cluster peak FLOP/s, the bytes a quantized weight needs), with the arithmetic; "
        "a verdict each: possible or impossible.")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    args = parser.parse_args(argv)
    from efficientllm.report import paper_check as pc

    rows = pc.check_all()
    sys.stdout.write(json.dumps(rows, indent=1) + "\n" if args.format == "json" else pc.render(rows))
    return 0


COMMANDS: dict[str, Command] = {
    "sql": sql,
    "compare": compare,
    "recommend": recommend,
    "profile": profile,
    "export": export,
    "paper-check": paper_check,
}
"""Subcommands by name; `efficientllm <name> --help` shows each one's flags."""


def _summary_line(command: Command) -> str:
    return (command.__doc__ or "").strip().splitlines()[0] if command.__doc__ else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run `efficientllm COMMAND [ARGS...]`; returns the exit code (argparse errors and --help included)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    width = max(len(name) for name in COMMANDS) + 2
    listing = "\n".join(f"  {name:<{width}}{_summary_line(fn)}" for name, fn in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="efficientllm",
        description="A reproducible benchmark of LLM efficiency techniques (after arXiv 2505.13840).",
        epilog=f"commands:\n{listing}\n\nrun `efficientllm COMMAND --help` for a command's options",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command")
    if not argv:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        parsed = parser.parse_args(argv)
        return COMMANDS[parsed.command](parsed.args)
    except SystemExit as e:  # argparse's --help (0) and usage errors (2): return them like any other exit code
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
