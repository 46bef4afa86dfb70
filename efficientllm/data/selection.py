"""The document-source contract's shared part: drop short and duplicate documents, stop after `max_docs`.

Why a module of its own: every pretraining source (`sources.py`, `fineweb.py`) ends in `select_documents`, and
`sources.py` registers the FineWeb-Edu source, so keeping it here lets both import it without importing each other.

    python -c "from efficientllm.data.selection import select_documents as s; print(list(s(['a b', 'a  b', 'c'], \
min_doc_chars=1, max_docs=None)))"
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator


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
