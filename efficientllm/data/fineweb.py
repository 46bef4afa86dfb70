"""The FineWeb-Edu source: the paper's pretraining corpus, from the Hugging Face hub or from local files.

FineWeb-Edu (HuggingFaceFW/fineweb-edu) is web text kept by an educational-quality classifier. Each record has
the columns `text, id, dump, url, date, file_path, language, language_score, token_count, score, int_score`:
`int_score` is the classifier's score rounded to 0..5 (the published dataset already keeps `int_score >= 3`;
`fineweb-edu-score-2` keeps >= 2), `token_count` the document's length in GPT-2 tokens.

`fineweb_edu` reads either
- the hub, streamed with `datasets.load_dataset(hub_id, name=config_name, split=..., streaming=True)`, so a
  budget of a few billion tokens never downloads the whole dataset (needs network: unset HF_HUB_OFFLINE and
  HF_DATASETS_OFFLINE, which the paper profile does), or
- local files: `.parquet` shards (the dataset's own format) and `.jsonl` (one JSON object per line; a leading
  UTF-8 byte-order mark is dropped), a folder standing for the shards under it in sorted order.

It keeps documents with `int_score >= min_int_score` (when the column exists), then applies the common source
contract (`select_documents`: drop short and duplicate documents, stop after `max_docs`), then stops at a budget
of characters (`max_chars`) or of the dataset's own GPT-2 tokens (`max_source_tokens`, summed from
`token_count`). Bad input raises ValueError naming the file: a file without a `text` column (the columns
found are listed), an empty shard, a truncated or corrupt parquet file.

    python -c "from efficientllm.data.fineweb import fineweb_edu; \
print(sum(1 for _ in fineweb_edu(paths=['../shared/data/fineweb_edu_sample.jsonl'])))"
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from efficientllm.data.files import PathArg, expand_paths, read_json_lines
from efficientllm.data.selection import select_documents

if TYPE_CHECKING:
    from efficientllm.config import PrepareConfig

log = logging.getLogger(__name__)

HUB_ID = "HuggingFaceFW/fineweb-edu"
"""The dataset's hub id."""
DEFAULT_CONFIG = "sample-10BT"
"""A 10B-GPT-2-token random sample; other configs: sample-100BT, sample-350BT, default, CC-MAIN-<dump>."""
COLUMNS = ("text", "id", "dump", "url", "date", "file_path", "language", "language_score", "token_count", "score",
           "int_score")
"""The dataset's columns (parquet schema of every config)."""
FILE_SUFFIXES = (".parquet", ".jsonl")
PARQUET_BATCH_ROWS = 1024  # rows per record batch read from a shard: bounded memory, few Python round trips
_TRUE = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub and datasets read their boolean environment variables


class _Record:
    """One document and the two optional columns the source uses."""

    __slots__ = ("int_score", "text", "token_count")

    def __init__(self, text: str, int_score: Any, token_count: Any) -> None:
        self.text, self.int_score, self.token_count = text, int_score, token_count


# --- local files -------------------------------------------------------------------------------------------


def _check_text_column(where: str, columns: Iterable[str]) -> None:
    columns = list(columns)
    if "text" not in columns:
        raise ValueError(f"fineweb_edu: {where} has no 'text' column (columns: {', '.join(columns) or 'none'})")


