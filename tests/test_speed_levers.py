"""Speed levers change speed only: the dequantised-weight cache gives the same logits and gradients
as bitsandbytes' own 4-bit path; torch.compile, padding-free batches and the logits loss change no numbers either."""
import torch

from studio.spec import JobSpec
from workers import speed, train


def _chat_rows(extra_words: int = 1) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"question {i}?"},
                          {"role": "assistant", "content": "answer " * (i + extra_words)}]} for i in range(4)]


def _tiny_trainer(tiny_model_dir, out, rows, seed: int | None = None, **spec_kw):
    """The worker's own model + trainer on the tiny model, and the collated batch of all ``rows``."""
    from transformers import TrainerCallback

    spec = JobSpec(**{"dataset": "d", "base_model": str(tiny_model_dir), "load_in_4bit": False, "r": 4,
                      "lora_alpha": 8, "max_steps": 1, "per_device_train_batch_size": len(rows),
                      "eval_split": 0.0, "max_length": 128, **spec_kw})
    if seed is not None:
        torch.manual_seed(seed)
    model, tok = train.load_model_for_training(spec, tiny_model_dir, "cpu")
    trainer = train.build_trainer(spec, "chat", model, tok, rows, [], out, TrainerCallback(), "cpu")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    return spec, model, tok, trainer, batch


def _grads(model, x):
    model.zero_grad()
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_dequant_cache_matches_bitsandbytes_exactly(tiny_model_dir):
    spec = JobSpec(dataset="d", load_in_4bit=True, r=4, lora_alpha=8, bnb_4bit_compute_dtype="float32",
                   lora_dropout=0.0, dequant_cache="off")
    torch.manual_seed(0)
    model, tok = train.load_model_for_training(spec, tiny_model_dir, "cpu")
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    x = torch.randint(0, len(tok), (2, 20))
    logits_ref, grads_ref = _grads(model, x)
    assert speed.enable_dequant_cache(model) == len(speed.linear4bit_modules(model)) > 0
    logits, grads = _grads(model, x)
    assert torch.allclose(logits, logits_ref, atol=1e-5)
    assert grads.keys() == grads_ref.keys()
    for n in grads:
        assert torch.allclose(grads[n], grads_ref[n], atol=1e-5, rtol=1e-4), n
    # the adapter file never carries the cache
    assert not any(speed.CACHE_ATTR in k for k in model.state_dict())


def test_padding_free_batches_train_exactly_like_separate_sequences(tiny_model_dir):
    """No cross-contamination: each sequence's logits and loss in a padding-free batch equal those of
    the sequence run alone; every real label token is trained on."""
    from transformers import AutoModelForCausalLM

    from workers.batching import PaddingFreeCollator

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (7, 12, 5, 30)]
    labels = [s[:] for s in seqs]
    labels[1][:4] = [-100] * 4  # a masked prompt stays masked
    batch = PaddingFreeCollator()([{"input_ids": s, "labels": lab} for s, lab in zip(seqs, labels)])
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        start = 0
        total_loss, total_tokens = 0.0, 0
        for s, lab in zip(seqs, labels):
            alone = model(input_ids=torch.tensor([s])).logits[0]
            assert torch.allclose(packed[start:start + len(s)], alone, atol=1e-5)
            lt = torch.tensor(lab)
            per_tok = torch.nn.functional.cross_entropy(alone[:-1], lt[1:], ignore_index=-100, reduction="sum")
            total_loss += per_tok.item()
            total_tokens += int((lt[1:] != -100).sum())
            start += len(s)
        loss = model(**batch).loss.item()
    assert abs(loss - total_loss / total_tokens) < 1e-5
    trained = int((batch["labels"][0][1:] != -100).sum())
    assert trained == total_tokens == sum(len(s) - 1 for s in seqs) - 3  # labels 1..3 of the second are masked


