"""Speed levers change speed only: the dequantised-weight cache gives the same logits and gradients
as bitsandbytes' own 4-bit path."""
import torch

from studio.spec import JobSpec
from workers import speed, train


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
