"""Build the pretraining corpus: documents -> train/val split -> tokenizer -> packed blocks, written atomically.

This is what the `prepare` stage calls. `build_corpus` writes into `out_dir`:

    tokenizer/       the byte-level BPE (`AutoTokenizer.from_pretrained(out_dir / "tokenizer")`)
    train.npy        (n_blocks, block_len) uint16/uint32 token blocks of the train split
    val.npy          the same for the held-out split (validation perplexity)
    val_docs.jsonl   the held-out documents, one {"text": ...} per line (source for a cloze task)
    stats.json       counts, settings, versions and sha256 of the two arrays

Everything is built in a temporary folder next to `out_dir`, which then replaces `out_dir` by renaming, so a
failed or killed build never leaves a half-written `out_dir`. The same inputs give byte-identical arrays.

    python -c "from efficientllm.data.corpus import build_corpus as b; print(b('/tmp/corpus', source='stdlib_docs', \
source_kwargs={}, vocab_size=2048, block_len=128, val_fraction=0.05, seed=0, min_doc_chars=200, max_docs=None))"
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers

from efficientllm.atomic import atomic_dir
from efficientllm.checkpoint import file_digest
from efficientllm.data.packing import encode_documents, pack_blocks, save_blocks
from efficientllm.data.sources import SOURCES
from efficientllm.data.tokenizer import check_vocab_size, train_tokenizer

log = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"
TRAIN_BLOCKS_FILE = "train.npy"
VAL_BLOCKS_FILE = "val.npy"
VAL_DOCS_FILE = "val_docs.jsonl"
STATS_FILE = "stats.json"


def _unit_hash(seed: int, text: str) -> float:
    """A number in [0, 1) fixed by (seed, text): the same on every run, machine and PYTHONHASHSEED."""
    digest = hashlib.sha256(f"{seed}\0".encode() + text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_documents(docs: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split documents into (train, val), each document decided by a stable hash of (seed, text).

    A document goes to val when its hash falls below `val_fraction`, so the split of a document does not
    depend on the other documents or their order, and both lists keep the input order. With 2 or more
    documents both splits are non-empty: if one came out empty, the document whose hash is nearest the
    threshold moves over. Fewer than 2 documents raise ValueError.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(docs) < 2:
        raise ValueError(f"need at least 2 documents to split into train and val, got {len(docs)}")
    keys = [(_unit_hash(seed, d), d) for d in docs]
    is_val = [k[0] < val_fraction for k in keys]
    if not any(is_val):
        is_val[min(range(len(docs)), key=keys.__getitem__)] = True
    elif all(is_val):
        is_val[max(range(len(docs)), key=keys.__getitem__)] = False
    train = [d for d, v in zip(docs, is_val, strict=True) if not v]
    val = [d for d, v in zip(docs, is_val, strict=True) if v]
    return train, val


def _check_enough_tokens(split: str, n_tokens: int, block_len: int, hint: str) -> None:
    if n_tokens < block_len:
        raise ValueError(
            f"the {split} split has {n_tokens} tokens, fewer than one block: block_len={block_len} needs at least "
            f"{block_len} tokens; {hint}"
        )


def build_corpus(
    out_dir: str | Path,
    *,
    source: str,
    source_kwargs: Mapping[str, Any],
    vocab_size: int,
    block_len: int,
    val_fraction: float,
    seed: int,
    min_doc_chars: int,
    max_docs: int | None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Read `source`, split, train the tokenizer on train, pack both splits, write `out_dir`; return the stats.

    Raises ValueError for an unknown source (naming the allowed ones), a vocab_size below the byte-level
    minimum, fewer than 2 documents, or a split with too few tokens for one block of `block_len`.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; allowed: {', '.join(sorted(SOURCES))}")
    clash = {"min_doc_chars", "max_docs"} & set(source_kwargs)
    if clash:
        raise ValueError(f"source_kwargs must not set {', '.join(sorted(clash))}: pass them to build_corpus itself")
    check_vocab_size(vocab_size)
    if block_len < 2:
        raise ValueError(f"block_len must be >= 2 (one input and one target token), got {block_len}")
    out_dir = Path(out_dir)

    t0 = time.perf_counter()
    docs = list(SOURCES[source](min_doc_chars=min_doc_chars, max_docs=max_docs, **source_kwargs))
    if len(docs) < 2:
        raise ValueError(
            f"source {source!r} yielded {len(docs)} documents (min_doc_chars={min_doc_chars}, max_docs={max_docs}); "
            "need at least 2 to split into train and val"
        )
    train_docs, val_docs = split_documents(docs, val_fraction, seed)
    t1 = time.perf_counter()
    tokenizer = train_tokenizer(train_docs, vocab_size)
    t2 = time.perf_counter()
    train_ids = encode_documents(tokenizer, train_docs)
    val_ids = encode_documents(tokenizer, val_docs)
    _check_enough_tokens("validation", len(val_ids), block_len, "lower block_len, raise val_fraction or add documents")
    _check_enough_tokens("train", len(train_ids), block_len, "lower block_len or add documents")
    # dtype from the requested vocab_size, so it stays the same if the trainer returns fewer tokens
    train_blocks = pack_blocks(train_ids, block_len, vocab_size=vocab_size)
    val_blocks = pack_blocks(val_ids, block_len, vocab_size=vocab_size)
    t3 = time.perf_counter()
    log.info("read %d docs in %.1fs, tokenizer %.1fs, encode+pack %.1fs", len(docs), t1 - t0, t2 - t1, t3 - t2)

    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
        save_blocks(tmp / TRAIN_BLOCKS_FILE, train_blocks)
        save_blocks(tmp / VAL_BLOCKS_FILE, val_blocks)
        with (tmp / VAL_DOCS_FILE).open("w", encoding="utf-8") as f:
            for doc in val_docs:
                f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
        stats: dict[str, Any] = {
            "source": source,
            "source_kwargs": json.loads(json.dumps(dict(source_kwargs), default=str)),  # Paths as str
            **dict(provenance or {}),  # e.g. hub_commit: the commit of a hub source that was read
            "documents_train": len(train_docs),
            "documents_val": len(val_docs),
            "chars_train": sum(map(len, train_docs)),
            "chars_val": sum(map(len, val_docs)),
            "tokens_train": len(train_ids),
            "tokens_val": len(val_ids),
            "blocks_train": int(train_blocks.shape[0]),
            "blocks_val": int(val_blocks.shape[0]),
            "vocab_size": vocab_size,
            "vocab_size_trained": len(tokenizer),
            "block_len": block_len,
            "dtype": str(train_blocks.dtype),
            "val_fraction": val_fraction,
            "min_doc_chars": min_doc_chars,
            "max_docs": max_docs,
            "seed": seed,
            "python_version": platform.python_version(),  # the stdlib_docs text depends on it
            "tokenizers_version": tokenizers.__version__,
            "train_npy_sha256": file_digest(tmp / TRAIN_BLOCKS_FILE),
            "val_npy_sha256": file_digest(tmp / VAL_BLOCKS_FILE),
        }
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2, default=str) + "\n", encoding="utf-8")
    log.info("wrote %s in %.1fs", out_dir, time.perf_counter() - t0)
    return stats


def load_stats(out_dir: str | Path) -> dict[str, Any]:
    """The stats.json that `build_corpus` wrote into `out_dir`."""
    return json.loads((Path(out_dir) / STATS_FILE).read_text(encoding="utf-8"))