def _open_parquet(path: Path) -> Any:
    """A `pyarrow.parquet.ParquetFile` whose footer reads, with a `text` column and rows, else ValueError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        shard = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:  # bad magic bytes, a cut-off footer, an unreadable file
        raise ValueError(f"fineweb_edu: {path} is not a readable parquet file (truncated or corrupt?): {e}") from e
    _check_text_column(str(path), shard.schema_arrow.names)
    if shard.metadata.num_rows == 0:
        raise ValueError(f"fineweb_edu: {path} is an empty shard (0 rows)")
    return shard


def _read_parquet(path: Path) -> Iterator[_Record]:
    """Records of one parquet shard, read in record batches; corrupt, empty or text-less shards raise ValueError."""
    import pyarrow as pa

    shard = _open_parquet(path)
    names = shard.schema_arrow.names
    wanted = [c for c in ("text", "int_score", "token_count") if c in names]
    try:
        for batch in shard.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
            cols = {name: batch.column(name).to_pylist() for name in wanted}
            empty = [None] * batch.num_rows
            for text, score, n_tok in zip(cols["text"], cols.get("int_score", empty), cols.get("token_count", empty),
                                          strict=True):
                yield _Record(text, score, n_tok)
    except (pa.ArrowException, OSError) as e:  # a damaged data page surfaces only when it is read
        raise ValueError(f"fineweb_edu: {path}: cannot read its data (truncated or corrupt?): {e}") from e


def _read_jsonl(path: Path) -> Iterator[_Record]:
    n = 0
    for lineno, obj in read_json_lines(path, "fineweb_edu"):
        _check_text_column(f"{path}:{lineno}", obj)
        n += 1
        yield _Record(obj["text"], obj.get("int_score"), obj.get("token_count"))
    if n == 0:
        raise ValueError(f"fineweb_edu: {path} is an empty shard (no JSON lines)")


def _read_files(files: list[Path]) -> Iterator[tuple[str, _Record]]:
    readers = {".parquet": _read_parquet, ".jsonl": _read_jsonl}
    for path in files:
        for record in readers[path.suffix](path):
            yield str(path), record


# --- the hub -----------------------------------------------------------------------------------------------


def _offline_flags() -> list[str]:
    return [k for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(k, "").upper() in _TRUE]


def _read_hub(hub_id: str, config_name: str | None, split: str, revision: str | None) -> Iterator[tuple[str, _Record]]:
    """Stream the records of one hub config; nothing is downloaded ahead of what is read."""
    flags = _offline_flags()
    if flags:
        raise ValueError(
            f"fineweb_edu: reading {hub_id} ({config_name}) needs the network, but {' and '.join(flags)} "
            "is set: export HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 (the paper profile does), "
            "or give local parquet / jsonl files in prepare.source_paths"
        )
    from datasets import load_dataset

    where = f"{hub_id} ({config_name}, {split})"
    stream = load_dataset(hub_id, name=config_name, split=split, revision=revision, streaming=True)
    features = getattr(stream, "features", None)
    if features is not None:  # known up front for parquet datasets: fail before the first request for rows
        _check_text_column(where, features)
    n = 0
    for row in stream:
        if n == 0:
            _check_text_column(where, row)
        n += 1
        yield where, _Record(row["text"], row.get("int_score"), row.get("token_count"))
    if n == 0:
        raise ValueError(f"fineweb_edu: {where} yielded no rows")


# --- the source --------------------------------------------------------------------------------------------


def _scored(records: Iterable[tuple[str, _Record]], min_int_score: int | None,
            need_token_count: bool) -> Iterator[_Record]:
    """Check each record's types, keep those with int_score >= min_int_score (when the column exists)."""
    warned: set[str] = set()
    for where, r in records:
        if not isinstance(r.text, str):
            raise ValueError(f"fineweb_edu: {where}: 'text' is {type(r.text).__name__}, not a string")
        if need_token_count and not isinstance(r.token_count, int):
            raise ValueError(
                f"fineweb_edu: {where}: max_source_tokens sums the 'token_count' column, which this record lacks "
                f"(got {r.token_count!r}); use max_chars or max_docs as the budget instead"
            )
        if min_int_score is not None:
            if r.int_score is None:
                if where not in warned:
                    warned.add(where)
                    log.warning("fineweb_edu: %s has no int_score; min_int_score=%s not applied to it",
                                where, min_int_score)
            elif r.int_score < min_int_score:
                continue
        yield r


def fineweb_edu(
    *,
    min_doc_chars: int = 1,
    max_docs: int | None = None,
    paths: PathArg | None = None,
    hub_id: str = HUB_ID,
    config_name: str | None = DEFAULT_CONFIG,
    split: str = "train",
    revision: str | None = None,
    min_int_score: int | None = None,
    max_chars: int | None = None,
    max_source_tokens: int | None = None,
) -> Iterator[str]:
    """FineWeb-Edu documents, from local `paths` (parquet / jsonl / folders) or, when `paths` is empty, the hub.

    Order: records in file (or stream) order -> `int_score >= min_int_score` -> `select_documents` (short,
    duplicate, `max_docs`) -> budget. The budget stops the source once the kept documents reach `max_chars`
    characters or `max_source_tokens` GPT-2 tokens (the dataset's `token_count` column, required then); the
    document that reaches it is the last one kept. Local paths are checked before the first document is read.
    """
    for name, value in (("max_chars", max_chars), ("max_source_tokens", max_source_tokens)):
        if value is not None and value < 1:
            raise ValueError(f"fineweb_edu: {name} must be >= 1 or None, got {value}")
    if paths:
        files = expand_paths(paths, FILE_SUFFIXES, label="fineweb_edu")
        for f in files:  # footers only: a bad shard fails now, not hours into a stream
            if f.suffix == ".parquet":
                _open_parquet(f)
        records: Iterable[tuple[str, _Record]] = _read_files(files)
    else:
        if not hub_id:
            raise ValueError("fineweb_edu: give local paths or a hub_id")
        records = _read_hub(hub_id, config_name, split, revision)
    scored = _scored(records, min_int_score, need_token_count=max_source_tokens is not None)

    # select_documents sees only texts; the token counts wait in `pending` until their text comes out (it yields
    # the very str objects it was given, in order, so identity pairs them up again).
    pending: deque[_Record] = deque()

    def texts() -> Iterator[str]:
        for r in scored:
            pending.append(r)
            yield r.text

    def budgeted() -> Iterator[str]:
        n_chars = n_tokens = 0
        for doc in select_documents(texts(), min_doc_chars=min_doc_chars, max_docs=max_docs):
            r = pending.popleft()
            while r.text is not doc:  # dropped as short or duplicate
                r = pending.popleft()
            yield doc
            n_chars += len(doc)
            n_tokens += r.token_count or 0
            if (max_chars is not None and n_chars >= max_chars) or (
                max_source_tokens is not None and n_tokens >= max_source_tokens
            ):
                return

    return budgeted()


def fineweb_source_kwargs(cfg: PrepareConfig) -> dict[str, Any]:
    """The `source_kwargs` of `fineweb_edu` from a `PrepareConfig` (the prepare stage's settings)."""
    return {
        "paths": list(cfg.source_paths) or None,
        "hub_id": cfg.hub_id,
        "config_name": cfg.hub_config,
        "split": cfg.hub_split,
        "revision": cfg.hub_revision,
        "min_int_score": cfg.min_int_score,
        "max_chars": cfg.max_chars,
        "max_source_tokens": cfg.max_source_tokens,
    }
