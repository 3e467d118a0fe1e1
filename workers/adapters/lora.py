"""LoRA (with DoRA, rsLoRA and peft's initialisations that leave the base weights as they are)."""
from __future__ import annotations

from pathlib import Path

from studio.spec import JobSpec

INIT = {"default": True, "gaussian": "gaussian", "orthogonal": "orthogonal"}


def peft_config(spec: JobSpec, linear_names: list[str], model_dir: Path | None = None):
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=spec.resolved_target_modules(linear_names),
        bias=spec.lora_bias,
        use_dora=spec.use_dora,
        use_rslora=spec.use_rslora,
        init_lora_weights=INIT[spec.init_lora_weights],
        task_type="CAUSAL_LM",
    )
