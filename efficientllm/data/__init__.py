"""Pretraining data: document sources, the train/val split, a byte-level BPE tokenizer, packed token blocks.

`build_corpus` (what the `prepare` stage calls) ties them together; the pretrain stage reads its outputs with
`load_blocks` + `iterate_batches` and `AutoTokenizer.from_pretrained(out_dir / "tokenizer")`.

    python -c "from efficientllm.data import SOURCES; print(sorted(SOURCES))"
"""

from efficientllm.data.corpus import (
    STATS_FILE,
    TOKENIZER_DIR,
    TRAIN_BLOCKS_FILE,
    VAL_BLOCKS_FILE,
    VAL_DOCS_FILE,
    build_corpus,
    load_stats,
    split_documents,
)
from efficientllm.data.packing import (
    encode_documents,
    iterate_batches,
    load_blocks,
    pack_blocks,
    save_blocks,
    token_dtype,
)
from efficientllm.data.selection import select_documents
from efficientllm.data.sources import SOURCES, stdlib_docs, text_files
from efficientllm.data.tokenizer import EOS_TOKEN, MIN_VOCAB_SIZE, PAD_TOKEN, check_vocab_size, train_tokenizer

__all__ = [
    "EOS_TOKEN",
    "MIN_VOCAB_SIZE",
    "PAD_TOKEN",
    "SOURCES",
    "STATS_FILE",
    "TOKENIZER_DIR",
    "TRAIN_BLOCKS_FILE",
    "VAL_BLOCKS_FILE",
    "VAL_DOCS_FILE",
    "build_corpus",
    "check_vocab_size",
    "encode_documents",
    "iterate_batches",
    "load_blocks",
    "load_stats",
    "pack_blocks",
    "save_blocks",
    "select_documents",
    "split_documents",
    "stdlib_docs",
    "text_files",
    "token_dtype",
    "train_tokenizer",
]
