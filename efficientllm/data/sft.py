"""SFT records: the one normalised form, its files, the seeded train / eval split, and the encoding for training.

Why: every SFT source (efficientllm/data/sft_sources.py) returns records in the OpenO1 form, so the fine-tuning loop
and the quantization axis's task see one shape whatever the source:

    {"id": str, "instruction": str, "output": "<Thought>\\n...\\n</Thought>\\n<Output>\\n...\\n</Output>",
     "answer": str (only where a checkable answer exists), "source": str}

- Records: `openo1_record` / `medical_o1_record` check a raw row and normalise it; `extract_output` reads the answer
  back out of a generation.
- Files: `read_jsonl`, `read_json_array`, `read_parquet` give (where, row) pairs (a leading UTF-8 byte-order mark is
  dropped); errors (`SFTDataError`) name the file and the line (jsonl) or index (JSON array, parquet): missing
  fields, non-string or empty values, non-UTF-8 bytes, a JSON array where jsonl is expected. `load_split` reads back
  what the prepare_sft stage wrote.
- Encoding (`encode_examples`): the tokenizer's chat template when it has one (or when asked), else a plain prompt
  template; the loss is on the response tokens only (prompt positions carry label -100); sequences over
  `max_seq_len` are truncated or dropped and both counts are returned. The Thought/Output tags stay plain text (no
  new special tokens, no embedding resize), so any byte-level tokenizer encodes them.

    python -c "from efficientllm.data.sft import thought_output as t, extract_output as e; print(e(t('1+1=2', '2')))"
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from efficientllm.data.files import decode_utf8

IGNORE_INDEX = -100
"""Label of positions that carry no loss (prompt and padding); transformers' cross-entropy ignores it."""

TEMPLATES = ("auto", "chat", "plain")
OVERLONG_POLICIES = ("truncate", "drop")
DEFAULT_PROMPT_TEMPLATE = "Question: {instruction}\nAnswer:\n"


class SFTDataError(ValueError):
    """SFT data that cannot be used; the message names the file (or hub id) and the line or index."""


# --- the normalised record ----------------------------------------------------------------------------------


def thought_output(thought: str, output: str) -> str:
    """The OpenO1 target form: the reasoning inside <Thought>, the final answer inside <Output>."""
    return f"<Thought>\n{thought.strip()}\n</Thought>\n<Output>\n{output.strip()}\n</Output>"


_OUTPUT_RE = re.compile(r"<Output>\s*(.*?)\s*(?:</Output>|$)", re.DOTALL)


def extract_output(text: str) -> str | None:
    """The text inside the first <Output> tag of a generation (up to </Output> or the end), stripped; None if absent."""
    m = _OUTPUT_RE.search(text)
    return m.group(1).strip() if m else None


def _record_id(source: str, instruction: str, index: int) -> str:
    digest = hashlib.sha256(f"{source}\0{index}\0{instruction}".encode()).hexdigest()[:12]
    return f"{source}-{index:06d}-{digest}"


def _text_field(row: Mapping[str, Any], name: str, where: str) -> str:
    """row[name] as a non-empty string, else SFTDataError naming `where` and the field."""
    if name not in row:
        present = ", ".join(sorted(map(str, row))) or "none"
        raise SFTDataError(f"{where}: missing field {name!r} (fields present: {present})")
    value = row[name]
    if not isinstance(value, str):
        raise SFTDataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise SFTDataError(f"{where}: field {name!r} is an empty string")
    return value


def openo1_record(row: Mapping[str, Any], where: str, index: int, source: str = "openo1",
                  answer_from_output: bool = False) -> dict[str, Any]:
    """One OpenO1-SFT row (`instruction`, `output`) as a normalised record; the output is kept as written. Its
    `answer` is the row's own (the arith generator's), or with `answer_from_output` the text of its <Output> part
    (rows without one get none)."""
    if not isinstance(row, Mapping):
        raise SFTDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    instruction = _text_field(row, "instruction", where)
    output = _text_field(row, "output", where)
    rec = {"id": _record_id(source, instruction, index), "instruction": instruction, "output": output,
           "source": source}
    if "answer" in row:  # OpenO1-format rows that carry a checkable answer (the arith generator's)
        rec["answer"] = _text_field(row, "answer", where)
    elif answer_from_output and extract_output(output):
        rec["answer"] = extract_output(output)
    return rec


