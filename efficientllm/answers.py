"""Answer accuracy given the reference reasoning: a fine-tuned model reads a held-out record's own <Thought> and
states its <Output> (exact match), or picks the option of a multiple-choice record (letter choice).

Why: the paper's SFT sets (OpenO1-SFT, medical-o1) put hundreds of tokens of reasoning before the answer.
Generating them takes minutes per record on a CPU, and a model fine-tuned for a few dozen steps on sequences cut to
a few hundred tokens rarely gets as far as <Output> at all: free-generation exact match would be 0 for every method
and compare nothing. Given the reference <Thought> (teacher-forced, the same for every method), the model only has
to state the answer the reasoning reached: one prefill and a few tokens per record, and a measure of whether the
fine-tuning taught the answer format and the reading of the reasoning. Rows say which protocol was used
(`extra.exact_match_protocol`); `finetune.answer_eval: generate` keeps free generation (the arith sets).

- Multiple-choice records (`choices`: the option letters, `answer`: the gold letter; efficientllm.data.sft's
  medical_mcq_record) are scored by letter choice: the letter whose first token is most likely right after
  `<Output>`, as lm-eval scores MMLU (one forward, no generation).
- Other records with an `answer` are answered greedily after `<Output>` up to `</Output>` and compared exactly
  (whitespace stripped); an answer longer than the generation budget cannot be produced, so such records are left
  out and counted (`exact_match_skipped_long`).

    python -c "from efficientllm.answers import answer_prefix as p; print(repr(p('<Thought>a</Thought><Output>b')))"
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from efficientllm.data.sft import format_example

OUTPUT_TAG_RE = re.compile(r"<Output>[ \t]*\n?")
"""The opening <Output> tag of a reference output and the line break after it."""
GENERATION_CHUNK = 4
"""Records generated together (left-padded): bounds the KV cache of long reasoning prefixes."""


def answer_prefix(output: str) -> str | None:
    """The reference output up to and including its first `<Output>` tag (and the newline after it); None without
    one."""
    m = OUTPUT_TAG_RE.search(output)
    return output[: m.end()] if m else None


def left_padded(encoded: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both (B, T), of token id lists padded on the left: every sequence ends where the
    generation starts."""
    width = max(map(len, encoded))
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, x in enumerate(encoded):
        ids[i, width - len(x):] = torch.as_tensor(x)
        mask[i, width - len(x):] = 1
    return ids, mask


def given_thought_ids(record: dict[str, Any], tokenizer: Any, *, template: str, prompt_template: str) -> list[int]:
    """Token ids of the record's prompt followed by its reference output up to `<Output>`, tokenized as training
    tokenized them (prompt and response separately; special tokens only on a plain prompt)."""
    prompt, _ = format_example(record, tokenizer, template=template, prompt_template=prompt_template)
    prefix = answer_prefix(record["output"])
    if prefix is None:
        raise ValueError(f"record {record.get('id')}: the reference output has no <Output> tag to answer after")
    return (tokenizer(prompt, add_special_tokens=(template == "plain"))["input_ids"]
            + tokenizer(prefix, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def letter_choice(model: nn.Module, tokenizer: Any, ids: list[int], letters: list[str],
                  device: torch.device) -> str:
    """The option letter whose first token the model finds most likely after `ids`."""
    first = [tokenizer(letter, add_special_tokens=False)["input_ids"][0] for letter in letters]
    if len(set(first)) != len(first):
        raise ValueError(f"the option letters {letters} do not start with distinct tokens")
    logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, -1]  # (V,)
    return letters[int(torch.argmax(logits[first]))]


@torch.no_grad()
def generated_answers(model: nn.Module, tokenizer: Any, encoded: list[list[int]], max_new_tokens: int,
                      device: torch.device) -> list[str]:
    """Greedy continuations of `encoded` (at most max_new_tokens tokens each), cut at `</Output>` and stripped."""
    out: list[str] = []
    for start in range(0, len(encoded), GENERATION_CHUNK):
        ids, mask = left_padded(encoded[start:start + GENERATION_CHUNK], tokenizer.pad_token_id)
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
        out.extend(t.split("</Output>")[0].strip() for t in texts)
    return out


def given_thought_accuracy(model: nn.Module, tokenizer: Any, records: list[dict[str, Any]], *, template: str,
                           prompt_template: str, max_new_tokens: int, device: torch.device) -> dict[str, Any]:
    """Answer accuracy of `records` (those with an `answer`) given their reference reasoning: letter choice for
    multiple-choice records, exact match of the generated <Output> for the others. Returns the fields the fine-tuning
    row keeps (`exact_match`, `exact_match_n`, per-record `examples`, a few samples) and the protocol's counts."""
    records = [r for r in records if r.get("answer") and answer_prefix(r["output"]) is not None]
    mcq = [r for r in records if r.get("choices")]
    fits = [r for r in records if not r.get("choices")
            and len(tokenizer(r["answer"], add_special_tokens=False)["input_ids"]) < max_new_tokens]
    skipped = len(records) - len(mcq) - len(fits)
    base = {"protocol": "given_thought", "exact_match_letter_n": len(mcq), "exact_match_skipped_long": skipped}
    if not mcq and not fits:
        return {"exact_match": None, "exact_match_n": 0, **base}
    was_training = model.training
    model.eval()
    ids = {id(r): given_thought_ids(r, tokenizer, template=template, prompt_template=prompt_template)
           for r in mcq + fits}
    answers = {id(r): letter_choice(model, tokenizer, ids[id(r)], list(r["choices"]), device) for r in mcq}
    answers.update(zip(map(id, fits), generated_answers(model, tokenizer, [ids[id(r)] for r in fits],
                                                        max_new_tokens, device), strict=True))
    model.train(was_training)
    scored = mcq + fits
    correct = [answers[id(r)] == r["answer"].strip() for r in scored]
    return {"exact_match": sum(correct) / len(scored), "exact_match_n": len(scored), **base,
            "examples": [{"set": "exact_match", "stat": "ratio", "example": str(r.get("id", i)), "value": float(c),
                          "weight": 1.0} for i, (r, c) in enumerate(zip(scored, correct, strict=True))],
            "exact_match_samples": [{"answer": r["answer"], "generated": answers[id(r)][:200]} for r in scored[:3]]}