def test_length_grouped_batches_cover_every_row_once_with_less_padding():
    """Grouped batches: every row exactly once per epoch, batch boundaries kept for the DataLoader, far
    less padding than random batches, a different (seeded, reproducible) order each epoch, and no
    longest-first curriculum."""
    import random

    from workers.batching import LengthGroupedSampler

    rng = random.Random(0)
    lengths = [rng.randint(20, 400) for _ in range(203)]
    sampler = LengthGroupedSampler(lengths, batch_size=4, seed=7)
    order = list(sampler)
    assert sorted(order) == list(range(203))
    batches = [order[i:i + 4] for i in range(0, len(order), 4)]
    assert batches == sampler.batches()  # consecutive chunks of 4 are the sampler's own batches

    def padded(bs):
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    random_batches = [list(range(203))[i:i + 4] for i in range(0, 203, 4)]
    assert padded(batches) < 0.75 * padded(random_batches)
    assert padded(batches) < 1.1 * sum(lengths)
    firsts = [max(lengths[i] for i in b) for b in batches[:10]]
    assert firsts != sorted(firsts, reverse=True)  # batches are not served longest-first
    sampler.set_epoch(1)
    assert list(sampler) != order
    sampler.set_epoch(0)
    assert list(sampler) == order == list(LengthGroupedSampler(lengths, batch_size=4, seed=7))


def test_batching_mode_defaults():
    assert JobSpec(dataset="d", per_device_train_batch_size=4, max_length=512).batching() == "padding_free"
    big = JobSpec(dataset="d", per_device_train_batch_size=32, max_length=1024)
    assert big.batching() == "grouped"  # a 32k-token packed row would cost more than it saves
    assert JobSpec(dataset="d", padding_free="off").batching() == "random"
    assert JobSpec(dataset="d", padding_free="on", per_device_train_batch_size=32, max_length=1024).batching() == "padding_free"


def test_padding_free_keeps_assistant_only_loss(tiny_model_dir, tmp_path):
    """In the worker's own trainer, a padding-free batch of chat rows trains on the assistant tokens alone
    (TRL turns assistant_masks into labels; the collator also honours the masks given directly)."""
    from workers.batching import PaddingFreeCollator

    rows = [{"input_ids": [5, 6, 7, 8, 9], "assistant_masks": [0, 0, 1, 1, 1]},
            {"input_ids": [11, 12, 13], "assistant_masks": [0, 1, 1]}]
    assert PaddingFreeCollator()(rows)["labels"][0].tolist() == [-100, -100, 7, 8, 9, -100, 12, 13]

    chats = [{"messages": [{"role": "user", "content": f"question {i}?"},
                           {"role": "assistant", "content": f"answer number {i}."}]} for i in range(2)]
    spec, _, tok, trainer, batch = _tiny_trainer(tiny_model_dir, tmp_path, chats)
    assert spec.assistant_only_loss and spec.batching() == "padding_free"
    assert isinstance(trainer.data_collator, PaddingFreeCollator)
    examples = [trainer.train_dataset[i] for i in range(2)]
    expected = sum(sum(1 for t in e["labels"][1:] if t != -100) for e in examples)
    assert 0 < expected < sum(len(e["input_ids"]) for e in examples) // 2  # prompts and template are masked
    assert int((batch["labels"] != -100).sum()) == expected
    text = tok.decode([t for t in batch["labels"][0].tolist() if t != -100])
    assert "answer number 0" in text and "answer number 1" in text and "question" not in text


def test_dequant_cache_auto_only_where_bitsandbytes_is_slow(monkeypatch):
    """auto caches on a CPU without AVX-512 (bitsandbytes' slow path there), never on one with it, never
    on a GPU (unmeasured there); on and off are obeyed on every device."""
    model = torch.nn.Linear(4, 4)
    monkeypatch.setattr(speed, "cpu_has_fast_4bit", lambda: False)
    assert speed.should_cache_dequantized(model, "cpu", "auto")
    assert not speed.should_cache_dequantized(model, "cuda", "auto")
    monkeypatch.setattr(speed, "cpu_has_fast_4bit", lambda: True)
    assert not speed.should_cache_dequantized(model, "cpu", "auto")
    assert speed.should_cache_dequantized(model, "cpu", "on")
    assert not speed.should_cache_dequantized(model, "cpu", "off")
    assert speed.should_cache_dequantized(model, "cuda", "on")  # a GPU with memory to spare: the user's call
    assert not speed.should_cache_dequantized(model, "cuda", "off")


def _packed_vs_alone(model, batch, seqs, **forward):
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}, **forward).logits[0]
        start, worst = 0, 0.0
        for s in seqs:
            alone = model(input_ids=torch.tensor([s]), use_cache=False).logits[0]
            worst = max(worst, (packed[start:start + len(s)] - alone).abs().max().item())
            start += len(s)
    return worst


