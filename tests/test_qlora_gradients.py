"""The CPU repack trap: after an evaluation pass (no-grad forward in eval mode) on a 4-bit model, the
LoRA weights of the FIRST decoder layer must still receive gradients."""
import torch

from studio.spec import JobSpec
from workers import train


def _first_layer_lora_grads(model):
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad and ".layers.0." in n and "lora_" in n}


def test_first_layer_still_learns_after_an_eval_pass(tiny_model_dir, monkeypatch):
    # Behave as on an AVX512-BF16 CPU even where this one lacks it, so the guard is what is tested.
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    spec = JobSpec(dataset="d", load_in_4bit=True, r=4, lora_alpha=8, target_modules=["all-linear"],
                   bnb_4bit_compute_dtype="bfloat16", dequant_cache="off")  # bitsandbytes own 4-bit path
    model, tok = train.load_model_for_training(spec, tiny_model_dir, "cpu")
    import bitsandbytes as bnb

    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4, "the model is not 4-bit"
    assert all(m.support_avx512bf16_for_cpu is False for m in linear4)
    # make lora_B non-zero so gradients reach lora_A as well
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    x = torch.randint(0, len(tok), (2, 24))
    model.eval()
    with torch.no_grad():  # what Trainer.evaluate() and chat generate() do
        model(input_ids=x)
    model.train()
    model(input_ids=x, labels=x).loss.backward()
    grads = _first_layer_lora_grads(model)
    assert grads, "no LoRA parameters found in the first layer"
    for name, g in grads.items():
        assert g is not None and g.abs().sum() > 0, f"{name} received no gradient after evaluation"
