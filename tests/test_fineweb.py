"""Tests for the FineWeb-Edu source: parquet / jsonl shards with the real schema, filters, budgets, bad shards,
the hub path's arguments (with a stand-in `load_dataset`: no network here), and the real sample documents.

OMP_WAIT_POLICY=PASSIVE python -m pytest tests/test_fineweb.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, SHARED_DATA, env

import efficientllm.data.fineweb as fw
from efficientllm.config import PrepareConfig, load_section
from efficientllm.data import SOURCES, build_corpus
from efficientllm.data.fineweb import fineweb_edu, fineweb_source_kwargs

# The parquet schema of every FineWeb-Edu config (the dataset card's fields, the types its shards use).
SCHEMA = pa.schema([
    ("text", pa.string()), ("id", pa.string()), ("dump", pa.string()), ("url", pa.string()),
    ("date", pa.string()), ("file_path", pa.string()), ("language", pa.string()),
    ("language_score", pa.float64()), ("token_count", pa.int64()), ("score", pa.float64()),
    ("int_score", pa.int64()),
])
SAMPLE = SHARED_DATA / "fineweb_edu_sample.jsonl"


def _doc(i: int, int_score: int, n_words: int = 60) -> dict:
    text = " ".join(f"word{i}_{j}" for j in range(n_words))
    return {"text": text, "id": f"<urn:uuid:{i:08d}>", "dump": "CC-MAIN-2024-10",
            "url": f"https://example.org/{i}", "date": "2024-02-20T00:00:00Z",
            "file_path": f"s3://commoncrawl/crawl-data/CC-MAIN-2024-10/{i}.warc.gz", "language": "en",
            "language_score": 0.95, "token_count": n_words * 3, "score": int_score + 0.2, "int_score": int_score}


def _write_parquet(path: Path, rows: list[dict], schema: pa.Schema = SCHEMA) -> Path:
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path, row_group_size=7)  # several row groups: reading crosses their edges
    return path


@pytest.fixture
def shards(tmp_path) -> Path:
    """Two shards in a folder: scores cycle 1..5, one exact duplicate and one short document."""
    folder = tmp_path / "fineweb"
    folder.mkdir()
    rows = [_doc(i, 1 + i % 5) for i in range(40)]
    rows[10] = {**rows[3], "id": "dup"}                 # same text as row 3
    rows[11] = {**_doc(11, 5), "text": "too short"}    # under min_doc_chars
    _write_parquet(folder / "000_00000.parquet", rows[:25])
    _write_parquet(folder / "000_00001.parquet", rows[25:])
    return folder


def test_parquet_filters_dedups_and_keeps_order(shards):
    docs = list(fineweb_edu(paths=[shards], min_doc_chars=50, min_int_score=3))
    expected = [_doc(i, 0)["text"] for i in range(40) if 1 + i % 5 >= 3 and i not in (10, 11)]
    assert docs == expected  # file order, then row order; row 10 (a duplicate of row 3, score 4) dropped
    assert len(list(fineweb_edu(paths=[shards], min_doc_chars=50))) == 38  # no score filter: all but 2
    assert len(list(fineweb_edu(paths=[shards], min_doc_chars=50, max_docs=5))) == 5
    assert SOURCES["fineweb_edu"] is fineweb_edu


def test_budgets_chars_and_source_tokens(shards):
    one = len(_doc(0, 0)["text"])  # every document has the same length here
    docs = list(fineweb_edu(paths=[shards], min_doc_chars=50, max_chars=3 * one - 1))
    assert len(docs) == 3  # the document that reaches the budget is the last one kept
    docs = list(fineweb_edu(paths=[shards], min_doc_chars=50, max_source_tokens=180 * 4))
    assert len(docs) == 4  # token_count is 180 per document
    # the budget counts kept documents only: with the score filter, the same budget spans more rows
    filtered = list(fineweb_edu(paths=[shards], min_doc_chars=50, min_int_score=5, max_source_tokens=180 * 2))
    assert filtered == [_doc(4, 0)["text"], _doc(9, 0)["text"]]


def test_jsonl_without_scores_and_token_budget_error(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": _doc(i, 3)["text"]}) + "\n" for i in range(5)))
    assert len(list(fineweb_edu(paths=path, min_int_score=4))) == 5  # no int_score column: not filtered
    with pytest.raises(ValueError, match=r"docs\.jsonl: max_source_tokens sums the 'token_count' column"):
        list(fineweb_edu(paths=path, max_source_tokens=10))


def test_jsonl_with_a_byte_order_mark(tmp_path):
    lines = "".join(json.dumps({"text": _doc(i, 3)["text"], "int_score": 3}) + "\n" for i in range(3))
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + lines.encode())  # as spreadsheet exports write it
    assert list(fineweb_edu(paths=path)) == [_doc(i, 3)["text"] for i in range(3)]


def test_missing_text_column_names_file_and_columns(tmp_path):
    schema = pa.schema([f for f in SCHEMA if f.name != "text"] + [pa.field("content", pa.string())])
    rows = [{**{k: v for k, v in _doc(0, 3).items() if k != "text"}, "content": "x" * 300}]
    bad = _write_parquet(tmp_path / "bad.parquet", rows, schema)
    with pytest.raises(ValueError, match=r"bad\.parquet has no 'text' column \(columns: id, dump, .*content\)"):
        fineweb_edu(paths=[bad])  # footers are checked before the first document is read
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(json.dumps({"content": "x", "url": "u"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1 has no 'text' column \(columns: content, url\)"):
        list(fineweb_edu(paths=[jsonl]))


def test_empty_truncated_and_corrupt_shards(tmp_path, shards):
    empty = _write_parquet(tmp_path / "empty.parquet", [])
    with pytest.raises(ValueError, match=r"empty\.parquet is an empty shard \(0 rows\)"):
        fineweb_edu(paths=[empty])
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl is an empty shard"):
        list(fineweb_edu(paths=[tmp_path / "empty.jsonl"]))
    good = (shards / "000_00000.parquet").read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good[: len(good) // 2])  # a download that stopped half-way: no footer
    with pytest.raises(ValueError, match=r"cut\.parquet is not a readable parquet file \(truncated or corrupt"):
        fineweb_edu(paths=[cut])
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1" + os.urandom(64) + b"PAR1")
    with pytest.raises(ValueError, match=r"junk\.parquet"):
        fineweb_edu(paths=[junk])
    # a damaged data page (footer intact) fails when it is read, still naming the file
    damaged = tmp_path / "damaged.parquet"
    mid = len(good) // 3
    damaged.write_bytes(good[:mid] + bytes(b ^ 0xFF for b in good[mid:mid + 200]) + good[mid + 200:])
    with pytest.raises(ValueError, match=r"damaged\.parquet"):
        list(fineweb_edu(paths=[damaged]))


def test_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet does not exist"):
        fineweb_edu(paths=[tmp_path / "nope.parquet"])
    (tmp_path / "a.csv").write_text("text\nx\n")
    with pytest.raises(ValueError, match=r"a\.csv is not one of \.parquet / \.jsonl"):
        fineweb_edu(paths=[tmp_path / "a.csv"])
    with pytest.raises(ValueError, match="holds no .parquet / .jsonl files"):
        fineweb_edu(paths=[tmp_path])
    with pytest.raises(ValueError, match="max_chars must be >= 1"):
        fineweb_edu(paths=[tmp_path], max_chars=0)


class _FakeStream:
    """What `load_dataset(..., streaming=True)` returns for a parquet dataset: an iterable with known features."""

    def __init__(self, rows: list[dict], features: list[str]) -> None:
        self.rows, self.features = rows, {name: None for name in features}

    def __iter__(self):
        return iter(self.rows)


def test_hub_streams_with_the_right_arguments(monkeypatch):
    import datasets

    calls = []
    rows = [_doc(i, 2 + i % 3) for i in range(10)]

    def fake_load_dataset(path, name=None, split=None, revision=None, streaming=False, **kwargs):
        calls.append({"path": path, "name": name, "split": split, "revision": revision, "streaming": streaming,
                      **kwargs})
        return _FakeStream(rows, list(SCHEMA.names))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    docs = list(fineweb_edu(config_name="sample-100BT", revision="abc123", min_int_score=3, min_doc_chars=10,
                            max_source_tokens=180 * 3))
    assert calls == [{"path": "HuggingFaceFW/fineweb-edu", "name": "sample-100BT", "split": "train",
                      "revision": "abc123", "streaming": True}]
    assert docs == [r["text"] for r in rows if r["int_score"] >= 3][:3]

    # through the prepare settings, as the stage builds them
    cfg = PrepareConfig(source="fineweb_edu", hub_config="sample-10BT", min_int_score=4, max_chars=10**6)
    kwargs = fineweb_source_kwargs(cfg)
    assert kwargs == {"paths": None, "hub_id": "HuggingFaceFW/fineweb-edu", "config_name": "sample-10BT",
                      "split": "train", "revision": None, "min_int_score": 4, "max_chars": 10**6,
                      "max_source_tokens": None}
    assert len(list(fineweb_edu(min_doc_chars=10, **kwargs))) == 3  # int_score 4 in rows 2, 5, 8
    assert calls[-1]["name"] == "sample-10BT"

    # a config without a text column fails before any row is read
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: _FakeStream([], ["content", "url"]))
    with pytest.raises(ValueError, match=r"HuggingFaceFW/fineweb-edu \(sample-10BT, train\) has no 'text' column "
                                         r"\(columns: content, url\)"):
        list(fineweb_edu())


def test_hub_refuses_offline_with_a_clear_error(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not be called offline"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # make test exports it; this case is about the datasets flag
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match="needs the network, but HF_DATASETS_OFFLINE is set"):
        list(fineweb_edu())


def test_build_corpus_and_prepare_stage_on_parquet(tmp_path, shards):
    stats = build_corpus(tmp_path / "corpus", source="fineweb_edu",
                         source_kwargs={"paths": [str(shards)], "min_int_score": 2},
                         vocab_size=300, block_len=16, val_fraction=0.2, seed=0, min_doc_chars=50, max_docs=None)
    # int_score >= 2: 33 rows (row 10 became a copy of row 3); less the duplicate and the short row 11
    assert stats["source"] == "fineweb_edu" and stats["documents_train"] + stats["documents_val"] == 31

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prepare"].update(source="fineweb_edu", source_paths=[str(shards)], min_int_score=4, vocab_size=300,
                             block_len=16, val_fraction=0.2, min_doc_chars=50)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert load_section(tmp_path / "params.yaml", "prepare").min_int_score == 4
    e = {**env(), "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "stages.prepare", "--params", "params.yaml"], cwd=tmp_path, env=e,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    written = json.loads((tmp_path / "data/prepared/stats.json").read_text())
    assert written["source"] == "fineweb_edu" and written["source_kwargs"]["min_int_score"] == 4
    assert written["documents_train"] + written["documents_val"] == 16  # int_score 4 or 5, less rows 10 and 11


@pytest.mark.skipif(not SAMPLE.exists(), reason=f"real FineWeb-Edu sample not present at {SAMPLE}")
def test_real_fineweb_edu_documents(tmp_path):
    docs = list(fineweb_edu(paths=[SAMPLE], min_doc_chars=200, min_int_score=3))
    assert len(docs) >= 140  # 150 documents; the sample has only a text column, so no score filter applies
    assert all(len(d) >= 200 for d in docs) and len(set(docs)) == len(docs)
    assert len(list(fineweb_edu(paths=[SAMPLE], max_chars=20_000))) < 20
    stats = build_corpus(tmp_path / "corpus", source="fineweb_edu", source_kwargs={"paths": [str(SAMPLE)]},
                         vocab_size=512, block_len=64, val_fraction=0.1, seed=0, min_doc_chars=200, max_docs=None)
    assert stats["blocks_train"] > 100 and stats["blocks_val"] > 5


def test_schema_constant_matches_the_dataset():
    assert fw.COLUMNS == tuple(SCHEMA.names)
