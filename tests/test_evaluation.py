"""Golden prompts during training and batch evaluation after it (metrics, loss, CSV)."""
from __future__ import annotations

import csv
import io
import json
import math

import pytest

from adapter_fixtures import make_adapter, make_job
from studio import evaluation

ROWS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "The capital of France is Paris."}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, how are you?"},
                  {"role": "assistant", "content": "I am fine, thank you."}]},
    {"messages": [{"role": "user", "content": "What is your name?"}, {"role": "assistant", "content": "Zorblax."},
                  {"role": "user", "content": "Who made you?"}, {"role": "assistant", "content": "Quintar Labs."}]},
]


# ---- text metrics ---------------------------------------------------------------------------------

def test_rouge_l_is_the_lcs_f1_over_words():
    assert evaluation.rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert evaluation.rouge_l("The Cat, sat!", "the cat sat") == 1.0  # case and punctuation do not count
    assert evaluation.rouge_l("a b c", "x y z") == 0.0
    assert evaluation.rouge_l("", "x") == 0.0 and evaluation.rouge_l("", "") == 1.0
    # precision 2/4, recall 2/2 -> F1 2/3
    assert evaluation.rouge_l("paris is nice paris", "paris nice") == pytest.approx(2 / 3)
    assert evaluation.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert evaluation.lcs_length(list("BDCABA"), list("ABCBDAB")) == 4


def test_exact_match_and_contains_reference():
    assert evaluation.exact_match("  Paris. ", "paris")
    assert not evaluation.exact_match("Paris is the capital", "Paris")
    assert evaluation.contains_reference("I think it is Paris.", "paris")
    assert not evaluation.contains_reference("Rome", "Paris") and not evaluation.contains_reference("x", "")


def test_eval_conversations_cut_before_the_last_reply():
    rows = ROWS + [{"text": "plain text"}, {"messages": [{"role": "user", "content": "no reply"}]},
                   {"prompt": [{"role": "user", "content": "Pick"}], "chosen": [{"role": "assistant", "content": "A"}],
                    "rejected": [{"role": "assistant", "content": "B"}]}]
    convs = evaluation.eval_conversations(rows)
    assert [c["reference"] for c in convs] == ["The capital of France is Paris.", "I am fine, thank you.",
                                               "Quintar Labs.", "A"]
    assert [m["content"] for m in convs[2]["prompt"]] == ["What is your name?", "Zorblax.", "Who made you?"]


# ---- golden prompts -------------------------------------------------------------------------------

def test_golden_prompts_from_spec_else_from_held_out_rows():
    from studio.spec import JobSpec

    assert evaluation.golden_prompts_for(JobSpec(golden_prompts=["Hi?", " "]), ROWS) == ["Hi?"]
    # single-turn rows first, then the last user turn of longer ones; at most three, no repeats
    assert evaluation.golden_prompts_for(JobSpec(), ROWS[::-1] + ROWS) == [
        "Hello, how are you?", "What is the capital of France?", "Who made you?"]
    assert evaluation.golden_prompts_for(JobSpec(), [{"text": "only text"}]) == []


def test_answer_golden_leaves_the_training_model_training(tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                           LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.1, task_type="CAUSAL_LM"))
    model.train()
    model.base_model.model.lm_head.eval()  # a mixed state is restored exactly, not flattened to train()
    before = {name: m.training for name, m in model.named_modules()}
    replies = evaluation.answer_golden(model, tok, ["Hello, how are you?", "What is your name?"], max_new_tokens=5)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    assert {name: m.training for name, m in model.named_modules()} == before
    ids = torch.tensor([[1, 5, 40, 77, 123]])
    model(input_ids=ids, labels=ids).loss.backward()  # gradients still reach the adapters
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]  # B starts at 0: A gets none yet
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_golden_callback_writes_answers_during_training(tiny_model_dir, studio_home):
    from studio.settings import get_settings
    from studio.spec import JobSpec
    from workers import train
    from workers.callbacks import StudioCallback

    job = make_job(tiny_model_dir, "golden", status="running")
    spec = JobSpec(base_model=str(tiny_model_dir), dataset="tiny-data", load_in_4bit=False, max_steps=2,
                   save_steps=1, per_device_train_batch_size=2, max_length=64, r=4, eval_split=0)
    model, tok = train.load_model_for_training(spec, tiny_model_dir, "cpu")
    out = get_settings().resolve(job.output_dir)
    prompts = evaluation.golden_prompts_for(spec, ROWS)
    # the lines workers/train.py gains: the callback next to StudioCallback
    trainer = train.build_trainer(spec, "chat", model, tok, ROWS * 2, [], out, StudioCallback(job.id), "cpu")
    trainer.add_callback(evaluation.GoldenPromptsCallback(job.id, prompts, tok, max_new_tokens=4))
    trainer.train()

    golden = out / "golden"
    assert sorted(p.name for p in golden.iterdir()) == ["base.json", "step-1.json", "step-2.json"]
    step2 = json.loads((golden / "step-2.json").read_text())
    assert step2["step"] == 2 and step2["final"] is True
    assert [r["prompt"] for r in step2["replies"]] == prompts
    entries = evaluation.read_golden(job.id)
    assert [e["step"] for e in entries] == ["base", 1, 2]
    headers, rows = evaluation.golden_table(entries)
    assert headers == ["prompt", "base", "step 1", "step 2"] and [r[0] for r in rows] == prompts
    assert isinstance(evaluation.GoldenPromptsCallback(job.id, [], tok), __import__("transformers").TrainerCallback)


# ---- batch evaluation -----------------------------------------------------------------------------

def test_evaluate_batch_scores_base_and_adapters(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.chat import ChatEngine
    from studio.render import encode_chat

    adapters = {"one": make_adapter(tiny_model_dir, tmp_path / "one", 1),
                "two": make_adapter(tiny_model_dir, tmp_path / "two", 2)}
    engine = ChatEngine()
    result = evaluation.evaluate_batch(str(tiny_model_dir), adapters, ROWS + [{"text": "skipped"}],
                                       max_new_tokens=6, limit=3, engine=engine)
    assert result["models"] == ["base", "one", "two"] and len(result["rows"]) == 3
    assert result["rows"][2]["prompt"] == "Who made you?" and result["rows"][2]["reference"] == "Quintar Labs."
    for name in result["models"]:
        m = result["metrics"][name]
        assert m["rows"] == 3 and m["tokens"] > 0
        assert m["perplexity"] == pytest.approx(math.exp(m["eval_loss"]))
        assert 0 <= m["rouge_l"] <= 1 and 0 <= m["exact_match"] <= 1 and 0 <= m["contains_reference"] <= 1
    assert len({result["metrics"][n]["eval_loss"] for n in result["models"]}) == 3

    # the base's loss is the plain teacher-forced loss over assistant tokens
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    nll = tokens = 0.0
    for row in ROWS:
        ids, mask = encode_chat(tok, row["messages"])
        labels = torch.tensor([[i if m else -100 for i, m in zip(ids, mask)]])
        n = sum(mask[1:])
        with torch.inference_mode():
            nll += model(input_ids=torch.tensor([ids]), labels=labels).loss.item() * n
        tokens += n
    assert result["metrics"]["base"]["eval_loss"] == pytest.approx(nll / tokens, rel=1e-4)
    assert engine.base_loads == 1

    table = list(csv.reader(io.StringIO(evaluation.to_csv(result))))
    assert table[0][:4] == ["row", "prompt", "reference", "base reply"] and len(table[0]) == 3 + 5 * 3
    assert len(table) == 4 and table[3][2] == "Quintar Labs."
    headers, rows = evaluation.metrics_table(result)
    assert [r[0] for r in rows] == ["base", "one", "two"] and headers[1] == "eval loss"
    with pytest.raises(ValueError, match="no row to evaluate"):
        evaluation.evaluate_batch(str(tiny_model_dir), {}, [{"text": "x"}], engine=engine)
