"""A cloze task from held-out text: pick the true continuation of a passage among spans of other documents.

Why: the quantization axis needs a task score that moves with model quality and that even the tiny default model
(trained for a minute on CPU) scores above chance, offline. Each item is a context of `context_words` words cut
from a held-out document, its true next `continuation_words` words, and `n_choices - 1` distractor spans of the
same word count cut at random places in *other* held-out documents. lm-eval scores every choice by its
log-likelihood after the context (`tasks/efficientllm_cloze.yaml`, output_type multiple_choice), so chance is
1 / n_choices. A model that has learned only which words follow which already beats chance: the true span
continues the context's last word and topic, the distractors do not. Short continuations make that junction a
larger share of the evidence. Text is cut at whitespace and kept verbatim (newlines included); lm-eval joins
context and choice with one space, the same for every choice.

The held-out documents are `data/prepared/val_docs.jsonl` (the split no model trained on); the same seed gives
the same items on every machine.

    python -m stages.cloze      # the DVC stage: data/prepared/val_docs.jsonl -> data/cloze/test.jsonl
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from efficientllm.atomic import atomic_write_text
from efficientllm.data.files import read_json_lines

WORD_RE = re.compile(r"\S+")
CLOZE_FILE = "test.jsonl"
"""The items, one JSON object per line: id, context, choices, label."""
META_FILE = "meta.json"
"""Counts and settings of the build."""


def read_documents(path: str | Path) -> list[str]:
    """The `text` field of every line of a jsonl file (`files.read_json_lines`: a leading UTF-8 byte-order mark is
    dropped); errors name the file and line."""
    path = Path(path)
    docs = []
    for lineno, obj in read_json_lines(path, "cloze documents"):
        if not isinstance(obj.get("text"), str):
            raise ValueError(f"cloze documents: {path}:{lineno}: expected an object with a string field 'text'")
        docs.append(obj["text"])
    return docs


def _span(text: str, words: list[re.Match], start: int, n: int) -> str:
    """The verbatim text of words[start : start + n] (inner whitespace kept)."""
    return text[words[start].start() : words[start + n - 1].end()]


def build_cloze(
    docs: Sequence[str],
    *,
    n_choices: int = 4,
    context_words: int = 32,
    continuation_words: int = 4,
    items_per_doc: int = 1,
    max_items: int | None = None,
    max_choice_chars: int | None = None,
    seed: int = 1234,
    tries: int = 8,
) -> list[dict[str, Any]]:
    """Cloze items from `docs`: {"id", "context", "choices", "label"}, choices shuffled, label the true one's index.

    A document takes part as a source of items when it has at least context_words + continuation_words words,
    and as a source of distractors when it has at least continuation_words. Each item's distractors come from
    distinct documents other than its own, and differ from the true span. With `max_choice_chars`, spans longer
    than that (a URL, a line of code without spaces) are redrawn up to `tries` times, else left out: every choice
    must fit the model's context on its own (lm-eval scores it alone for acc_mutual_info). Raises ValueError when
    fewer than n_choices documents are usable (no item could be built) or when the settings are out of range.
    """
    if n_choices < 2:
        raise ValueError(f"n_choices must be >= 2, got {n_choices}")
    if context_words < 1 or continuation_words < 1 or items_per_doc < 1:
        raise ValueError("context_words, continuation_words and items_per_doc must be >= 1")
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1 or None, got {max_items}")
    rng = random.Random(seed)
    words = [list(WORD_RE.finditer(d)) for d in docs]
    donors = [i for i, w in enumerate(words) if len(w) >= continuation_words]
    need = context_words + continuation_words
    sources = [i for i, w in enumerate(words) if len(w) >= need]
    if len(donors) < n_choices or not sources:
        raise ValueError(
            f"only {len(sources)} documents have >= {need} words and {len(donors)} have >= {continuation_words}; "
            f"a {n_choices}-choice cloze needs at least one and {n_choices}: lower cloze.context_words or n_choices"
        )
    def fits(span: str) -> bool:
        return max_choice_chars is None or len(span) <= max_choice_chars

    items: list[dict[str, Any]] = []
    for d in sources:
        for k in range(items_per_doc):
            for _ in range(tries):
                cut = rng.randint(context_words, len(words[d]) - continuation_words)  # first word of the continuation
                true = _span(docs[d], words[d], cut, continuation_words)
                if fits(true):
                    break
            else:
                continue  # no short enough continuation in this document
            context = _span(docs[d], words[d], cut - context_words, context_words)
            others = [o for o in donors if o != d]
            choices = [true]
            for o in rng.sample(others, len(others)):
                if len(choices) == n_choices:
                    break
                for _ in range(tries):
                    start = rng.randint(0, len(words[o]) - continuation_words)
                    span = _span(docs[o], words[o], start, continuation_words)
                    if fits(span) and span not in choices:
                        choices.append(span)
                        break
            if len(choices) < n_choices:
                continue  # not enough distinct, short enough spans elsewhere: no fair item
            order = list(range(n_choices))
            rng.shuffle(order)
            items.append({
                "id": f"{d}-{k}",
                "context": context,
                "choices": [choices[j] for j in order],
                "label": order.index(0),
            })
            if max_items is not None and len(items) >= max_items:
                return items
    return items


def write_cloze(out_dir: str | Path, items: Sequence[dict[str, Any]], settings: dict[str, Any]) -> Path:
    """Write the items (`test.jsonl`) and `meta.json` into `out_dir`, each file atomically; returns the items file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
    atomic_write_text(out_dir / CLOZE_FILE, text)
    n_choices = len(items[0]["choices"]) if items else None
    meta = {"items": len(items), "n_choices": n_choices, "chance_acc": 1 / n_choices if n_choices else None,
            **settings}
    atomic_write_text(out_dir / META_FILE, json.dumps(meta, indent=1) + "\n")
    return out_dir / CLOZE_FILE