def test_packed_rows_without_a_mask_need_use_cache_off(tiny_model_dir):
    """With flex attention the collator sends position ids only and transformers builds the document
    mask; it does so only when no cache is in play (TRL's training forward passes use_cache=False). With
    the model's default cache the packed rows silently attend to each other: the reason sdpa/eager runs
    keep the explicit block mask."""
    from transformers import AutoModelForCausalLM

    from workers.batching import PaddingFreeCollator

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                 attn_implementation="flex_attention").eval()
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, 300, (8,), generator=g).tolist() for _ in range(3)]  # one length: one compiled shape alone
    batch = PaddingFreeCollator(block_mask=False)([{"input_ids": s} for s in seqs])
    assert "attention_mask" not in batch
    assert _packed_vs_alone(model, batch, seqs, use_cache=False) < 1e-4
    assert _packed_vs_alone(model, batch, seqs) > 1e-2  # the trap, if transformers ever changes this: revisit


def test_flex_attention_spec_trains_padding_free_without_a_mask(tiny_model_dir, tmp_path):
    """attn_implementation=flex_attention reaches the model, and the worker's padding-free batches then
    carry no dense mask; the loss equals the same rows' loss under sdpa with the block mask."""
    losses = {}
    for impl in ("sdpa", "flex_attention"):
        _, model, _, _, batch = _tiny_trainer(tiny_model_dir, tmp_path / impl, _chat_rows(), precision="fp32",
                                              attn_implementation=impl)
        assert model.config._attn_implementation == impl
        assert ("attention_mask" in batch) == (impl == "sdpa")
        model.eval()
        with torch.no_grad():
            losses[impl] = model(**batch, use_cache=False).loss.item()
    assert abs(losses["sdpa"] - losses["flex_attention"]) < 1e-4, losses


def test_logits_loss_equals_trls_chunked_loss(tiny_model_dir, tmp_path):
    """On CPU the worker takes the loss from the full fp32 logits (1.4x faster there than TRL's fused,
    chunked lm_head, bench figures in docs/speed.md): same loss, same gradients, and the token count and
    accuracy TRL logs."""
    results = {}
    for chunked in ("on", "off"):
        _, model, _, trainer, batch = _tiny_trainer(tiny_model_dir, tmp_path / chunked, _chat_rows(2), seed=0,
                                                    precision="fp32", lora_dropout=0.0, chunked_loss=chunked)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05)  # non-zero adapters: gradients reach A too
        model.train()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        trainer.log({})  # what the step logs: TRL's metrics and the worker's own
        results[chunked] = (loss.item(), grads, trainer.state.log_history[-1])
    (l_on, g_on, m_on), (l_off, g_off, m_off) = results["on"], results["off"]
    assert abs(l_on - l_off) < 1e-5, (l_on, l_off)
    for n in g_on:
        assert torch.allclose(g_on[n], g_off[n], atol=1e-6, rtol=1e-4), n
    assert m_on["num_tokens"] == m_off["num_tokens"] == int(batch["input_ids"].numel())
    assert abs(m_on["mean_token_accuracy"] - m_off["mean_token_accuracy"]) < 1e-6


def test_torch_compile_trains_the_same_adapter_and_saves_loadable_checkpoints(tiny_model_dir, tmp_path):
    """torch_compile changes speed only: the same losses as eager (fp32), and checkpoints whose adapter keys
    are the eager ones (no compile wrapper prefix), so resume, chat and export read them."""
    from safetensors import safe_open

    rows = _chat_rows(3)
    runs = {}
    for compiled in (False, True):
        _, _, _, trainer, _ = _tiny_trainer(tiny_model_dir, tmp_path / str(compiled), rows, seed=0, precision="fp32",
                                            torch_compile=compiled, max_steps=4, save_steps=2)
        trainer.train()
        assert isinstance(trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule) == compiled
        with safe_open(str(tmp_path / str(compiled) / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors"),
                       "pt") as f:
            keys = sorted(f.keys())
        runs[compiled] = ([h["loss"] for h in trainer.state.log_history if "loss" in h], keys)
    (eager_loss, eager_keys), (compiled_loss, compiled_keys) = runs[False], runs[True]
    assert len(compiled_loss) == 4 and compiled_loss[-1] < compiled_loss[0]  # it trained
    assert compiled_loss == __import__("pytest").approx(eager_loss, rel=1e-3)
    assert compiled_keys == eager_keys and all("_orig_mod" not in k for k in compiled_keys)
