"""Quality: the cloze builder, the repository's lm-eval task YAMLs scoring tiny models offline, and perplexity."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from efficientllm.data.cloze import build_cloze, read_documents, write_cloze
from efficientllm.data.tokenizer import train_tokenizer
from efficientllm.evaluation import local_task_files, perplexity, run_tasks, task_configs
from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tasks"
SHARED_DATA = REPO.parent / "shared" / "data"
CPU = torch.device("cpu")
METRICS = {"efficientllm_cloze": "acc_mutual_info", "efficientllm_arith": "exact_match",
           "efficientllm_arc_easy": "acc_norm"}

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Six documents, each cycling through its own words: the next word is fully determined by the previous one, and no
# two documents share a word, so a model that has learned the bigrams picks the true continuation every time.
WORDS = [["alpha", "bravo", "charlie", "delta", "echo"], ["red", "green", "blue", "cyan", "pink"],
         ["one", "two", "three", "four", "five"], ["north", "south", "east", "west", "up"],
         ["cat", "dog", "cow", "pig", "hen"], ["oak", "elm", "ash", "fir", "yew"]]
DOCS = [" ".join(w[i % 5] for i in range(60)) for w in WORDS]


def test_cloze_items_are_deterministic_and_correct():
    items = build_cloze(DOCS, n_choices=4, context_words=6, continuation_words=3, items_per_doc=2, seed=7)
    assert items == build_cloze(DOCS, n_choices=4, context_words=6, continuation_words=3, items_per_doc=2, seed=7)
    assert len(items) == 12
    for item in items:
        doc = DOCS[int(item["id"].split("-")[0])]
        true = item["choices"][item["label"]]
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
        assert f"{item['context']} {true}" in doc  # the true span continues the context in its own document
        for j, choice in enumerate(item["choices"]):
            assert len(choice.split()) == 3
            if j != item["label"]:
                assert choice not in doc  # distractors come from other documents
    labels = {item["label"] for item in items}
    assert len(labels) > 1  # the true span is not always in the same place


def test_cloze_redraws_spans_too_long_to_score_alone():
    docs = [d + " " + "x" * 80 for d in DOCS]  # one 80-character "word" at the end of every document
    items = build_cloze(docs, n_choices=4, context_words=6, continuation_words=3, items_per_doc=4,
                        max_choice_chars=30, seed=3)
    assert items and all(len(c) <= 30 for item in items for c in item["choices"])


def test_cloze_rejects_impossible_settings():
    with pytest.raises(ValueError, match="needs at least one and 4"):
        build_cloze(DOCS[:3], n_choices=4)
    with pytest.raises(ValueError, match="n_choices"):
        build_cloze(DOCS, n_choices=1)


def test_read_documents_names_the_bad_line(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text('{"text": "fine"}\n{"txt": "no"}\n')
    with pytest.raises(ValueError, match=r"docs.jsonl:2"):
        read_documents(p)


@pytest.fixture(scope="module")
def cycle_model() -> tuple[EfficientLMForCausalLM, object]:
    """A tiny model trained for 120 steps on DOCS (with a tokenizer trained on them)."""
    tok = train_tokenizer(DOCS, 300)
    ids = [tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for d in DOCS]
    stream = torch.tensor([i for doc in ids for i in doc])
    cfg = EfficientLMConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                            bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = EfficientLMForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        starts = torch.randint(0, len(stream) - 33, (8,), generator=g)
        batch = torch.stack([stream[s:s + 32] for s in starts])
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), tok


def test_cloze_yaml_loads_in_lm_eval_and_scores_a_tiny_model_offline(tmp_path, cycle_model):
    model, tok = cycle_model
    items = build_cloze(DOCS, n_choices=4, context_words=8, continuation_words=2, items_per_doc=3, seed=1)
    path = write_cloze(tmp_path / "cloze", items, {})
    scores = run_tasks(model, tok, tasks=["efficientllm_cloze"], metrics=METRICS, tasks_dir=TASKS, device=CPU,
                       batch_size=8, data_files={"efficientllm_cloze": str(path)})
    assert scores.n_docs["efficientllm_cloze"] == len(items) == 18
    acc = scores.primary["efficientllm_cloze"]
    assert acc is not None and acc > 0.5  # chance is 0.25; the model knows every bigram of DOCS
    assert scores.quality_value == acc and scores.quality_metric(METRICS) == "efficientllm_cloze.acc_mutual_info"
    assert set(scores.all_metrics["efficientllm_cloze"]) >= {"acc,none", "acc_norm,none", "acc_mutual_info,none"}
    assert scores.settings["batch_size"] == 8


def test_arith_yaml_generates_and_extracts_the_output_number(tmp_path, cycle_model):
    model, tok = cycle_model
    rows = [{"instruction": f"What is {i} plus 1?", "output": f"<Thought>\n{i}+1\n</Thought>\n<Output>\n{i + 1}\n"
             "</Output>", "answer": str(i + 1)} for i in range(3)]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = run_tasks(model, tok, tasks=["efficientllm_arith"], metrics=METRICS, tasks_dir=TASKS, device=CPU,
                       batch_size=4, data_files={"efficientllm_arith": str(path)})
    assert scores.n_docs["efficientllm_arith"] == 3
    assert scores.primary["efficientllm_arith"] == 0.0  # a model that never saw arithmetic: the filter finds no number
    assert "exact_match,output" in scores.all_metrics["efficientllm_arith"]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data samples not present ({SHARED_DATA})")
def test_arc_easy_from_the_local_jsonl(cycle_model):
    model, tok = cycle_model
    scores = run_tasks(model, tok, tasks=["efficientllm_arc_easy"], metrics=METRICS, tasks_dir=TASKS, device=CPU,
                       batch_size=8, limit=12,
                       data_files={"efficientllm_arc_easy": str(SHARED_DATA / "ARC-Easy-validation.jsonl")})
    assert scores.n_docs["efficientllm_arc_easy"] == 12
    assert 0.0 <= scores.primary["efficientllm_arc_easy"] <= 1.0


def test_task_configs_resolve_local_files_and_pass_registry_names_through(tmp_path, monkeypatch):
    assert {"efficientllm_cloze", "efficientllm_arith", "efficientllm_arc_easy"} <= set(local_task_files(TASKS))
    data = tmp_path / "arc.jsonl"
    data.write_text("{}\n")
    cfgs = task_configs(["efficientllm_arc_easy", "leaderboard_bbh"], TASKS, {"efficientllm_arc_easy": str(data)})
    assert cfgs[0]["dataset_kwargs"]["data_files"] == {"test": str(data.resolve())}
    assert cfgs[1] == "leaderboard_bbh"  # not in the repository: lm-eval's own registry resolves it
    monkeypatch.chdir(tmp_path)  # data/cloze/test.jsonl does not exist here
    with pytest.raises(FileNotFoundError, match="task efficientllm_cloze: data file"):
        task_configs(["efficientllm_cloze"], TASKS)
    with pytest.raises(ValueError, match="not a task YAML"):
        task_configs(["efficientllm_cloze"], TASKS, {"nonesuch": str(data)})


def test_perplexity_is_the_mean_token_loss_whatever_the_batch(cycle_model):
    model, tok = cycle_model
    blocks = np.array([tok(d, add_special_tokens=False)["input_ids"][:16] for d in DOCS], dtype=np.uint16)
    a = perplexity(model, blocks, n_blocks=5, batch_size=2, device=CPU)
    b = perplexity(model, blocks, n_blocks=5, batch_size=5, device=CPU)
    assert a["ppl_blocks"] == 5 and a["ppl_tokens"] == 5 * 15
    assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-5)
    with torch.no_grad():
        x = torch.as_tensor(blocks[:5].astype(np.int64))
        ref = torch.nn.functional.cross_entropy(model(input_ids=x).logits[:, :-1].reshape(-1, len(tok)),
                                                x[:, 1:].reshape(-1))
    assert a["eval_loss"] == pytest.approx(float(ref), rel=1e-5)
    assert a["val_ppl"] == pytest.approx(math.exp(a["eval_loss"]))
