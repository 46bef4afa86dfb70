"""Rows as they were at git revisions or DVC experiments, read without touching the user's work tree.

`load_revision(rev)` opens the repository at `rev` through DVC's file system API (`dvc.api.DVCFileSystem`):
git-tracked files come from the git object store, DVC-tracked outs (the row files the pipeline writes,
listed in that revision's dvc.lock) from the DVC cache, or from the default DVC remote when the cache lacks
them. Nothing is checked out and nothing in the work tree is written. `rev` is anything git or DVC resolves:
a commit, a branch, a tag, `HEAD~3`, or a DVC experiment name (`dvc exp show`); 'workspace' means the row
files on disk now. `connect_revisions` loads several revisions into one report database, one `rev` each, so
the usual views (and `revision_diff`) compare them.

It lives in efficientllm.pipeline, the one DVC-aware package, and imports DVC inside `load_revision`: reading a
DVC out at a past revision is DVC's job (lock file, cache layout, remotes), so the API is used rather than
re-implemented, and nothing that only reads the row files on disk pays for the import.

    efficientllm sql --rev HEAD~1 --rev HEAD "SELECT rev, cell, mean FROM scores WHERE metric = 'al_s'"
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import duckdb

from efficientllm import records
from efficientllm.examples import EXAMPLES_FILE
from efficientllm.report import views


class RevisionError(ValueError):
    """A revision that cannot be read: unknown, not a DVC repository, or its row files are not in any cache."""


def _typed(text: str, where: str) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise records.RowError(f"corrupt row file {where}: {e}") from None
    if not isinstance(obj, dict):
        raise records.RowError(f"corrupt row file {where}: expected a JSON object, got {type(obj).__name__}")
    try:
        row = records.make_row(**obj)
    except records.RowError as e:
        raise records.RowError(f"corrupt row file {where}: {e}") from None
    return views.typed_row(row, where)


def load_revision(rev: str, repo: str | os.PathLike = ".",
                  pattern: str = views.DEFAULT_ROWS_GLOB) -> views.RevisionRows:
    """The row files matching `pattern` (relative to the repository root) as they were at `rev`.

    Each row's 'row_file' is `<rev>:<path>`. Raises `RevisionError` for an unknown revision or a row file no
    cache or remote holds, and `records.RowError` naming `<rev>:<path>` for a file that is not a valid row.
    """
    repo = Path(repo)
    if rev == views.WORKSPACE:
        return views.load_workspace(str(repo / pattern))

    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException
    from dvc.scm import resolve_rev

    try:
        fs = DVCFileSystem(str(repo), rev=rev)
        commit = resolve_rev(fs.repo.scm, rev)
        paths = sorted(fs.glob(pattern))
    except DvcException as e:
        raise RevisionError(f"cannot open {repo} at revision {rev!r}: {e}") from None
    rows, examples = [], {}
    try:
        for path in paths:
            where = f"{rev}:{path}"
            try:
                text = fs.read_text(path, encoding="utf-8")
            except FileNotFoundError:
                raise RevisionError(
                    f"row file {where} is tracked by DVC but neither the local cache nor a DVC remote has it; "
                    "fetch it first (a DVC experiment: `dvc exp pull <remote> <name>`; a commit: `dvc fetch -A` "
                    "or `dvc pull` with that commit checked out elsewhere)"
                ) from None
            except (OSError, UnicodeDecodeError, DvcException) as e:
                raise RevisionError(f"cannot read row file {where}: {e}") from None
            rows.append(_typed(text, where))
            beside = f"{path.rsplit('/', 1)[0]}/{EXAMPLES_FILE}" if "/" in path else EXAMPLES_FILE
            try:  # the per-example file of an older revision may not exist (or not be fetched): its tests then go
                examples[where] = fs.read_text(beside, encoding="utf-8")  # without examples, as before it existed
            except (OSError, UnicodeDecodeError, DvcException):
                pass
    finally:
        fs.repo.close()
    return views.RevisionRows(rev, commit, rows, examples)


def load_revisions(revs: Sequence[str], repo: str | os.PathLike = ".",
                   pattern: str = views.DEFAULT_ROWS_GLOB) -> list[views.RevisionRows]:
    """`load_revision` for each of `revs`, in order; a revision given twice raises `RevisionError`."""
    duplicates = sorted({r for r in revs if list(revs).count(r) > 1})
    if duplicates:
        raise RevisionError(f"revision given more than once: {', '.join(duplicates)}")
    return [load_revision(rev, repo, pattern) for rev in revs]


def connect_revisions(revs: Sequence[str], repo: str | os.PathLike = ".", pattern: str = views.DEFAULT_ROWS_GLOB,
                      read_only: bool = True,
                      assumptions: views.Assumptions | None = None) -> duckdb.DuckDBPyConnection:
    """A report database (`views.connect_loaded`) holding the rows of every revision in `revs`, in that order;
    `revision_diff` compares each later revision with the first."""
    return views.connect_loaded(load_revisions(revs, repo, pattern), read_only=read_only, assumptions=assumptions)
