"""Document sources for pretraining: a registry from slug to a function that yields plain-text documents.

Every source has the same contract, so `build_corpus` and the `prepare` stage treat them alike:

    source(*, min_doc_chars: int, max_docs: int | None, **source_kwargs) -> Iterator[str]

It yields documents in a deterministic order, drops documents shorter than `min_doc_chars` (after stripping),
drops exact duplicates (compared after collapsing whitespace) and stops after `max_docs`. `select_documents`
does those three things, so a new source (FineWeb-Edu, OpenO1, medical-o1) only has to read its raw texts
and add one entry to `SOURCES`.

Sources here:
- `stdlib_docs`: real English technical prose that needs no download, so the whole pipeline runs offline:
  the language-reference topics every CPython carries (`pydoc_data.topics`) plus the module, class and
  function docstrings of the standard library, read with `ast` (nothing is imported).
- `text_files`: local `.txt` files (one file = one document) and `.jsonl` files (one JSON object per line,
  the document in its `text` field).
- `fineweb_edu` (efficientllm/data/fineweb.py): FineWeb-Edu from the hub or local parquet / jsonl shards.

    python -c "from efficientllm.data.sources import stdlib_docs; print(sum(1 for _ in stdlib_docs()))"
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sysconfig
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from efficientllm.data.fineweb import fineweb_edu

# Folders of the standard library that hold tests, an IDE or demos, not library documentation.
STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__"}
)
TEXT_FILE_SUFFIXES = (".txt", ".jsonl")


def _normalised_hash(text: str) -> bytes:
    """A digest that is equal for texts that differ only in whitespace; stable across runs and machines."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).digest()


def select_documents(docs: Iterable[str], *, min_doc_chars: int, max_docs: int | None) -> Iterator[str]:
    """Drop short and duplicate documents and stop after `max_docs`, keeping the input order.

    A document is kept when `len(doc.strip()) >= min_doc_chars` and no earlier document has the same text up
    to whitespace. `max_docs=None` keeps all of them.
    """
    if min_doc_chars < 0:
        raise ValueError(f"min_doc_chars must be >= 0, got {min_doc_chars}")
    if max_docs is not None and max_docs < 1:
        raise ValueError(f"max_docs must be >= 1 or None, got {max_docs}")

    def selected() -> Iterator[str]:  # the checks above run at call time, the reading lazily
        seen: set[bytes] = set()
        n_kept = 0
        for doc in docs:
            if max_docs is not None and n_kept >= max_docs:
                return
            if len(doc.strip()) < min_doc_chars:
                continue
            digest = _normalised_hash(doc)
            if digest in seen:
                continue
            seen.add(digest)
            n_kept += 1
            yield doc

    return selected()


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


def _expand_paths(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files named directly, plus the .txt / .jsonl files under named folders (sorted); missing paths raise."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("text_files: no paths given")
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_FILE_SUFFIXES)
            if not found:
                raise ValueError(f"text_files: folder {p} holds no {' / '.join(TEXT_FILE_SUFFIXES)} files")
            files.extend(found)
        elif p.is_file():
            if p.suffix not in TEXT_FILE_SUFFIXES:
                raise ValueError(f"text_files: {p} is not one of {' / '.join(TEXT_FILE_SUFFIXES)}")
            files.append(p)
        else:
            raise FileNotFoundError(f"text_files: {p} does not exist")
    return files


def _read_txt(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"text_files: {path}:{line}: not valid UTF-8 (byte offset {e.start})") from e
    if not text.strip():
        raise ValueError(f"text_files: {path} is empty")
    return text


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    n_records = 0
    with path.open("rb") as f:
        for lineno, raw_line in enumerate(f, start=1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"text_files: {path}:{lineno}: not valid UTF-8") from e
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"text_files: {path}:{lineno}: malformed JSON: {e.msg}") from e
            if not isinstance(record, dict):
                raise ValueError(f"text_files: {path}:{lineno}: expected a JSON object, got {type(record).__name__}")
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
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
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
    files = _expand_paths(paths)

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
