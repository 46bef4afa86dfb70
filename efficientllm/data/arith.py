"""The embedded SFT data: seeded multi-step arithmetic word problems, in the OpenO1 and the medical-o1 forms.

Why: fine-tuning and its quantization task must run offline, with a task score that means something. Each problem
is a start quantity and a chain of operations; `<Thought>` shows the working line by line, `<Output>` holds the
number, and `answer` repeats it, so exact match on the fine-tuned model's `<Output>` is a real score.
- `arith`: OpenO1 fields (`instruction`, `output`), read through `openo1_record`.
- `arith_medical`: dosage wording in the medical-o1 fields (`Question`, `Complex_CoT`, `Response`), converted by
  `medical_o1_record`. Synthetic arithmetic, not medical data; rows are labelled `source: arith_medical`.
The same arguments give the same rows on every machine (`random.Random` seeded with a string).

    python -c "from efficientllm.data.arith import arith; print(arith(n_examples=1, seed=0)[0]['output'])"
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from efficientllm.data.sft import SFTDataError, medical_o1_record, openo1_record, thought_output

# The word-problem generator: a start quantity and a chain of operations, each written as one sentence of the
# question and one line of working. Numbers stay small so the prompt + working fit in ~96 tokens.
_NAMES = ("Ava", "Ben", "Sam", "Max", "Eva", "Tom", "Ann", "Tim", "Dan", "Jo", "Ed", "Al")
_ITEMS = ("files", "lines", "items", "keys", "values", "objects", "books", "cards", "coins", "apples")


@dataclass(frozen=True)
class _Bank:
    """The wording of one problem family: sentence templates per operation."""

    start: str
    add: tuple[str, ...]
    sub: tuple[str, ...]
    times: tuple[str, ...]
    groups: tuple[str, ...]
    share: tuple[str, ...]
    question: str


_WORD_BANK = _Bank(
    start="{name} has {a} {items}.",
    add=("{name} finds {n} more.", "{name} gets {n} more from a friend.", "{name} buys {n} more."),
    sub=("{name} gives away {n}.", "{name} loses {n}.", "{name} uses {n} of them."),
    times=("Then the number of {items} {word}.",),
    groups=("{name} buys {k} bags with {m} {items} in each.", "{name} gets {k} boxes of {m} {items}."),
    share=("{name} shares them equally with {j} friends and keeps one share.",),
    question="How many {items} does {name} have now?",
)
_DOSE_BANK = _Bank(
    start="A daily dose is {a} mg.",
    add=("It is raised by {n} mg.", "A doctor adds {n} mg."),
    sub=("It is lowered by {n} mg.", "A nurse takes off {n} mg."),
    times=("Then the dose {word}.",),
    groups=("{k} tablets of {m} mg are added.",),
    share=("It is split into {j} equal parts and one part is kept.",),
    question="What is the dose in mg now?",
)
_TIMES_WORDS = {2: "doubles", 3: "triples"}


def _problem(rng: random.Random, bank: _Bank, min_ops: int, max_ops: int) -> tuple[str, str, int]:
    """(question, working, answer) of one seeded problem."""
    name, items = rng.choice(_NAMES), rng.choice(_ITEMS)
    cur = rng.randint(2, 20)
    sentences = [bank.start.format(name=name, items=items, a=cur)]
    lines: list[str] = []
    for _ in range(rng.randint(min_ops, max_ops)):
        ops = ["add", "groups"] + (["sub"] if cur >= 2 else [])
        if cur <= 60:
            ops.append("times")
        divisors = [j + 1 for j in range(1, 5) if cur % (j + 1) == 0]
        if divisors:
            ops.append("share")
        op = rng.choice(ops)
        if op == "add":
            n = rng.randint(1, 20)
            sentences.append(rng.choice(bank.add).format(name=name, n=n))
            lines.append(f"{cur} + {n} = {cur + n}")
            cur += n
        elif op == "sub":
            n = rng.randint(1, cur - 1)
            sentences.append(rng.choice(bank.sub).format(name=name, n=n))
            lines.append(f"{cur} - {n} = {cur - n}")
            cur -= n
        elif op == "times":
            f = rng.choice((2, 3))
            sentences.append(rng.choice(bank.times).format(items=items, word=_TIMES_WORDS[f]))
            lines.append(f"{cur} * {f} = {cur * f}")
            cur *= f
        elif op == "groups":
            k, m = rng.randint(2, 5), rng.randint(2, 9)
            sentences.append(rng.choice(bank.groups).format(name=name, k=k, m=m, items=items))
            lines.append(f"{k} * {m} = {k * m}")
            lines.append(f"{cur} + {k * m} = {cur + k * m}")
            cur += k * m
        else:  # share: j friends + the owner = j + 1 equal shares
            parts = rng.choice(divisors)
            sentences.append(rng.choice(bank.share).format(name=name, j=parts - 1 if bank is _WORD_BANK else parts))
            lines.append(f"{cur} / {parts} = {cur // parts}")
            cur //= parts
    sentences.append(bank.question.format(name=name, items=items))
    return " ".join(sentences), "\n".join(lines), cur


def _unique_problems(seed: str, bank: _Bank, n: int, min_ops: int, max_ops: int) -> list[tuple[str, str, int]]:
    """n problems with distinct questions (so no question is in both train and eval), from one seeded stream."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out = []
    for _ in range(100 * n):
        problem = _problem(rng, bank, min_ops, max_ops)
        if problem[0] not in seen:
            seen.add(problem[0])
            out.append(problem)
            if len(out) == n:
                return out
    raise SFTDataError(f"the generator gave only {len(out)} distinct problems of the {n} asked for (raise max_ops)")


def _check_generator_args(n_examples: int, min_ops: int, max_ops: int) -> None:
    if n_examples < 1:
        raise SFTDataError(f"n_examples must be >= 1, got {n_examples}")
    if not 1 <= min_ops <= max_ops:
        raise SFTDataError(f"need 1 <= min_ops <= max_ops, got min_ops={min_ops}, max_ops={max_ops}")


def arith(*, n_examples: int = 640, min_ops: int = 2, max_ops: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """Seeded multi-step arithmetic word problems in the OpenO1 form, with the number as `answer`.

    The same (n_examples, min_ops, max_ops, seed) give the same rows on every machine (`random.Random`).
    """
    _check_generator_args(n_examples, min_ops, max_ops)
    rows = []
    for i, (question, working, answer) in enumerate(_unique_problems(f"arith-{seed}", _WORD_BANK, n_examples,
                                                                      min_ops, max_ops)):
        row = {"instruction": question, "output": thought_output(working, str(answer)), "answer": str(answer)}
        rows.append(openo1_record(row, f"arith [index {i}]", i, source="arith"))
    return rows


def arith_medical(*, n_examples: int = 640, min_ops: int = 2, max_ops: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """The arithmetic generator with dosage wording, in the medical-o1 fields (`Question`, `Complex_CoT`,
    `Response`), converted by the medical-o1 path. Synthetic arithmetic, not medical data: `source` says so."""
    _check_generator_args(n_examples, min_ops, max_ops)
    rows = []
    for i, (question, working, answer) in enumerate(_unique_problems(f"arith_medical-{seed}", _DOSE_BANK, n_examples,
                                                                      min_ops, max_ops)):
        row = {"Question": question, "Complex_CoT": working, "Response": str(answer), "answer": str(answer)}
        rows.append(medical_o1_record(row, f"arith_medical [index {i}]", i, source="arith_medical"))
    return rows
