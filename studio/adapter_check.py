"""Whether an adapter fits a base model, read without torch: adapter_config.json's fields and the shapes in
the safetensors headers against the base's linear layers.

    read_adapter_config(path)              adapter_config.json, its fields the types peft gives them
    base_weight_shapes(base_model)         the base's 2-D weights: module -> (out_features, in_features)
    check_against_base(folder, base)       the adapter's weights against the base's layers (AdapterError if not)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .adapter_library import AdapterError
from .safetensors_header import SafetensorsError, is_int, parse_json, read_folder, read_header

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.[^.]+)?\.weight$")
_IA3_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.ia3_l(?:\.[^.]+)?(?:\.weight)?$")
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def _string_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# what each adapter_config.json field the studio reads may hold (None is allowed where peft allows it)
CONFIG_FIELDS = {
    "peft_type": (lambda v: isinstance(v, str), "a string"),
    "r": (lambda v: is_int(v) and v > 0, "a whole number above 0"),
    "lora_alpha": (_number, "a number"),
    "lora_dropout": (lambda v: _number(v) and 0 <= v <= 1, "a number between 0 and 1"),
    "target_modules": (lambda v: v is None or isinstance(v, str) or _string_list(v), "a string or a list of strings"),
    "modules_to_save": (lambda v: v is None or _string_list(v), "a list of strings"),
    "rank_pattern": (lambda v: isinstance(v, dict) and all(is_int(r) and r > 0 for r in v.values()),
                     "an object of whole numbers above 0"),
    "alpha_pattern": (lambda v: isinstance(v, dict) and all(_number(a) for a in v.values()), "an object of numbers"),
    "use_dora": (lambda v: isinstance(v, bool), "true or false"),
    "use_rslora": (lambda v: isinstance(v, bool), "true or false"),
    "bias": (lambda v: isinstance(v, str), "a string"),
    "feedforward_modules": (lambda v: v is None or isinstance(v, str) or _string_list(v),
                            "a string or a list of strings"),
    "num_virtual_tokens": (lambda v: is_int(v) and v > 0, "a whole number above 0"),
    "num_transformer_submodules": (lambda v: v is None or (is_int(v) and v > 0), "a whole number above 0"),
}


def read_adapter_config(path: Path) -> dict:
    """adapter_config.json as a dict whose fields the studio reads have the types peft gives them."""
    try:
        config = parse_json(path.read_bytes())
    except (OSError, ValueError):
        raise AdapterError("adapter_config.json is missing or not valid JSON") from None
    if not isinstance(config, dict):
        raise AdapterError("adapter_config.json must hold a JSON object")
    for field, (valid, kind) in CONFIG_FIELDS.items():
        if field in config and not valid(config[field]):
            raise AdapterError(f"adapter_config.json has '{field}': {json.dumps(config[field])[:40]}, "
                               f"but it must be {kind}")
    return config


_DECODER_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.\d+\.")  # a module inside a numbered decoder layer


def base_weight_shapes(base_model: str) -> dict[str, tuple]:
    """The base model's 2-D weights, module name -> (out_features, in_features), read without torch: the
    safetensors headers of its folder, or, for the bundled model before a worker has converted it, its GGUF's
    tensor table. Raises ModelError."""
    from .models import bundled_weight_shapes, cached_dir, is_bundled, resolve_model

    if is_bundled(base_model) and cached_dir(base_model) is None:
        return bundled_weight_shapes()
    return {k[: -len(".weight")]: tuple(v["shape"]) for k, v in read_folder(resolve_model(base_model)).items()
            if k.endswith(".weight") and len(v["shape"]) == 2}


def check_against_base(folder: str | Path, base_model: str) -> dict:
    """Check an adapter of any type the studio knows (studio.adapter_types.ADAPTER_TYPES, read from
    adapter_config.json's ``peft_type``) against a base model by shapes alone (safetensors headers, no torch).

    LoRA: every lora_A must be (r, in_features) and every lora_B (out_features, r) of a linear layer the base
    really has. IA3: every ia3_l vector (out_features, 1), or (1, in_features) for a feed-forward module. Both:
    the config's target modules must be layers of the base. Prompt and prefix tuning: the virtual-token
    embeddings must be as wide as the base's embeddings (prefix: its key/value width in every layer). Returns
    what was found, with the type's name under ``type``.
    """
    from .adapter_types import ADAPTER_TYPES, IA3, LORA, PREFIX_TUNING, of_config
    from .models import ModelError

    folder = Path(folder)
    config = read_adapter_config(folder / "adapter_config.json")
    kind = of_config(config)
    if kind is None:
        known = ", ".join(t.label for t in ADAPTER_TYPES.values())
        raise AdapterError(f"this adapter is of type {str(config.get('peft_type'))[:40]}, which the studio cannot "
                           f"load; it takes {known} adapters")
    try:
        tensors = read_header(folder / "adapter_model.safetensors")
    except SafetensorsError as exc:
        raise AdapterError(str(exc)) from None
    try:
        base_shapes = base_weight_shapes(base_model)
    except SafetensorsError as exc:
        raise AdapterError(str(exc)) from None
    except ModelError as exc:
        raise AdapterError(f"cannot read the base model: {exc}") from None
    leaves = {m.rsplit(".", 1)[-1] for m in base_shapes if _DECODER_LAYER.search(m)}
    if not leaves:
        raise AdapterError(f"cannot read the linear layers of {base_model} (no safetensors weights)")
    if kind is LORA:
        report = _check_lora(config, tensors, base_shapes, leaves, base_model)
    elif kind is IA3:
        report = _check_ia3(config, tensors, base_shapes, leaves, base_model)
    else:
        report = _check_virtual_tokens(config, tensors, base_shapes, base_model, prefix=kind is PREFIX_TUNING)
    return {"type": kind.name, **report}


def _layer_of(module: str, leaves: set[str], base_shapes: dict, base_model: str) -> tuple[int, int]:
    """(out_features, in_features) of the base's layer ``module``, or AdapterError saying it has none."""
    leaf = module.rsplit(".", 1)[-1]
    if leaf not in leaves:
        raise AdapterError(f"the adapter changes '{leaf}' layers, which {base_model} does not have "
                           f"(its linear layers are {', '.join(sorted(leaves))}); was it trained on another model?")
    if module not in base_shapes:
        raise AdapterError(f"the adapter has weights for '{module}', which {base_model} does not have "
                           "(a model with more layers?); was it trained on another model?")
    return base_shapes[module]


def _check_targets(config: dict, leaves: set[str], base_shapes: dict, base_model: str) -> None:
    targets = config.get("target_modules")
    if isinstance(targets, list):
        unknown = [t for t in targets
                   if t not in leaves and not any(m == t or m.endswith("." + t) for m in base_shapes)]
        if unknown:
            raise AdapterError(f"adapter_config.json targets {', '.join(map(repr, unknown))}, which {base_model} "
                               f"does not have (its linear layers are {', '.join(sorted(leaves))})")


def _check_lora(config: dict, tensors: dict, base_shapes: dict, leaves: set[str], base_model: str) -> dict:
    ranks: dict[str, dict[str, tuple]] = {}
    for key, info in tensors.items():
        match = _LORA_KEY.match(key)
        if match:
            ranks.setdefault(match["module"], {})[match["part"]] = tuple(info["shape"])
    if not ranks:
        raise AdapterError("the adapter holds no LoRA weights (no lora_A / lora_B tensors)")
    found_r = set()
    for module, parts in sorted(ranks.items()):
        out_f, in_f = _layer_of(module, leaves, base_shapes, base_model)
        a, b = parts.get("lora_A"), parts.get("lora_B")
        if a is None or b is None:
            raise AdapterError(f"the adapter's '{module}' has only one of lora_A and lora_B")
        if len(a) != 2 or len(b) != 2 or a[1] != in_f or b[0] != out_f or a[0] != b[1]:
            raise AdapterError(f"the adapter's shapes for '{module}' (lora_A {list(a)}, lora_B {list(b)}) do not fit "
                               f"{base_model}, whose layer is {in_f} -> {out_f}; it was trained on another model")
        found_r.add(a[0])
    rank = config.get("r")
    if not config.get("rank_pattern") and rank is not None and found_r != {rank}:
        raise AdapterError(f"adapter_config.json says r={rank} but the weights have rank {sorted(found_r)}")
    _check_targets(config, leaves, base_shapes, base_model)
    return {"r": sorted(found_r), "modules": sorted({m.rsplit('.', 1)[-1] for m in ranks}), "lora_layers": len(ranks)}


def _check_ia3(config: dict, tensors: dict, base_shapes: dict, leaves: set[str], base_model: str) -> dict:
    vectors = {m["module"]: tuple(info["shape"]) for key, info in tensors.items() if (m := _IA3_KEY.match(key))}
    if not vectors:
        raise AdapterError("the adapter holds no IA3 weights (no ia3_l tensors)")
    feedforward = config.get("feedforward_modules") or []
    feedforward = [feedforward] if isinstance(feedforward, str) else feedforward
    for module, shape in sorted(vectors.items()):
        out_f, in_f = _layer_of(module, leaves, base_shapes, base_model)
        leaf = module.rsplit(".", 1)[-1]
        ff = leaf in feedforward or any(module.endswith("." + f) for f in feedforward)
        want = (1, in_f) if ff else (out_f, 1)
        if shape != want:
            raise AdapterError(f"the adapter's ia3_l for '{module}' is {list(shape)}, which does not fit {base_model}, "
                               f"whose layer is {in_f} -> {out_f} (it needs {list(want)}); "
                               "it was trained on another model")
    _check_targets(config, leaves, base_shapes, base_model)
    return {"modules": sorted({m.rsplit('.', 1)[-1] for m in vectors}), "ia3_layers": len(vectors)}


def _check_virtual_tokens(config: dict, tensors: dict, base_shapes: dict, base_model: str, prefix: bool) -> dict:
    shape = tuple((tensors.get("prompt_embeddings") or {}).get("shape") or ())
    if len(shape) != 2:
        raise AdapterError("the adapter holds no virtual-token embeddings (no 2-D prompt_embeddings tensor)")
    tokens = config.get("num_virtual_tokens")
    if tokens is not None and shape[0] != tokens * (config.get("num_transformer_submodules") or 1):
        raise AdapterError(f"adapter_config.json says {tokens} virtual tokens but the embeddings hold {shape[0]}")
    if prefix:
        layers = len({m[1] for k in base_shapes if (m := _LAYER_INDEX.search(k))})
        kv_widths = {out_f for k, (out_f, _) in base_shapes.items() if k.endswith(("k_proj", "v_proj"))}
        if layers and kv_widths and not any(shape[1] == 2 * layers * w for w in kv_widths):
            raise AdapterError(f"the adapter's prefix embeddings are {shape[1]} wide, which does not fit the keys "
                               f"and values of {base_model}'s {layers} layers; it was trained on another model")
    else:
        widths = {s[1] for k, s in base_shapes.items() if k.endswith(("embed_tokens", "wte", "word_embeddings"))}
        if widths and shape[1] not in widths:
            raise AdapterError(f"the adapter's virtual tokens are {shape[1]} wide but {base_model}'s embeddings are "
                               f"{sorted(widths)[0]}; it was trained on another model")
    return {"virtual_tokens": shape[0], "width": shape[1]}