def medical_o1_record(row: Mapping[str, Any], where: str, index: int, source: str = "medical_o1") -> dict[str, Any]:
    """One medical-o1 row (`Question`, `Complex_CoT`, `Response`): the CoT goes in <Thought>, the response in
    <Output>."""
    if not isinstance(row, Mapping):
        raise SFTDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    question = _text_field(row, "Question", where)
    cot = _text_field(row, "Complex_CoT", where)
    response = _text_field(row, "Response", where)
    rec = {"id": _record_id(source, question, index), "instruction": question,
           "output": thought_output(cot, response), "source": source}
    if "answer" in row:
        rec["answer"] = _text_field(row, "answer", where)
    return rec


MCQ_LETTERS = "ABCDEFGHIJ"
MCQ_PROMPT = "Answer with the letter of the correct option."


def medical_mcq_record(row: Mapping[str, Any], where: str, index: int, source: str = "medical_o1") -> dict[str, Any]:
    """One medical-o1 row that is a multiple-choice question (`question`, `options` {letter: text}, `answer_idx`,
    `Complex_CoT`) as a letter-choice record: the instruction lists the options, the CoT goes in <Thought>, and the
    <Output> is the gold option (`answer_idx`: the data's gold, which some free-text `Response`s disagree with);
    `answer` is its letter and `choices` the option letters, so the answer can be scored by letter choice."""
    if not isinstance(row, Mapping):
        raise SFTDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    question = _text_field(row, "question" if "question" in row else "Question", where)
    options = row.get("options")
    if not isinstance(options, Mapping) or not 2 <= len(options) <= len(MCQ_LETTERS) \
            or sorted(options) != list(MCQ_LETTERS[:len(options)]):
        raise SFTDataError(f"{where}: field 'options' must map the letters A, B, ... to option texts, got {options!r}")
    letter = _text_field(row, "answer_idx", where).strip()
    if letter not in options:
        raise SFTDataError(f"{where}: answer_idx {letter!r} is not one of the options {', '.join(sorted(options))}")
    cot = _text_field(row, "Complex_CoT", where)
    listed = "\n".join(f"{k}. {_text_field(options, k, f'{where} options')}" for k in sorted(options))
    instruction = f"{question.strip()}\n{listed}\n{MCQ_PROMPT}"
    return {"id": _record_id(source, instruction, index), "instruction": instruction,
            "output": thought_output(cot, f"{letter}. {options[letter].strip()}"), "answer": letter,
            "choices": sorted(options), "source": source}


# --- reading files -------------------------------------------------------------------------------------------


def _decode_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return decode_utf8(data)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise SFTDataError(
            f"{path} line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column})"
        ) from None


def read_jsonl(path: str | Path) -> list[tuple[str, Any]]:
    """(where, object) for every non-blank line of a jsonl file; `where` is `<path> line <n>`."""
    path = Path(path)
    text = _decode_utf8(path)
    rows: list[tuple[str, Any]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        where = f"{path} line {n}"
        if not rows and stripped.startswith("["):
            raise SFTDataError(
                f"{where}: a JSON array where jsonl (one JSON object per line) is expected; "
                "name the file .json to read it as an array"
            )
        try:
            rows.append(_json_object(where, json.loads(stripped)))
        except json.JSONDecodeError as e:
            raise SFTDataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    return rows


def _json_object(where: str, obj: Any) -> tuple[str, dict[str, Any]]:
    """(where, obj) for one record of a file; SFTDataError naming `where` unless it is a JSON object."""
    if not isinstance(obj, dict):
        raise SFTDataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return where, obj


def read_json_array(path: str | Path) -> list[tuple[str, Any]]:
    """(where, object) for every element of a JSON array file; `where` is `<path> [index <i>]`."""
    path = Path(path)
    text = _decode_utf8(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (several JSON values: is this jsonl? name it .jsonl)" if e.msg == "Extra data" else ""
        raise SFTDataError(f"{path} line {e.lineno}: invalid JSON ({e.msg} at column {e.colno}){hint}") from None
    if not isinstance(data, list):
        raise SFTDataError(f"{path}: expected a JSON array of objects, got a JSON {type(data).__name__}")
    return [_json_object(f"{path} [index {i}]", obj) for i, obj in enumerate(data)]


def read_parquet(path: str | Path) -> list[tuple[str, Any]]:
    """(where, row) for every row of a parquet file; `where` is `<path> [row <i>]`."""
    import pyarrow.parquet as pq

    path = Path(path)
    return [(f"{path} [row {i}]", row) for i, row in enumerate(pq.read_table(path).to_pylist())]


READERS: dict[str, Callable[[str | Path], list[tuple[str, Any]]]] = {
    ".jsonl": read_jsonl,
    ".json": read_json_array,
    ".parquet": read_parquet,
}
"""File suffix -> reader returning (where, row) pairs."""


# --- the deterministic split ---------------------------------------------------------------------------------


def split_records(records: Sequence[dict[str, Any]], *, eval_fraction: float, seed: int,
                  max_eval_examples: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval): a seeded permutation; eval takes round(n x eval_fraction) records (at least 1, at most
    `max_eval_examples`), train the rest, both in permutation order. The same inputs give the same split."""
    n = len(records)
    if not 0 < eval_fraction < 1:
        raise SFTDataError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    n_eval = max(1, round(n * eval_fraction))
    if max_eval_examples is not None:
        n_eval = min(n_eval, max_eval_examples)
    if n - n_eval < 1:
        raise SFTDataError(f"{n} records leave nothing to train on after {n_eval} eval records")
    order = list(range(n))
    random.Random(f"split-{seed}").shuffle(order)
    return [records[i] for i in order[n_eval:]], [records[i] for i in order[:n_eval]]


# --- formatting and the response-only loss mask --------------------------------------------------------------


def resolve_template(template: str, tokenizer: Any) -> str:
    """`chat` or `plain`: `auto` picks chat when the tokenizer has a chat template."""
    if template not in TEMPLATES:
        raise ValueError(f"template {template!r} is not one of {', '.join(TEMPLATES)}")
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "auto":
        return "chat" if has_chat else "plain"
    if template == "chat" and not has_chat:
        raise ValueError("template 'chat' was asked for but the tokenizer has no chat template (use auto or plain)")
    return template


def plain_prompt(instruction: str, prompt_template: str = DEFAULT_PROMPT_TEMPLATE) -> str:
    """The plain prompt: `prompt_template` with `{instruction}` filled in."""
    return prompt_template.replace("{instruction}", instruction)


def format_example(record: Mapping[str, Any], tokenizer: Any, *, template: str,
                   prompt_template: str = DEFAULT_PROMPT_TEMPLATE) -> tuple[str, str]:
    """(prompt text, response text) of one record under a resolved template (`chat` or `plain`).

    chat: the prompt is the template applied to the user turn with the generation prompt; the response is the rest
    of the template applied to user + assistant turns (so it ends with the template's end-of-turn text).
    plain: `prompt_template` filled in, and the output as the response (the caller appends EOS).
    """
    if template == "plain":
        return plain_prompt(record["instruction"], prompt_template), record["output"]
    if template != "chat":
        raise ValueError(f"format_example needs a resolved template (chat or plain), got {template!r}")
    user = [{"role": "user", "content": record["instruction"]}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": record["output"]}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of the full conversation; "
                         "use template: plain")
    return prompt, full[len(prompt):]


@dataclass
class EncodedSFT:
    """Token ids and labels of a split, with what happened to sequences over the length limit."""

    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    """Same length as input_ids; IGNORE_INDEX on prompt positions, the token id on response positions."""
    record_ids: list[str] = field(default_factory=list)
    n_records: int = 0
    n_truncated: int = 0
    """Sequences over max_seq_len cut to it (their response loses its tail)."""
    n_dropped: int = 0
    """Sequences left out: over max_seq_len under policy `drop`, or a prompt that leaves no room for a response."""
    template: str = "plain"

    @property
    def n_tokens(self) -> int:
        return sum(map(len, self.input_ids))

    @property
    def n_response_tokens(self) -> int:
        return sum(sum(1 for t in lab if t != IGNORE_INDEX) for lab in self.labels)

    def stats(self) -> dict[str, Any]:
        n = len(self.input_ids)
        return {"n_records": self.n_records, "n_examples": n, "n_truncated": self.n_truncated,
                "n_dropped": self.n_dropped, "template": self.template, "n_tokens": self.n_tokens,
                "n_response_tokens": self.n_response_tokens,
                "mean_tokens": self.n_tokens / n if n else None}


def encode_example(record: Mapping[str, Any], tokenizer: Any, *, template: str,
                   prompt_template: str = DEFAULT_PROMPT_TEMPLATE) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one record, untruncated: prompt ids masked with IGNORE_INDEX, response ids kept.

    Prompt and response are tokenized separately so the mask boundary is exact. The plain template lets the
    tokenizer add its special tokens to the prompt (e.g. BOS) and appends EOS to the response; the chat template
    already carries its own.
    """
    prompt, response = format_example(record, tokenizer, template=template, prompt_template=prompt_template)
    prompt_ids = tokenizer(prompt, add_special_tokens=(template == "plain"))["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if template == "plain" and tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    return prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids


def encode_examples(records: Iterable[Mapping[str, Any]], tokenizer: Any, *, template: str = "auto",
                    prompt_template: str = DEFAULT_PROMPT_TEMPLATE, max_seq_len: int,
                    overlong: str = "truncate") -> EncodedSFT:
    """Encode records for causal-LM fine-tuning with the loss on response tokens only.

    Over `max_seq_len`: `truncate` keeps the first max_seq_len tokens (the prompt whole, the response cut),
    `drop` leaves the sequence out. A prompt of max_seq_len tokens or more leaves no response token, so that
    record is dropped under either policy. Both counts are in the result.
    """
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"overlong {overlong!r} is not one of {', '.join(OVERLONG_POLICIES)}")
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len must be >= 2, got {max_seq_len}")
    resolved = resolve_template(template, tokenizer)
    out = EncodedSFT(template=resolved)
    for rec in records:
        out.n_records += 1
        ids, labels = encode_example(rec, tokenizer, template=resolved, prompt_template=prompt_template)
        if len(ids) > max_seq_len:
            n_prompt = next((i for i, t in enumerate(labels) if t != IGNORE_INDEX), len(labels))
            if overlong == "drop" or n_prompt >= max_seq_len:
                out.n_dropped += 1
                continue
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
            out.n_truncated += 1
        out.input_ids.append(ids)
        out.labels.append(labels)
        out.record_ids.append(str(rec.get("id", out.n_records - 1)))
    return out


# --- files written by the prepare_sft stage ------------------------------------------------------------------

TRAIN_FILE = "train.jsonl"
EVAL_FILE = "eval.jsonl"
SFT_STATS_FILE = "stats.json"


def write_jsonl_text(records: Iterable[Mapping[str, Any]]) -> str:
    """jsonl text (UTF-8, non-ASCII kept, keys in insertion order)."""
    return "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records)


def load_split(data_dir: str | Path, name: str) -> list[dict[str, Any]]:
    """The records of `<data_dir>/<name>.jsonl` written by prepare_sft, validated."""
    path = Path(data_dir) / f"{name}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"SFT split missing: {path} (run `dvc repro prepare_sft`)")
    records = []
    for i, (where, row) in enumerate(read_jsonl(path)):
        rec = openo1_record(row, where, i, source=row.get("source", "openo1")) | {"id": row.get("id", str(i))}
        if "choices" in row:  # a multiple-choice record (medical_mcq_record): its option letters
            if not isinstance(row["choices"], list) or not all(isinstance(c, str) and c for c in row["choices"]):
                raise SFTDataError(f"{where}: field 'choices' must be a list of option letters")
            rec["choices"] = row["choices"]
        records.append(rec)
    return records
