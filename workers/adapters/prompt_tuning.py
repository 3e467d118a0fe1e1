"""Prompt tuning: trained virtual tokens put before every input, random or started from a text's embeddings."""
from __future__ import annotations

from pathlib import Path

from studio.spec import JobSpec

from .base import WorkerAdapter


def peft_config(spec: JobSpec, linear_names: list[str], model_dir: Path):
    from peft import PromptTuningConfig, PromptTuningInit

    if spec.prompt_tuning_init == "text":
        return PromptTuningConfig(num_virtual_tokens=spec.num_virtual_tokens, prompt_tuning_init=PromptTuningInit.TEXT,
                                  prompt_tuning_init_text=spec.prompt_tuning_init_text,
                                  tokenizer_name_or_path=str(model_dir), task_type="CAUSAL_LM")
    return PromptTuningConfig(num_virtual_tokens=spec.num_virtual_tokens, prompt_tuning_init=PromptTuningInit.RANDOM,
                              task_type="CAUSAL_LM")


ADAPTER = WorkerAdapter("prompt_tuning", peft_config)
