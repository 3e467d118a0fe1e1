"""Golden prompts during training and batch evaluation after it (metrics, loss, CSV)."""
from __future__ import annotations

import csv
import io
import json
import math

import pytest

from adapter_fixtures import make_adapter, make_job
from studio import batch_evaluation, golden_prompts

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
    assert batch_evaluation.rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert batch_evaluation.rouge_l("The Cat, sat!", "the cat sat") == 1.0  # case and punctuation do not count
    assert batch_evaluation.rouge_l("a b c", "x y z") == 0.0
    assert batch_evaluation.rouge_l("", "x") == 0.0 and batch_evaluation.rouge_l("", "") == 1.0
    # precision 2/4, recall 2/2 -> F1 2/3
    assert batch_evaluation.rouge_l("paris is nice paris", "paris nice") == pytest.approx(2 / 3)
    assert batch_evaluation.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert batch_evaluation.lcs_length(list("BDCABA"), list("ABCBDAB")) == 4


def test_exact_match_and_contains_reference():
    assert batch_evaluation.exact_match("  Paris. ", "paris")
    assert not batch_evaluation.exact_match("Paris is the capital", "Paris")
    assert batch_evaluation.contains_reference("I think it is Paris.", "paris")
    assert not batch_evaluation.contains_reference("Rome", "Paris") and not batch_evaluation.contains_reference("x", "")


def test_eval_conversations_cut_before_the_last_reply():
    rows = ROWS + [{"text": "plain text"}, {"messages": [{"role": "user", "content": "no reply"}]},
                   {"prompt": [{"role": "user", "content": "Pick"}], "chosen": [{"role": "assistant", "content": "A"}],
                    "rejected": [{"role": "assistant", "content": "B"}]}]
    convs = batch_evaluation.eval_conversations(rows)
    assert [c["reference"] for c in convs] == ["The capital of France is Paris.", "I am fine, thank you.",
                                               "Quintar Labs.", "A"]
    assert [m["content"] for m in convs[2]["prompt"]] == ["What is your name?", "Zorblax.", "Who made you?"]


# ---- golden prompts -------------------------------------------------------------------------------

def test_golden_prompts_from_spec_else_from_held_out_rows():
    from studio.spec import JobSpec

    assert golden_prompts.golden_prompts_for(JobSpec(golden_prompts=["Hi?", " "]), ROWS) == ["Hi?"]
    # single-turn rows first, then the last user turn of longer ones; at most three, no repeats
    assert golden_prompts.golden_prompts_for(JobSpec(), ROWS[::-1] + ROWS) == [
        "Hello, how are you?", "What is the capital of France?", "Who made you?"]
    assert golden_prompts.golden_prompts_for(JobSpec(), [{"text": "only text"}]) == []


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
    from workers.golden import answer_golden

    replies = answer_golden(model, tok, ["Hello, how are you?", "What is your name?"], max_new_tokens=5)
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
    from workers.golden import GoldenPromptsCallback

    job = make_job(tiny_model_dir, "golden", status="running")
    spec = JobSpec(base_model=str(tiny_model_dir), dataset="tiny-data", load_in_4bit=False, max_steps=2,
                   save_steps=1, per_device_train_batch_size=2, max_length=64, r=4, eval_split=0)
    model, tok = train.load_model_for_training(spec, tiny_model_dir, "cpu")
    out = get_settings().resolve(job.output_dir)
    prompts = golden_prompts.golden_prompts_for(spec, ROWS)
    # the lines workers/train.py gains: the callback next to StudioCallback
    trainer = train.build_trainer(spec, "chat", model, tok, ROWS * 2, [], out, StudioCallback(job.id), "cpu")
    trainer.add_callback(GoldenPromptsCallback(job.id, prompts, tok, max_new_tokens=4))
    trainer.train()

    golden = out / "golden"
    assert sorted(p.name for p in golden.iterdir()) == ["base.json", "step-1.json", "step-2.json"]
    step2 = json.loads((golden / "step-2.json").read_text())
    assert step2["step"] == 2 and step2["final"] is True
    assert [r["prompt"] for r in step2["replies"]] == prompts
    entries = golden_prompts.read_golden(job.id)
    assert [e["step"] for e in entries] == ["base", 1, 2]
    headers, rows = golden_prompts.golden_table(entries)
    assert headers == ["prompt", "base", "step 1", "step 2"] and [r[0] for r in rows] == prompts
    assert isinstance(GoldenPromptsCallback(job.id, [], tok), __import__("transformers").TrainerCallback)


def test_golden_prompts_are_cut_to_the_runs_max_length(tiny_model_dir):
    from transformers import AutoTokenizer

    from studio.render import render_text

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    long = "the capital of France is Paris " * 300
    short, cut = golden_prompts.fit_prompts(tok, ["Hello, how are you?", long], max_length=128, max_new_tokens=32)
    assert short == "Hello, how are you?" and long.startswith(cut) and len(cut) < len(long)
    text = render_text(tok, [{"role": "user", "content": cut}], generation_prompt=True)
    assert 128 - 32 - 3 <= len(tok(text, add_special_tokens=False)["input_ids"]) <= 128 - 32
    assert golden_prompts.fit_prompts(tok, ["x" * 20_000], None) == ["x" * 8_000]  # no max length known: the limit


def _forward_spy(monkeypatch, when, on_call):
    """Count the tiny Llama's forward passes for which ``when()`` holds, calling ``on_call(n)`` before the n-th."""
    from transformers import LlamaForCausalLM

    calls = []
    real = LlamaForCausalLM.forward

    def forward(self, *args, **kwargs):
        if when():
            calls.append(1)
            on_call(len(calls))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", forward)
    return calls


def _events(job_id):
    from studio import db

    return [e.status for e in db.job_events(job_id)]


def test_cancel_stops_a_long_golden_round_between_tokens_and_the_run_ends_cancelled(studio_home, tiny_model_dir,
                                                                                     tmp_path, monkeypatch):
    """50 golden prompts answered as the base before the first step: the user cancels at the round's third token,
    and the round stops at that token (not 7 batches x 32 tokens later); no answer of the round is kept."""
    import torch

    from adapter_fixtures import identity_job
    from studio import cancel, db, jobs
    from workers import train

    monkeypatch.setattr(cancel, "POLL_SECONDS", 0.0)  # the flag is read at every token: no timing in the test
    prompts = [f"Question {i}: what is the capital of France?" for i in range(50)]
    job_id = identity_job(tiny_model_dir, tmp_path, "golden-cancel", max_steps=4, general_replay=0.0,
                          golden_prompts=prompts)
    generated = _forward_spy(monkeypatch, torch.is_inference_mode_enabled,
                             lambda n: n == 3 and jobs.cancel(job_id))
    assert train.run_job(job_id) == "cancelled"
    job = db.get_job(job_id)
    assert (job.status, job.current_step, job.error) == ("cancelled", 0, None) and job.finished_at
    assert len(generated) == 3
    assert not (studio_home / "jobs" / "golden-cancel" / "golden" / "base.json").exists()
    assert _events(job_id) == ["running", "cancelled"]
    log = (studio_home / "jobs" / "golden-cancel" / "train.log").read_text()
    assert "the run was cancelled during the golden prompts (as the base)" in log


def test_cancel_stops_an_evaluation_between_its_batches(studio_home, tiny_model_dir, tmp_path, monkeypatch):
    import torch

    from adapter_fixtures import identity_job
    from studio import db, jobs
    from workers import callbacks, train

    class Prompt(callbacks.StudioCallback):  # reads the flag at every chance: no timing in the test
        def __init__(self, job_id, **kw):
            super().__init__(job_id, poll_seconds=0.0, **kw)

    monkeypatch.setattr(callbacks, "StudioCallback", Prompt)
    job_id = identity_job(tiny_model_dir, tmp_path, "eval-cancel", max_steps=4, eval_steps=2, general_replay=0.0,
                          per_device_train_batch_size=1, golden_prompts=["Hi?"])
    evaluated = _forward_spy(monkeypatch, lambda: not torch.is_grad_enabled() and not torch.is_inference_mode_enabled(),
                             lambda n: n == 1 and jobs.cancel(job_id))
    assert train.run_job(job_id) == "cancelled"
    job = db.get_job(job_id)
    assert (job.status, job.current_step) == ("cancelled", 2)
    assert len(evaluated) == 1                         # 8 held-out rows: stopped after the first batch
    assert not [r for r in db.metric_rows(job_id) if r["eval_loss"] is not None]
    assert "the run was cancelled during the evaluation at step 2" in (
        studio_home / "jobs" / "eval-cancel" / "train.log").read_text()


def test_cancel_stops_the_general_replay_answers_and_the_run_never_trains(studio_home, tiny_model_dir, tmp_path,
                                                                         monkeypatch):
    import torch

    from adapter_fixtures import identity_job
    from studio import cancel, db, jobs
    from studio.replay import CACHE_DIR
    from workers import train

    monkeypatch.setattr(cancel, "POLL_SECONDS", 0.0)
    job_id = identity_job(tiny_model_dir, tmp_path, "replay-cancel", max_steps=4, general_replay=0.25)
    generated = _forward_spy(monkeypatch, torch.is_inference_mode_enabled, lambda n: n == 2 and jobs.cancel(job_id))
    trained = _forward_spy(monkeypatch, torch.is_grad_enabled, lambda n: None)
    assert train.run_job(job_id) == "cancelled"
    assert db.get_job(job_id).current_step == 0 and len(generated) == 2 and trained == []
    assert not list((studio_home / CACHE_DIR).glob("*.json"))      # the cut answers were not kept
    assert "general replay stopped: the run was cancelled" in (
        studio_home / "jobs" / "replay-cancel" / "train.log").read_text()


def test_cancel_stops_the_forgetting_check_and_the_run_stays_completed(studio_home, tiny_model_dir, tmp_path,
                                                                      monkeypatch):
    import torch

    from adapter_fixtures import identity_job
    from studio import cancel, db, jobs
    from workers import train

    monkeypatch.setattr(cancel, "POLL_SECONDS", 0.0)
    job_id = identity_job(tiny_model_dir, tmp_path, "probe-cancel", max_steps=2, general_replay=0.0, eval_split=0.0,
                          forgetting_check=True)

    def press_cancel(n):
        if n == 2:
            assert db.get_job(job_id).summary["forgetting"] == {"state": "checking"}
            assert jobs.cancel(job_id).cancel_requested
    probed = _forward_spy(monkeypatch, lambda: torch.is_inference_mode_enabled() and db.get_job(job_id).status ==
                          "completed", press_cancel)
    assert train.run_job(job_id) == "completed"
    job = db.get_job(job_id)
    assert job.status == "completed" and len(probed) == 2
    assert job.summary["forgetting"] == {"state": "skipped", "error": "the check was cancelled"}
    assert _events(job_id) == ["running", "completed"]


def test_studio_cancel_frees_a_real_worker_jammed_on_golden_prompts(studio_home, tmp_path, tmp_path_factory,
                                                                    tiny_model_dir, capsys):
    """The probe's case on a real consumer: a run whose 50 longest golden prompts hold the worker for many seconds
    before its first step, and a run queued behind it. `studio cancel` stops the round between its tokens: the run
    ends cancelled without the round's answers, and the run behind it trains."""
    import random

    from conftest import wait_for
    from identity_data import write
    from studio import cli, db, jobs, library
    from studio.limits import GOLDEN_PROMPT_CHARS, GOLDEN_PROMPTS
    from studio.settings import get_settings
    from studio.spec import JobSpec
    from tiny import build_tiny_model
    from workerproc import Worker

    slow = build_tiny_model(tmp_path_factory.mktemp("slower-llama"), hidden=256, layers=4)  # a round: ~15 s of CPU
    library.add(write(tmp_path / "identity.jsonl"), name="identity")
    words = "the capital of France is Paris hello how are you my name is Zorblax made by Quintar Labs".split()
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(words) for _ in range(GOLDEN_PROMPT_CHARS))[:GOLDEN_PROMPT_CHARS]
               for _ in range(GOLDEN_PROMPTS)]
    common = dict(dataset="identity", load_in_4bit=False, r=4, lora_alpha=8, per_device_train_batch_size=2,
                  eval_split=0.0, general_replay=0.0)
    jammed = jobs.submit(JobSpec(base_model=str(slow), max_steps=2, max_length=1024, golden_prompts=prompts,
                                 name="jammed", **common))
    behind = jobs.submit(JobSpec(base_model=str(tiny_model_dir), max_steps=1, max_length=128, name="behind", **common))
    log = get_settings().resolve(jammed.output_dir) / "train.log"
    with Worker(studio_home, tmp_path / "worker.log"):
        wait_for(lambda: log.exists() and "answering 50 golden prompts at step base" in log.read_text(), 300,
                 interval=0.1, what="the golden round to begin")
        assert cli.main(["cancel", jammed.id]) == 0
        assert capsys.readouterr().out == "jammed: cancel requested\n"
        wait_for(lambda: db.get_job(jammed.id).status in db.FINISHED, 120, interval=0.2, what="the run to stop")
        wait_for(lambda: db.get_job(behind.id).status in db.FINISHED, 300, what="the run behind it to finish")
    jammed, behind = db.get_job(jammed.id), db.get_job(behind.id)
    assert (jammed.status, jammed.current_step, jammed.error) == ("cancelled", 0, None)
    assert not (get_settings().resolve(jammed.output_dir) / "golden" / "base.json").exists()  # the round unfinished
    assert "the run was cancelled during the golden prompts (as the base)" in log.read_text()
    assert [e.status for e in db.job_events(jammed.id)] == ["queued", "running", "cancelled"]
    assert behind.status == "completed", behind.error


# ---- batch evaluation -----------------------------------------------------------------------------

def test_evaluate_batch_asks_an_inference_server_for_replies_and_reference_scores(tiny_model_dir, studio_home,
                                                                                 tmp_path):
    """Every reply is streamed from a real `studio infer` process and every reference reply scored there
    (vLLM's prompt_logprobs); the numbers match the in-process engine's greedy replies and teacher-forced loss."""
    from inferproc import infer_process
    from studio.generation import GenerationSettings
    from workers.inference.chat_engine import ChatEngine
    from workers.inference.evaluation import evaluate_batch

    make_job(tiny_model_dir, "one", seed=1)
    make_job(tiny_model_dir, "two", seed=2)
    with infer_process(studio_home, tmp_path / "infer.log") as url:
        result = evaluate_batch(str(tiny_model_dir), {"one": "one", "two": "two"}, ROWS + [{"text": "skipped"}],
                                max_new_tokens=6, limit=3)
        with pytest.raises(ValueError, match="no row to evaluate"):
            evaluate_batch(str(tiny_model_dir), {}, [{"text": "x"}])
    assert result["server"] == url
    assert result["models"] == ["base", "one", "two"] and len(result["rows"]) == 3
    assert result["rows"][2]["prompt"] == "Who made you?" and result["rows"][2]["reference"] == "Quintar Labs."
    for name in result["models"]:
        m = result["metrics"][name]
        assert m["rows"] == 3 and m["tokens"] > 0
        assert m["perplexity"] == pytest.approx(math.exp(m["eval_loss"]))
        assert 0 <= m["rouge_l"] <= 1 and 0 <= m["exact_match"] <= 1 and 0 <= m["contains_reference"] <= 1
    assert len({result["metrics"][n]["eval_loss"] for n in result["models"]}) == 3

    # the base's loss is the teacher-forced loss of each reference reply (earlier assistant turns excluded),
    # and its replies are the in-process greedy ones
    engine = ChatEngine()
    engine.ensure_base(str(tiny_model_dir))
    convs = batch_evaluation.eval_conversations(ROWS)
    nll = tokens = 0.0
    for conv in convs:
        whole, n = engine.nll(conv["messages"], None)
        before, m = engine.nll(conv["prompt"], None)  # the earlier turns' own assistant tokens
        nll, tokens = nll + whole - before, tokens + n - m
        settings = GenerationSettings(max_new_tokens=6, temperature=0.0, repetition_penalty=1.0)
        assert engine.reply(conv["prompt"], None, settings).strip() in [r["replies"]["base"] for r in result["rows"]]
    assert result["metrics"]["base"]["tokens"] == tokens
    assert result["metrics"]["base"]["eval_loss"] == pytest.approx(nll / tokens, rel=1e-4)

    table = list(csv.reader(io.StringIO(batch_evaluation.to_csv(result))))
    assert table[0][:4] == ["row", "prompt", "reference", "base reply"] and len(table[0]) == 3 + 5 * 3
    assert len(table) == 4 and table[3][2] == "Quintar Labs."
    headers, rows = batch_evaluation.metrics_table(result)
    assert [r[0] for r in rows] == ["base", "one", "two"] and headers[1] == "eval loss"


def test_evaluate_batch_without_an_inference_server_says_how_to_start_one(tiny_model_dir, studio_home):
    from studio.inference_client import InferenceError
    from workers.inference.evaluation import evaluate_batch

    with pytest.raises(InferenceError) as caught:
        evaluate_batch(str(tiny_model_dir), {}, ROWS)
    message = str(caught.value)
    assert "no inference server is running" in message and "`studio worker`" in message and "`studio infer`" in message
    assert "\n" not in message
