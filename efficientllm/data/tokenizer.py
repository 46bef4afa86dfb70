"""A byte-level BPE tokenizer trained on the corpus's train split, wrapped as a transformers fast tokenizer.

Why train one: the pretraining axis compares architectures at small scale on an offline corpus, and a
small vocabulary (a few thousand tokens) keeps the embedding from dominating a tiny model's parameter
count, which TT (tokens / parameter / s) divides by. Byte-level means every string round-trips, with no
unknown characters. Training uses only the train split, so nothing about the validation text leaks in.

`<|endoftext|>` is bos, eos and unk (GPT-2 style) and separates documents when packing; `<|pad|>` pads.
The result saves with `save_pretrained(dir)` and loads with `AutoTokenizer.from_pretrained(dir)`.

    python -c "from efficientllm.data.tokenizer import train_tokenizer; print(train_tokenizer(['a b c'] * 9, 300))"
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)  # ids 0 and 1, in this order
N_BYTES = 256
MIN_VOCAB_SIZE = N_BYTES + len(SPECIAL_TOKENS)


def check_vocab_size(vocab_size: int) -> None:
    """Raise ValueError unless `vocab_size` has room for the 256 byte tokens plus the special tokens."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least {MIN_VOCAB_SIZE} "
            f"({N_BYTES} bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and return it as a `PreTrainedTokenizerFast`.

    The vocabulary has at most `vocab_size` entries (fewer when the texts have fewer pairs seen at least
    `min_frequency` times). The same texts in the same order give the same vocabulary and merges.
    """
    check_vocab_size(vocab_size)
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")

    bpe = Tokenizer(models.BPE())
    # GPT-2 pre-tokenisation: split on the usual regex, map bytes to printable characters, no prefix space,
    # so decode(encode(text)) == text for every string.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even those the texts lack
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)

    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,  # would rewrite " ." to "." and break the byte-level round trip
    )
