"""Packing: documents -> one token stream with eos after each document -> fixed-length blocks on disk.

Why pack: every training step then sees exactly `batch_size * block_len` real tokens, with no padding, so
throughput (TT = tokens / parameter / s) counts only useful tokens and every variant trains on the same
tokens. Blocks are stored as `.npy` (uint16 while the vocabulary fits, half the bytes of int32) and read
back memory-mapped; `iterate_batches` turns them into seeded, shuffled `torch.LongTensor (B, T)` batches.

    python -c "from efficientllm.data.packing import pack_blocks; print(pack_blocks(list(range(10)), 4))"
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from transformers import PreTrainedTokenizerBase

if TYPE_CHECKING:
    import torch

ENCODE_BATCH_DOCS = 1024  # documents per encode_batch call: big enough for the Rust thread pool, bounded memory


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a `vocab_size` vocabulary (uint16 or uint32)."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def encode_documents(tokenizer: PreTrainedTokenizerBase, docs: Sequence[str]) -> np.ndarray:
    """Token ids of all `docs` as one 1-D stream, `eos_token_id` after each document (int64).

    Encodes in batches with the Rust backend (parallel) and adds no other special tokens.
    """
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no eos_token_id, which packing needs to separate documents")
    backend = tokenizer.backend_tokenizer  # the `tokenizers.Tokenizer`; its encode_batch skips per-call Python work
    pieces: list[np.ndarray] = []
    eos = np.array([eos_id], dtype=np.int64)
    for start in range(0, len(docs), ENCODE_BATCH_DOCS):
        for enc in backend.encode_batch(list(docs[start : start + ENCODE_BATCH_DOCS]), add_special_tokens=False):
            pieces.append(np.asarray(enc.ids, dtype=np.int64))
            pieces.append(eos)
    if not pieces:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(pieces)


def pack_blocks(token_ids: Sequence[int] | np.ndarray, block_len: int, *, vocab_size: int | None = None) -> np.ndarray:
    """Cut a token stream into consecutive blocks: an array (n_blocks, block_len); the remainder is dropped.

    The dtype is uint16 when the vocabulary has at most 65536 ids, else uint32. It follows `vocab_size` when
    given (so it does not depend on which ids happen to occur), else the largest id in the stream.
    Fewer than `block_len` tokens give an array with zero rows.
    """
    if block_len < 1:
        raise ValueError(f"block_len must be >= 1, got {block_len}")
    ids = np.asarray(token_ids)
    if ids.ndim != 1:
        raise ValueError(f"token_ids must be 1-D, got shape {ids.shape}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"token ids must be >= 0, got {ids.min()}")
    max_id = int(ids.max()) if ids.size else 0
    if vocab_size is None:
        vocab_size = max_id + 1
    elif max_id >= vocab_size:
        raise ValueError(f"token id {max_id} does not fit vocab_size={vocab_size}")
    n_blocks = ids.size // block_len
    return ids[: n_blocks * block_len].astype(token_dtype(vocab_size)).reshape(n_blocks, block_len)


def save_blocks(path: str | Path, blocks: np.ndarray) -> None:
    """Write blocks as a `.npy` file (no pickle)."""
    np.save(path, blocks, allow_pickle=False)


def load_blocks(path: str | Path) -> np.ndarray:
    """Blocks written by `save_blocks`, memory-mapped read-only: (n_blocks, block_len) uint16 or uint32."""
    blocks = np.load(path, mmap_mode="r", allow_pickle=False)
    if blocks.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D (n_blocks, block_len) array, got shape {blocks.shape}")
    return blocks


def iterate_batches(blocks: np.ndarray, batch_size: int, seed: int, steps: int) -> Iterator[torch.Tensor]:
    """Yield `steps` batches, each a `torch.LongTensor (batch_size, block_len)`, in a seeded shuffled order.

    The blocks are visited in a fresh permutation per epoch, and epochs follow each other without a gap, so a
    batch can straddle two epochs and every block is seen once per epoch. The sequence depends only on
    (`seed`, number of blocks, `batch_size`): the first k batches are the same whatever `steps` is.
    """
    import torch  # here, so building a corpus (the prepare stage) does not pay for importing torch

    n_blocks = len(blocks)
    if n_blocks == 0:
        raise ValueError("no blocks to iterate over")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    rng = np.random.default_rng(seed)
    order = np.zeros(0, dtype=np.int64)
    for _ in range(steps):
        while len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(n_blocks)])
        idx, order = order[:batch_size], order[batch_size:]
        yield torch.from_numpy(blocks[idx].astype(np.int64))  # (B, T); fancy indexing copies out of the memmap
