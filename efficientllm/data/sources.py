"""Document sources for pretraining: a registry from slug to a function that yields plain-text documents.

Every source has the same contract, so `build_corpus` and the `prepare` stage treat them alike:

    source(*, min_doc_chars: int, max_docs: int | None, **source_kwargs) -> Iterator[str]

It yields documents in a deterministic order, drops documents shorter than `min_doc_chars` (after stripping),
drops exact duplicates (compared after collapsing whitespace) and stops after `max_docs`. `select_documents`
(efficientllm/data/selection.py) does those three things, so a new source only has to read its raw texts and
add one entry to `SOURCES`.

Sources here:
- `stdlib_docs`: real English technical prose that needs no download, so the whole pipeline runs offline:
  the language-reference topics every CPython carries (`pydoc_data.topics`) plus the module, class and
  function docstrings of the standard library, read with `ast` (nothing is imported).
- `text_files`: local `.txt` files (one file = one document) and `.jsonl` files (one JSON object per line,
  the document in its `text` field); a leading UTF-8 byte-order mark is dropped.
- `fineweb_edu` (efficientllm/data/fineweb.py): FineWeb-Edu from the hub or local parquet / jsonl shards.

    python -c "from efficientllm.data.sources import stdlib_docs; print(sum(1 for _ in stdlib_docs()))"
"""

from __future__ import annotations

import ast
import os
import sysconfig
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from efficientllm.data.files import PathArg, decode_utf8, expand_paths, read_json_lines
from efficientllm.data.fineweb import fineweb_edu
from efficientllm.data.selection import select_documents

# Folders of the standard library that hold tests, an IDE or demos, not library documentation.
STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__"}
)
TEXT_FILE_SUFFIXES = (".txt", ".jsonl")


# --- stdlib_docs -------------------------------------------------------------------------------------------


def _stdlib_py_files(stdlib_dir: Path) -> list[Path]:
    """The standard library's .py files in sorted path order, without tests, demos and installed packages."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(stdlib_dir):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_SKIP_DIRS]  # pruned: never walked into
        files.extend(Path(dirpath) / name for name in filenames if name.endswith(".py"))
    return sorted(files)


def _docstrings(path: Path) -> Iterator[str]:
    """Module, class and function docstrings of one file, cleaned with `inspect.cleandoc`; none if it won't parse."""
    try:
        source = path.read_bytes()  # bytes, so ast honours the file's own encoding declaration
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SyntaxWarning for invalid escapes in old modules
            tree = ast.parse(source, filename=str(path))
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return
    for node in ast.walk(tree):  # breadth-first, in source order within each level: deterministic
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)  # clean=True is inspect.cleandoc
            if doc:
                yield doc


def _pydoc_topics() -> Iterator[str]:
    """The language reference topics that `help()` shows, in sorted topic order."""
    from pydoc_data.topics import topics  # a plain dict of strings that ships with every CPython

    for key in sorted(topics):
        yield topics[key].strip()


def stdlib_docs(*, min_doc_chars: int = 200, max_docs: int | None = None, include_topics: bool = True) -> Iterator[str]:
    """Real text with no download: the pydoc language-reference topics, then the stdlib docstrings.

    Files are read in sorted path order from `sysconfig.get_paths()["stdlib"]`, skipping the folders in
    `STDLIB_SKIP_DIRS` and files that do not parse. The exact text depends on the Python version, which
    `build_corpus` records in its stats.
    """

    def raw() -> Iterator[str]:
        if include_topics:
            yield from _pydoc_topics()
        for path in _stdlib_py_files(Path(sysconfig.get_paths()["stdlib"])):
            yield from _docstrings(path)

    return select_documents(raw(), min_doc_chars=min_doc_chars, max_docs=max_docs)


# --- text_files --------------------------------------------------------------------------------------------


def _read_txt(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = decode_utf8(data)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"text_files: {path}:{line}: not valid UTF-8 (byte offset {e.start})") from e
    if not text.strip():
        raise ValueError(f"text_files: {path} is empty")
    return text


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    n_records = 0
    for lineno, record in read_json_lines(path, "text_files"):
        if text_field not in record:
            raise ValueError(
                f"text_files: {path}:{lineno}: no {text_field!r} field (fields: {', '.join(sorted(record))})"
            )
        text = record[text_field]
        if not isinstance(text, str):
            raise ValueError(f"text_files: {path}:{lineno}: {text_field!r} is {type(text).__name__}, not a string")
        n_records += 1
        yield text
    if n_records == 0:
        raise ValueError(f"text_files: {path} is empty (no JSON lines)")


def text_files(
    paths: PathArg,
    *,
    min_doc_chars: int = 1,
    max_docs: int | None = None,
    text_field: str = "text",
) -> Iterator[str]:
    """Documents from local files: each `.txt` file is one document, each `.jsonl` line one document.

    `paths` is one path or a list; a folder stands for the .txt / .jsonl files under it, in sorted order.
    Raises FileNotFoundError for a missing path and ValueError (naming the file, and the line for .jsonl) for
    non-UTF-8 bytes, malformed JSON, a missing or non-string `text_field`, or an empty file. All paths are
    checked before the first document is yielded.
    """
    files = expand_paths(paths, TEXT_FILE_SUFFIXES, label="text_files")

    def raw() -> Iterator[str]:
        for path in files:
            if path.suffix == ".jsonl":
                yield from _read_jsonl(path, text_field)
            else:
                yield _read_txt(path)

    return select_documents(raw(), min_doc_chars=min_doc_chars, max_docs=max_docs)


SourceFn = Callable[..., Iterator[str]]

SOURCES: dict[str, SourceFn] = {
    "stdlib_docs": stdlib_docs,
    "text_files": text_files,
    "fineweb_edu": fineweb_edu,  # efficientllm/data/fineweb.py: the hub (streamed) or local parquet / jsonl
}
"""Slug -> document source. Each takes `min_doc_chars` and `max_docs` keywords plus its own `source_kwargs`."""
