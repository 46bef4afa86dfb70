"""Tests for efficientllm.data: sources, split, tokenizer, packing and the corpus build, all small and offline.

OMP_WAIT_POLICY=PASSIVE python -m pytest tests/test_data.py -q
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import efficientllm.data.corpus as corpus_mod
from efficientllm.data import (
    EOS_TOKEN,
    MIN_VOCAB_SIZE,
    PAD_TOKEN,
    SOURCES,
    build_corpus,
    encode_documents,
    iterate_batches,
    load_blocks,
    load_stats,
    pack_blocks,
    save_blocks,
    select_documents,
    split_documents,
    stdlib_docs,
    text_files,
    train_tokenizer,
)
from efficientllm.data.cloze import read_documents
from efficientllm.data.sources import STDLIB_SKIP_DIRS, _stdlib_py_files

SMALL = {"vocab_size": 300, "block_len": 32, "val_fraction": 0.2, "seed": 0, "min_doc_chars": 100, "max_docs": 150}


def _norm_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return list(stdlib_docs(min_doc_chars=100, max_docs=200))


@pytest.fixture(scope="module")
def tokenizer(docs):
    return train_tokenizer(docs, vocab_size=400)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("built") / "corpus"
    stats = build_corpus(out, source="stdlib_docs", source_kwargs={}, **SMALL)
    return out, stats


# --- sources -----------------------------------------------------------------------------------------------


def test_stdlib_docs_real_deduplicated_deterministic(docs):
    from pydoc_data.topics import topics

    assert len(docs) == 200
    assert all(isinstance(d, str) and len(d.strip()) >= 100 for d in docs)
    assert len({_norm_hash(d) for d in docs}) == len(docs)
    topic_texts = {t.strip() for t in topics.values()}
    assert any(d in topic_texts for d in docs) and any(d not in topic_texts for d in docs)
    assert any("assert" in d for d in docs)  # the language reference is English prose about Python
    assert list(stdlib_docs(min_doc_chars=100, max_docs=200)) == docs


def test_stdlib_files_skip_tests_and_packages():
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = _stdlib_py_files(root)
    assert len(files) > 100 and files == sorted(files)
    assert not any(set(f.relative_to(root).parts) & STDLIB_SKIP_DIRS for f in files)


def test_stdlib_docs_reads_docstrings_without_importing(tmp_path, monkeypatch):
    (tmp_path / "mod.py").write_text(
        '"""Module doc, long enough."""\n'
        "raise SystemExit('importing would exit')\n"
        "class K:\n    '''Class doc,\n       indented continuation.'''\n"
        "    def m(self):\n        '''Module doc,   long enough.'''\n"  # a whitespace-only duplicate: dropped
        "async def f():\n    '''Async function doc.'''\n"
    )
    (tmp_path / "broken.py").write_text('"""Never read."""\ndef (:\n')
    for skipped in ("test", "site-packages", "idlelib"):
        (tmp_path / skipped).mkdir()
        (tmp_path / skipped / "x.py").write_text('"""Skipped folder doc."""\n')
    monkeypatch.setattr("sysconfig.get_paths", lambda: {"stdlib": str(tmp_path)})
    got = list(stdlib_docs(min_doc_chars=10, include_topics=False))
    assert got == ["Module doc, long enough.", "Class doc,\nindented continuation.", "Async function doc."]


def test_select_documents_filters_dedups_caps():
    raw = ["short", "a  long document", "a long\n document", "another long one", "third long one!"]
    assert list(select_documents(raw, min_doc_chars=10, max_docs=None)) == [raw[1], raw[3], raw[4]]
    assert list(select_documents(raw, min_doc_chars=10, max_docs=2)) == [raw[1], raw[3]]
    with pytest.raises(ValueError, match="max_docs"):
        select_documents(raw, min_doc_chars=0, max_docs=0)


def test_text_files_txt_jsonl_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("first document, from a txt file\n", encoding="utf-8")
    lines = [json.dumps({"text": "jsonl doc one", "id": 1}), "", json.dumps({"text": "jsonl doc two ünïcode"})]
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "ignored.csv").write_text("x\n")
    expected = ["first document, from a txt file\n", "jsonl doc one", "jsonl doc two ünïcode"]
    assert list(text_files([tmp_path / "a.txt", str(tmp_path / "b.jsonl")])) == expected
    assert list(text_files(tmp_path)) == expected
    assert list(text_files(tmp_path, min_doc_chars=14, max_docs=1)) == expected[:1]


def test_text_files_and_cloze_documents_with_a_byte_order_mark(tmp_path):
    bom = b"\xef\xbb\xbf"  # spreadsheet exports and some editors start UTF-8 files with it
    (tmp_path / "a.txt").write_bytes(bom + "a text document, ünïcode\n".encode())
    (tmp_path / "b.jsonl").write_bytes(bom + b'{"text": "jsonl doc one"}\n{"text": "jsonl doc two"}\n')
    assert list(text_files(tmp_path)) == ["a text document, ünïcode\n", "jsonl doc one", "jsonl doc two"]
    assert read_documents(tmp_path / "b.jsonl") == ["jsonl doc one", "jsonl doc two"]  # the cloze task's reader
    (tmp_path / "c.txt").write_bytes(bom + b"line one\ncaf\xe9\n")  # errors still count from the file start
    with pytest.raises(ValueError, match=r"c\.txt:2: not valid UTF-8 \(byte offset 15\)"):
        list(text_files(tmp_path / "c.txt"))


def test_text_files_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        text_files([tmp_path / "nope.txt"])

    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n\n{"text": broken}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: malformed JSON"):
        list(text_files(bad_json))

    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text('{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"nofield\.jsonl:1: no 'text' field \(fields: body\)"):
        list(text_files(no_field))

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("line one\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt:2: not valid UTF-8"):
        list(text_files(latin1))
    latin1_jsonl = tmp_path / "latin1.jsonl"
    latin1_jsonl.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin1\.jsonl:2: not valid UTF-8"):
        list(text_files(latin1_jsonl))

    for name in ("empty.txt", "empty.jsonl"):
        (tmp_path / name).write_text("\n  \n", encoding="utf-8")
        with pytest.raises(ValueError, match=re.escape(f"{name} is empty")):
            list(text_files(tmp_path / name))

    (tmp_path / "data.csv").write_text("text\nx\n")
    with pytest.raises(ValueError, match=r"data\.csv is not one of \.txt / \.jsonl"):
        text_files(tmp_path / "data.csv")


# --- split -------------------------------------------------------------------------------------------------


def test_split_golden_and_order_independent():
    docs = [f"doc {i}" for i in range(20)]
    train, val = split_documents(docs, val_fraction=0.25, seed=0)
    # Golden: sha256(b"0\0" + text)[:8] / 2**64 < 0.25, computed when this split was written; a change here
    # changes which documents every prepared corpus validates on.
    assert val == ["doc 1", "doc 10"]
    assert train == [d for d in docs if d not in val]  # input order kept
    shuffled = docs[:]
    random.Random(1).shuffle(shuffled)
    train2, val2 = split_documents(shuffled, val_fraction=0.25, seed=0)
    assert set(val2) == set(val) and set(train2) == set(train)
    assert split_documents(docs, 0.25, seed=1) != (train, val)


def test_split_roughly_fraction_and_never_empty():
    docs = [f"document number {i}" for i in range(2000)]
    _, val = split_documents(docs, 0.1, seed=3)
    assert 150 < len(val) < 250
    for fraction in (1e-9, 1 - 1e-9):
        train, val = split_documents(docs[:2], fraction, seed=0)
        assert len(train) == 1 and len(val) == 1
    with pytest.raises(ValueError, match="at least 2 documents"):
        split_documents(["only one"], 0.5, seed=0)
    with pytest.raises(ValueError, match="val_fraction"):
        split_documents(docs, 1.0, seed=0)


# --- tokenizer ---------------------------------------------------------------------------------------------


def test_tokenizer_round_trip_save_load(tokenizer, tmp_path):
    assert len(tokenizer) <= 400
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.unk_token == EOS_TOKEN
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id != tokenizer.eos_token_id
    texts = [
        "def f(x):\n    return x ** 2  # squares",
        "  leading spaces , and . odd spacing ",
        "ünïcödé ☃ 🙂 漢字",  # characters the training text may never have contained
        "\x00\t\r\n",
    ]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in texts:
        assert loaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
        assert loaded.decode(loaded.encode(text, add_special_tokens=False)) == text
    assert (loaded.eos_token_id, loaded.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)


def test_tokenizer_deterministic(docs, tokenizer):
    again = train_tokenizer(docs, vocab_size=400)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_tokenizer_vocab_too_small():
    assert MIN_VOCAB_SIZE == 258
    with pytest.raises(ValueError, match=r"vocab_size=257 .* at least 258"):
        train_tokenizer(["some text"], vocab_size=257)
    train_tokenizer(["some text"], vocab_size=258)  # the minimum itself is fine


# --- packing -----------------------------------------------------------------------------------------------


def test_pack_blocks_shape_dtype_remainder():
    blocks = pack_blocks(np.arange(10), 4)
    assert blocks.shape == (2, 4) and blocks.dtype == np.uint16
    np.testing.assert_array_equal(blocks, [[0, 1, 2, 3], [4, 5, 6, 7]])  # 8, 9 dropped
    assert pack_blocks([1, 2, 3], 4).shape == (0, 4)
    assert pack_blocks([1, 2], 2, vocab_size=65536).dtype == np.uint16
    assert pack_blocks([1, 2], 2, vocab_size=65537).dtype == np.uint32
    assert pack_blocks([70000, 1], 2).dtype == np.uint32
    with pytest.raises(ValueError, match="vocab_size=10"):
        pack_blocks([12, 1], 2, vocab_size=10)


def test_encode_documents_eos_after_each_document(tokenizer):
    docs = ["first doc", "second, longer document", "third"]
    stream = encode_documents(tokenizer, docs)
    eos = tokenizer.eos_token_id
    expected = []
    for d in docs:
        expected += tokenizer.encode(d, add_special_tokens=False) + [eos]
    assert stream.tolist() == expected
    assert int((stream == eos).sum()) == len(docs)


def test_save_load_blocks_memmap(tmp_path):
    blocks = pack_blocks(np.arange(24), 6)
    save_blocks(tmp_path / "b.npy", blocks)
    loaded = load_blocks(tmp_path / "b.npy")
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded, blocks)


def test_iterate_batches_seeded_epochs():
    blocks = np.arange(40, dtype=np.uint16).reshape(10, 4)  # block i starts with token 4 * i
    batches = list(iterate_batches(blocks, batch_size=5, seed=0, steps=4))
    assert all(b.shape == (5, 4) and b.dtype == torch.int64 for b in batches)
    first_epoch = torch.cat(batches[:2])[:, 0] // 4
    second_epoch = torch.cat(batches[2:])[:, 0] // 4
    assert sorted(first_epoch.tolist()) == sorted(second_epoch.tolist()) == list(range(10))
    assert first_epoch.tolist() != list(range(10))  # shuffled
    again = list(iterate_batches(blocks, batch_size=5, seed=0, steps=3))
    assert all(torch.equal(a, b) for a, b in zip(again, batches, strict=False))
    other = list(iterate_batches(blocks, batch_size=5, seed=1, steps=4))
    assert any(not torch.equal(a, b) for a, b in zip(other, batches, strict=True))
    assert len(list(iterate_batches(blocks, batch_size=3, seed=0, steps=7))) == 7  # cycles past one epoch


# --- build_corpus ------------------------------------------------------------------------------------------


def test_build_corpus_files_and_stats(built):
    out, stats = built
    names = sorted(p.name for p in out.iterdir())
    assert names == ["stats.json", "tokenizer", "train.npy", "val.npy", "val_docs.jsonl"]
    assert load_stats(out) == stats
    train, val = load_blocks(out / "train.npy"), load_blocks(out / "val.npy")
    assert train.dtype == val.dtype == np.uint16 and stats["dtype"] == "uint16"
    assert train.shape == (stats["blocks_train"], SMALL["block_len"]) and stats["blocks_train"] > 0
    assert val.shape == (stats["blocks_val"], SMALL["block_len"]) and stats["blocks_val"] > 0
    assert stats["blocks_train"] == stats["tokens_train"] // SMALL["block_len"]
    assert stats["blocks_val"] == stats["tokens_val"] // SMALL["block_len"]
    assert stats["documents_train"] + stats["documents_val"] == SMALL["max_docs"]
    for name in ("train", "val"):
        assert stats[f"{name}_npy_sha256"] == hashlib.sha256((out / f"{name}.npy").read_bytes()).hexdigest()

    val_docs = [json.loads(line)["text"] for line in (out / "val_docs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(val_docs) == stats["documents_val"] and stats["chars_val"] == sum(map(len, val_docs))
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert len(tok) == stats["vocab_size_trained"] <= SMALL["vocab_size"]
    stream = encode_documents(tok, val_docs)  # the val blocks are exactly the held-out documents, packed
    assert len(stream) == stats["tokens_val"]
    np.testing.assert_array_equal(val, pack_blocks(stream, SMALL["block_len"]))


def test_build_corpus_deterministic_and_replaces(built, tmp_path):
    _, stats = built
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "stale.txt").write_text("from an older build")
    again = build_corpus(out, source="stdlib_docs", source_kwargs={}, **SMALL)
    assert again == stats
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]  # no temp or old folders left behind


def test_build_corpus_text_files_source(tmp_path, docs):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:60]), encoding="utf-8")
    stats = build_corpus(
        tmp_path / "out",
        source="text_files",
        source_kwargs={"paths": [data]},
        **{**SMALL, "block_len": 16, "max_docs": None},
    )
    assert stats["source_kwargs"] == {"paths": [str(data)]}
    assert stats["documents_train"] + stats["documents_val"] == 60


def test_build_corpus_errors(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"unknown source 'nope'; allowed: .*stdlib_docs.*text_files"):
        build_corpus(out, source="nope", source_kwargs={}, **SMALL)
    with pytest.raises(ValueError, match=r"vocab_size=100 .* at least 258"):
        build_corpus(out, source="stdlib_docs", source_kwargs={}, **{**SMALL, "vocab_size": 100})
    with pytest.raises(ValueError, match="max_docs"):
        build_corpus(out, source="stdlib_docs", source_kwargs={"max_docs": 3}, **SMALL)
    with pytest.raises(ValueError, match=r"validation split has \d+ tokens.*block_len=1000000 needs at least 1000000"):
        build_corpus(out, source="stdlib_docs", source_kwargs={}, **{**SMALL, "block_len": 1_000_000})
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_build_corpus_failure_while_writing_keeps_old_out_dir(built, tmp_path, monkeypatch):
    _, stats = built
    out = tmp_path / "corpus"
    build_corpus(out, source="stdlib_docs", source_kwargs={}, **SMALL)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    calls = []

    def fail_on_second(path, blocks):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        np.save(path, blocks)

    monkeypatch.setattr(corpus_mod, "save_blocks", fail_on_second)
    with pytest.raises(OSError, match="simulated"):
        build_corpus(out, source="stdlib_docs", source_kwargs={}, **{**SMALL, "seed": 1})
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]


def test_sources_registry_contract():
    assert {"stdlib_docs", "text_files"} <= set(SOURCES)
    for fn in SOURCES.values():
        import inspect

        params = inspect.signature(fn).parameters
        assert {"min_doc_chars", "max_docs"} <= set(params), fn.__name__


def test_data_modules_import_no_circle():
    """Every import between efficientllm.data modules, function-level ones included, points one way: a module
    never ends up importing itself (fineweb <-> sources did, through a function-level import)."""
    package = Path(corpus_mod.__file__).parent
    edges: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        name = "efficientllm.data" + ("" if path.stem == "__init__" else f".{path.stem}")
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("efficientllm.data"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("efficientllm.data"))
        edges[name] = found - {name}

    def imports_of(start: str) -> set[str]:
        """Every module `start` reaches through imports."""
        reached, todo = set(), [start]
        while todo:
            for n in edges.get(todo.pop(), ()):
                if n not in reached:
                    reached.add(n)
                    todo.append(n)
        return reached

    assert [m for m in sorted(edges) if m in imports_of(m)] == []
