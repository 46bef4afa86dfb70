"""SFT data: the generator's answers are right, loaders read both real formats, bad files fail with file and line,
the split is deterministic, and the loss mask covers exactly the response."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from conftest import SHARED_DATA

from efficientllm.data import arith, sft, sft_sources
from efficientllm.data.sft import IGNORE_INDEX, SFTDataError

OPENO1_SAMPLE = SHARED_DATA / "openo1_format_sample.jsonl"
MEDICAL_SAMPLE = SHARED_DATA / "medical_o1_format_sample.json"

_LINE = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


@pytest.mark.parametrize("source", [arith.arith, arith.arith_medical])
def test_generator_working_is_correct_and_seeded(source):
    rows = source(n_examples=200, seed=7)
    assert rows == source(n_examples=200, seed=7)  # same seed, same rows
    assert rows != source(n_examples=200, seed=8)
    assert len({r["instruction"] for r in rows}) == 200  # distinct questions: none can sit in train and eval
    for r in rows:
        thought = re.search(r"<Thought>\n(.*)\n</Thought>", r["output"], re.DOTALL).group(1)
        lines = thought.splitlines()
        assert len(lines) >= 2  # multi-step
        for line in lines:
            a, op, b, c = _LINE.match(line).groups()
            assert _OPS[op](int(a), int(b)) == int(c), line
        assert sft.extract_output(r["output"]) == r["answer"] == _LINE.match(lines[-1]).group(4)
        assert r["source"] == source.__name__


def test_arith_medical_goes_through_the_medical_fields():
    r = arith.arith_medical(n_examples=1, seed=0)[0]
    assert "mg" in r["instruction"] and r["source"] == "arith_medical"
    assert r["output"].startswith("<Thought>\n") and r["output"].endswith("\n</Output>")


@pytest.mark.skipif(not OPENO1_SAMPLE.exists(), reason=f"real sample absent: {OPENO1_SAMPLE}")
def test_openo1_loader_on_the_real_sample():
    rows = sft_sources.load_sft_source({"source": "openo1", "path": str(OPENO1_SAMPLE)}, seed=0)
    assert len(rows) == 125
    assert all("<Thought>" in r["output"] and "<Output>" in r["output"] for r in rows)
    assert all("answer" not in r for r in rows)
    assert len(sft_sources.load_sft_source({"source": "openo1", "path": str(OPENO1_SAMPLE), "max_examples": 10},
                                   seed=0)) == 10


@pytest.mark.skipif(not MEDICAL_SAMPLE.exists(), reason=f"real sample absent: {MEDICAL_SAMPLE}")
def test_medical_o1_loader_on_the_real_sample():
    raw = json.loads(MEDICAL_SAMPLE.read_text())
    rows = sft_sources.load_sft_source({"source": "medical_o1", "path": str(MEDICAL_SAMPLE), "config": "en"}, seed=0)
    assert len(rows) == len(raw) == 198
    assert rows[0]["instruction"] == raw[0]["Question"]
    assert rows[0]["output"] == sft.thought_output(raw[0]["Complex_CoT"], raw[0]["Response"])
    assert sft.extract_output(rows[0]["output"]) == raw[0]["Response"].strip()


def test_hub_loaders_call_datasets_with_id_config_and_revision(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None, data_files=None):
        calls.append((path, name, split, revision, data_files))
        if "medical" in path:
            return [{"Question": "q", "Complex_CoT": "c", "Response": "r", "extra": 1}]
        return [{"instruction": "i", "output": "<Thought>t</Thought><Output>o</Output>"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    med = sft_sources.medical_o1(config="zh_mix", revision="abc123")
    assert calls[-1] == (sft_sources.MEDICAL_O1_HUB_ID, "zh_mix", "train", "abc123", None)
    assert med[0]["output"] == "<Thought>\nc\n</Thought>\n<Output>\nr\n</Output>"
    o1 = sft_sources.openo1(data_files="OpenO1-SFT.jsonl")
    assert calls[-1] == (sft_sources.OPENO1_HUB_ID, None, "train", None, "OpenO1-SFT.jsonl")
    assert o1[0]["instruction"] == "i"

    def offline(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SFTDataError, match="could not be loaded.*ConnectionError.*path:"):
        sft_sources.openo1()


@pytest.mark.parametrize(("name", "content", "match"), [
    ("a.jsonl", b'{"instruction": "x", "output": "y"}\n{"instruction": "x"}\n',
     r"a\.jsonl line 2: missing field 'output'"),
    ("a.jsonl", b'{"instruction": "x", "output": "  "}\n', r"a\.jsonl line 1: field 'output' is an empty string"),
    ("a.jsonl", b'{"instruction": "x", "output": 3}\n', r"line 1: field 'output' must be a string"),
    ("a.jsonl", b'{"instruction": "x", "output": "y"}\n\n{"instruction": "\xff", "output": "y"}\n',
     r"a\.jsonl line 3: not valid UTF-8 \(byte 0xff"),
    ("a.jsonl", b'[{"instruction": "x", "output": "y"}]\n', r"a\.jsonl line 1: a JSON array where jsonl"),
    ("a.jsonl", b'{"instruction": "x", "output": "y"}\n{"instruction": \n', r"a\.jsonl line 2: invalid JSON"),
    ("a.jsonl", b'["x"]\n', r"line 1: a JSON array where jsonl"),
    ("a.jsonl", b'{"instruction": "x", "output": "y"}\n"just a string"\n', r"line 2: expected a JSON object"),
    ("a.json", b'{"instruction": "x", "output": "y"}\n{"instruction": "x", "output": "y"}\n', r"is this jsonl"),
    ("a.json", b'[{"instruction": "x", "output": "y"}, 5]', r"a\.json \[index 1\]: expected a JSON object"),
    ("a.json", b'[{"instruction": "x", "output": "y"}, {"output": "y"}]', r"\[index 1\]: missing field 'instruction'"),
    ("a.json", b'{"instruction": "x"}', r"expected a JSON array of objects"),
    ("a.txt", b"hello", r"openo1: .*a\.txt is not one of \.jsonl / \.json / \.parquet"),
])
def test_openo1_validation_errors_name_file_and_line(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SFTDataError, match=match):
        sft_sources.openo1(path=str(path))


def test_medical_validation_and_spec_errors(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"Question": "q", "Complex_CoT": "c", "Response": "r"},
                                {"Question": "q", "Complex_CoT": "", "Response": "r"}]))
    with pytest.raises(SFTDataError, match=r"m\.json \[index 1\]: field 'Complex_CoT' is an empty string"):
        sft_sources.medical_o1(path=str(path))
    with pytest.raises(SFTDataError, match="config 'fr' is not one of en, zh, en_mix, zh_mix"):
        sft_sources.medical_o1(path=str(path), config="fr")
    with pytest.raises(SFTDataError, match=r"\[sft\] datasets.x: source 'nope' is not one of"):
        sft_sources.load_sft_source({"source": "nope"}, seed=0, where="[sft] datasets.x")
    with pytest.raises(SFTDataError, match="unknown key 'pth' for source openo1"):
        sft_sources.load_sft_source({"source": "openo1", "pth": "x"}, seed=0)
    with pytest.raises(FileNotFoundError, match=r"openo1: .*missing\.jsonl does not exist"):
        sft_sources.openo1(path=str(tmp_path / "missing.jsonl"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    (tmp_path / "d" / "b.jsonl").write_text('{"instruction": "c", "output": "d"}\n')
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "d" / "sub" / "c.jsonl").write_text('{"instruction": "e", "output": "f"}\n')
    # a folder: its own files, sorted (not the files of its subfolders)
    assert [r["instruction"] for r in sft_sources.openo1(path=str(tmp_path / "d"))] == ["a", "c"]


BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark spreadsheet exports start with


@pytest.mark.parametrize(("name", "content"), [
    ("a.jsonl", b'{"instruction": "x", "output": "y"}\n{"instruction": "z", "output": "w"}\n'),
    ("a.json", b'[{"instruction": "x", "output": "y"}, {"instruction": "z", "output": "w"}]'),
])
def test_local_files_with_a_byte_order_mark_are_read(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(BOM + content)
    rows = sft_sources.openo1(path=str(path))
    assert [(r["instruction"], r["output"]) for r in rows] == [("x", "y"), ("z", "w")]
    path.write_bytes(content)
    assert sft_sources.openo1(path=str(path)) == rows  # the same records as without the mark
    bad = tmp_path / "bad.jsonl"  # an error's line and column still count from the start of the file
    bad.write_bytes(BOM + b'{"instruction": "x", "output": "y"}\n\xff\n')
    with pytest.raises(SFTDataError, match=r"bad\.jsonl line 2: not valid UTF-8 \(byte 0xff at column 1\)"):
        sft_sources.openo1(path=str(bad))


def test_split_is_deterministic_disjoint_and_sized():
    records = arith.arith(n_examples=100, seed=1)
    train, evals = sft.split_records(records, eval_fraction=0.1, seed=3)
    assert (len(train), len(evals)) == (90, 10)
    assert (train, evals) == sft.split_records(records, eval_fraction=0.1, seed=3)
    assert not {r["id"] for r in train} & {r["id"] for r in evals}
    assert sft.split_records(records, eval_fraction=0.1, seed=4)[1] != evals
    assert len(sft.split_records(records, eval_fraction=0.5, seed=3, max_eval_examples=7)[1]) == 7
    with pytest.raises(SFTDataError, match="nothing to train on"):
        sft.split_records(records[:1], eval_fraction=0.1, seed=0)


class CharTokenizer:
    """A hand-built tokenizer: one id per character (its code point), BOS=2 added to prompts, EOS=1."""

    bos_token_id, eos_token_id, pad_token_id = 2, 1, 0

    def __init__(self, chat_template: str | None = None) -> None:
        self.chat_template = chat_template

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + [ord(c) for c in text]}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


def test_generated_rows_and_token_ids_are_unchanged():
    """Golden digests, computed with the code before the data package was split (commit b75d930, sft.py held the
    generator and the encoding): sha256 of the JSON of the rows, and of [input_ids, labels, record_ids, stats] from
    the character tokenizer above. A change here changes every arith dataset and every encoded batch."""
    rows = arith.arith(n_examples=64, seed=0) + arith.arith_medical(n_examples=64, min_ops=1, max_ops=4, seed=5)
    assert hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest() == (
        "4ad90ced57683670926af5a0fa20fcf269240f3b0f54b45d797b8a3abfcf7287")
    enc = sft.encode_examples(rows, CharTokenizer(), template="plain", max_seq_len=240)
    assert (enc.n_truncated, enc.n_dropped) == (25, 0)  # both paths taken
    blob = json.dumps([enc.input_ids, enc.labels, enc.record_ids, enc.stats()]).encode()
    assert hashlib.sha256(blob).hexdigest() == "aa019fa0f68edc390182ab52bd648c84ed8279ca34b12fe17c8b8316cf7f8c88"


def test_loss_mask_covers_exactly_the_response_plain():
    tok = CharTokenizer()
    rec = {"instruction": "2+2?", "output": "<Output>4</Output>"}
    ids, labels = sft.encode_example(rec, tok, template="plain", prompt_template="Q:{instruction}\nA:")
    prompt = [2] + [ord(c) for c in "Q:2+2?\nA:"]  # BOS + prompt characters
    response = [ord(c) for c in "<Output>4</Output>"] + [1]  # response characters + EOS
    assert ids == prompt + response
    assert labels == [IGNORE_INDEX] * len(prompt) + response


def test_loss_mask_with_a_chat_template():
    tok = CharTokenizer(chat_template="{{ messages }}")
    rec = {"instruction": "hi", "output": "yo"}
    assert sft.resolve_template("auto", tok) == "chat"
    ids, labels = sft.encode_example(rec, tok, template="chat")
    prompt = [ord(c) for c in "<user>hi</user><assistant>"]  # the template carries its own markers: no BOS/EOS
    response = [ord(c) for c in "yo</assistant>"]
    assert ids == prompt + response and labels == [IGNORE_INDEX] * len(prompt) + response
    with pytest.raises(ValueError, match="no chat template"):
        sft.resolve_template("chat", CharTokenizer())


def test_overlong_sequences_truncated_or_dropped_and_counted():
    tok = CharTokenizer()
    recs = [{"instruction": "a", "output": "x" * 5},       # 1 + 3 prompt + 6 response = 10 tokens: fits
            {"instruction": "a", "output": "x" * 20},      # 25 tokens: over
            {"instruction": "a" * 30, "output": "x"}]      # prompt alone over: no response token would fit
    kw = dict(template="plain", prompt_template="{instruction}: ", max_seq_len=12)
    trunc = sft.encode_examples(recs, tok, overlong="truncate", **kw)
    assert (len(trunc.input_ids), trunc.n_truncated, trunc.n_dropped) == (2, 1, 1)
    assert len(trunc.input_ids[1]) == 12 and trunc.labels[1][:4] == [IGNORE_INDEX] * 4
    drop = sft.encode_examples(recs, tok, overlong="drop", **kw)
    assert (len(drop.input_ids), drop.n_truncated, drop.n_dropped) == (1, 0, 2)
    assert drop.stats()["n_response_tokens"] == 6


def test_extract_output():
    assert sft.extract_output("<Thought>\n1 + 1 = 2\n</Thought>\n<Output>\n2\n</Output>") == "2"
    assert sft.extract_output("blah <Output> 17") == "17"  # cut off before the closing tag
    assert sft.extract_output("no tags") is None
