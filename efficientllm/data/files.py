"""Local data files: which files a path names, and how their bytes become text.

Why: three sources read files a user points at (pretraining `text_files`, FineWeb-Edu shards, SFT records). They
expand a path (one file, a folder, a list) the same way and decode UTF-8 the same way here, so a fix lands once.
Files exported from spreadsheets start with a UTF-8 byte-order mark; every reader drops it (codec `utf-8-sig`)
instead of refusing the file.

    python -c "from efficientllm.data.files import expand_paths; print(expand_paths('../shared/data', ('.jsonl',), \
label='demo'))"
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

PathArg = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
"""One path or a list of them."""


def expand_paths(paths: PathArg, suffixes: Sequence[str], *, label: str, recursive: bool = True,
                 error: type[ValueError] = ValueError) -> list[Path]:
    """The files `paths` names: files named directly, plus the files with one of `suffixes` under each named folder
    (sorted; the whole tree when `recursive`, else the folder's own files).

    A missing path raises FileNotFoundError; no paths, a folder with no such files or a file with another suffix
    raise `error` (a ValueError subclass the caller reports). Every message starts with `label`.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise error(f"{label}: no paths given")
    shown = " / ".join(suffixes)
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in (p.rglob("*") if recursive else p.iterdir())
                           if f.is_file() and f.suffix in suffixes)
            if not found:
                raise error(f"{label}: folder {p} holds no {shown} files")
            files.extend(found)
        elif p.is_file():
            if p.suffix not in suffixes:
                raise error(f"{label}: {p} is not one of {shown}")
            files.append(p)
        else:
            raise FileNotFoundError(f"{label}: {p} does not exist")
    return files


def decode_utf8(data: bytes) -> str:
    """`data` as UTF-8 text, a leading byte-order mark dropped (codec `utf-8-sig`).

    A UnicodeDecodeError's offsets index `data` itself, mark included, so callers count lines and columns in the
    bytes they hold (the codec alone would count from after the mark).
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
        raise UnicodeDecodeError("utf-8", data, e.start + skip, e.end + skip, e.reason) from None


def read_json_lines(path: Path, label: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a jsonl file, read line by line (bounded memory).

    A byte-order mark is accepted at the start of the file only. Non-UTF-8 bytes, malformed JSON and a line that is
    not a JSON object raise ValueError `<label>: <path>:<line>: ...`.
    """
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = decode_utf8(raw) if lineno == 1 else raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{label}: {path}:{lineno}: not valid UTF-8") from e
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{label}: {path}:{lineno}: malformed JSON: {e.msg}") from e
            if not isinstance(obj, dict):
                raise ValueError(f"{label}: {path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj
