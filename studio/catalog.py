"""Base models we know and their linear layers: plain tables and small readers, no torch.

``ARCHITECTURES`` holds the shape-defining part of each model's published ``config.json`` so the memory
estimate works for hub models that are not downloaded. For a local folder, ``config_for`` reads the folder's
own ``config.json`` first, and ``linear_layers_from_safetensors`` reads only the JSON headers of its
``*.safetensors`` files, so the Train form can offer the real target modules without importing torch.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import families
from .families import family_of
from .safetensors_header import SafetensorsError, read_header
from .spec import BUNDLED_MODEL

__all__ = ["BUNDLED_MODEL", "ARCHITECTURES", "LLAMA_LINEAR_NAMES", "linear_layer_names", "read_local_config",
           "config_for", "lookup", "linear_layers_from_safetensors"]

# the projection names of a Llama decoder layer (most families; studio.families says which)
LLAMA_LINEAR_NAMES = tuple(layer.name for layer in families.LLAMA_LAYERS)
_config = families.shape

# Values as published in each repository's config.json (head_dim = hidden_size / heads where the file omits it):
# these base checkpoints for the published memory figures (tests/test_memory.py, docs/memory.md), then every
# checkpoint of the family table (studio.families), which the Train tab lists.
ARCHITECTURES: dict[str, dict] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": _config("llama", 49152, 576, 1536, 30, 9, 3, True, 8192),
    "Qwen/Qwen2.5-0.5B": _config("qwen2", 151936, 896, 4864, 24, 14, 2, True, 32768),
    "Qwen/Qwen2.5-7B": _config("qwen2", 152064, 3584, 18944, 28, 28, 4, False, 131072),
    "meta-llama/Llama-2-7b-hf": _config("llama", 32000, 4096, 11008, 32, 32, 32, False, 4096),
    "meta-llama/Llama-2-13b-hf": _config("llama", 32000, 5120, 13824, 40, 40, 40, False, 4096),
    "mistralai/Mistral-7B-v0.1": _config("mistral", 32000, 4096, 14336, 32, 32, 8, False, 32768),
    "meta-llama/Meta-Llama-3-8B": _config("llama", 128256, 4096, 14336, 32, 32, 8, False, 8192),
    "meta-llama/Meta-Llama-3-70B": _config("llama", 128256, 8192, 28672, 80, 64, 8, False, 8192),
    # the LLaMA-1 checkpoints of the QLoRA paper (its "33B" is llama-30b); their config.json predates
    # num_key_value_heads, which transformers then takes to equal num_attention_heads
    "huggyllama/llama-30b": _config("llama", 32000, 6656, 17920, 60, 52, 52, False, 2048),
    "huggyllama/llama-65b": _config("llama", 32000, 8192, 22016, 80, 64, 64, False, 2048),
}
for _family, _model in families.published_models():
    ARCHITECTURES.setdefault(_model.hub_id, _model.config)
ARCHITECTURES[BUNDLED_MODEL] = ARCHITECTURES["HuggingFaceTB/SmolLM2-135M-Instruct"]


def linear_layer_names(config: dict) -> list[str]:
    """Names of the linear layers inside one decoder layer (what LoRA can target), lm_head excluded, as the
    model's family row gives them: fused ones included (Phi-3's qkv_proj and gate_up_proj).

    An empty list for an architecture the table does not know; ``linear_layers_from_safetensors`` reads its
    names from the weights instead.
    """
    family = family_of(config or {})
    return family.linear_names if family is not None else []


def read_local_config(path) -> dict | None:
    """The ``config.json`` of a local model folder (or the file itself); None when absent or unreadable.

    Multimodal configs that nest the language model under ``text_config`` are flattened to it.
    """
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        config = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    text = config.get("text_config")
    if "hidden_size" not in config and isinstance(text, dict):
        config = {**text, "model_type": text.get("model_type", config.get("model_type"))}
    return config


def lookup(base_model: str) -> dict | None:
    """Table entry for a hub id: exact (case-insensitive), else by the part after '/'."""
    if not base_model:
        return None
    want = base_model.strip().rstrip("/").lower()
    by_id = {k.lower(): v for k, v in ARCHITECTURES.items()}
    if want in by_id:
        return dict(by_id[want])
    tail = want.rsplit("/", 1)[-1]
    for key, value in ARCHITECTURES.items():
        if key.lower().rsplit("/", 1)[-1] == tail:
            return dict(value)
    return None


def config_for(base_model: str, local_dir: str | None = None) -> dict | None:
    """Model configuration: a local folder's config.json first (``local_dir``, or ``base_model`` when it is
    a folder), else the table; None when neither knows the model."""
    for candidate in (local_dir, base_model):
        if candidate and Path(candidate).is_dir():
            config = read_local_config(candidate)
            if config is not None:
                return config
    return lookup(base_model)


def linear_layers_from_safetensors(folder) -> dict[str, tuple]:
    """Distinct leaf names of the 2-D ``.weight`` tensors inside the decoder layers, with their shapes
    ``(out_features, in_features)``, e.g. ``{"q_proj": (576, 576), ...}``, in file order.

    Reads only the headers of ``*.safetensors`` in ``folder`` (sharded checkpoints too); no tensor data,
    no torch. Empty when the folder holds no safetensors files; unreadable files are skipped.
    """
    found: dict[str, tuple] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            header = read_header(path, validate=False)
        except SafetensorsError:
            continue
        for name, info in header.items():
            if name == "__metadata__" or not isinstance(info, dict) or not name.endswith(".weight"):
                continue
            shape = info.get("shape") or []
            parts = name.split(".")
            # "...layers.<i>.<block>.<leaf>.weight": inside a numbered decoder layer
            in_layer = any(p in ("layers", "h", "blocks", "layer") and i + 1 < len(parts) and parts[i + 1].isdigit()
                           for i, p in enumerate(parts))
            if len(shape) == 2 and in_layer and len(parts) >= 2:
                found.setdefault(parts[-2], tuple(int(n) for n in shape))
    return found
