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
