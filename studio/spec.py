"""JobSpec: every training choice, its default, help text and validation.

The Train form, the YAML file, the CLI and the worker all read this one definition.
Field names follow transformers / peft / TRL so a practitioner recognises them.
Pure Python: no torch, no transformers.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

BUNDLED_MODEL = "SmolLM2-135M-Instruct"

TARGET_PRESETS = ("all-linear", "attention", "mlp")
ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "query_key_value", "c_attn", "Wqkv", "out_proj")
MLP_NAMES = ("gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2", "c_fc", "c_proj", "w1", "w2", "w3")


def _f(default, help: str, choices: tuple | None = None, label: str | None = None, advanced: bool = False):
    meta = {"help": help, "choices": choices, "label": label, "advanced": advanced}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


PACKED_ROW_LIMIT = 8192  # padding-free rows longer than this cost more in the L x L mask than padding saves


@dataclass
class JobSpec:
    # what to train
    base_model: str = _f(BUNDLED_MODEL, "Base model: the bundled SmolLM2-135M-Instruct, a local Hugging Face model folder, or a hub id.", label="Base model")
    dataset: str = _f("", "Name of an uploaded dataset (Datasets tab or `studio dataset add`).", label="Dataset")
    eval_dataset: str = _f("", "Optional separate evaluation dataset; when empty, eval_split of the training data is held out.", label="Eval dataset", advanced=True)
    method: str = _f("sft", "sft: supervised fine-tuning on conversations or text. dpo: preference optimisation on chosen/rejected pairs.", ("sft", "dpo"), label="Method")
    name: str = _f("", "Optional run name (letters, digits, '.', '_', '-'). Generated when empty.", label="Run name")

    # quantisation
    load_in_4bit: bool = _f(True, "QLoRA: load the frozen base weights in 4-bit (bitsandbytes) and train LoRA adapters on top.", label="4-bit (QLoRA)")
    load_in_8bit: bool = _f(False, "Load the frozen base weights in 8-bit (bitsandbytes LLM.int8). Exclusive with 4-bit.", label="8-bit", advanced=True)
    bnb_4bit_quant_type: str = _f("nf4", "4-bit data type: nf4 (QLoRA paper, better for normally distributed weights) or fp4.", ("nf4", "fp4"), label="4-bit type", advanced=True)
    bnb_4bit_use_double_quant: bool = _f(True, "Quantise the quantisation constants too (saves about 0.4 bit per parameter).", label="Double quantisation", advanced=True)
    bnb_4bit_compute_dtype: str = _f("auto", "dtype of the matmuls behind 4-bit weights; auto picks bfloat16 where the device supports it.", ("auto", "bfloat16", "float16", "float32"), label="Compute dtype", advanced=True)

    # adapter
    r: int = _f(16, "LoRA rank: size of the low-rank update. 8-64 covers most tasks.", label="LoRA rank (r)")
    lora_alpha: int = _f(32, "LoRA scaling numerator (update is scaled by alpha/r, or alpha/sqrt(r) with rsLoRA). Usually 2 x r.", label="LoRA alpha")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA input, 0-0.5.", label="LoRA dropout")
    target_modules: list = _f(["all-linear"], "Linear layers that get adapters: names from the model, or a preset (all-linear, attention, mlp).", label="Target modules")
    lora_bias: str = _f("none", "Train biases too: none, all, or lora_only.", ("none", "all", "lora_only"), label="Bias", advanced=True)
    use_dora: bool = _f(False, "DoRA: weight-decomposed LoRA (slower, sometimes better at low rank).", label="DoRA", advanced=True)
    use_rslora: bool = _f(False, "rsLoRA: scale by alpha/sqrt(r), which keeps high ranks stable.", label="rsLoRA", advanced=True)

    # optimisation
    learning_rate: float = _f(5e-4, "Peak learning rate of the adapter weights.", label="Learning rate")
    lr_scheduler_type: str = _f("cosine", "Learning-rate schedule after warm-up.", ("linear", "cosine", "constant", "constant_with_warmup"), label="Scheduler", advanced=True)
    warmup_ratio: float = _f(0.05, "Fraction of steps spent warming the learning rate up, 0-0.5.", label="Warm-up ratio", advanced=True)
    num_train_epochs: float = _f(4.0, "Passes over the training data (ignored when max_steps > 0).", label="Epochs")
    max_steps: int = _f(0, "Stop after this many optimizer steps; 0 = use epochs.", label="Max steps", advanced=True)
    per_device_train_batch_size: int = _f(4, "Sequences per step on each device.", label="Batch size")
    gradient_accumulation_steps: int = _f(1, "Steps whose gradients are summed before each update (effective batch = batch size x this).", label="Gradient accumulation", advanced=True)
    max_length: int = _f(512, "Longest sequence in tokens; longer rows are truncated.", label="Max sequence length")
    assistant_only_loss: bool = _f(True, "Train only on assistant replies (prompts and system text are masked). Ignored for plain text.", label="Assistant-only loss", advanced=True)
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass: less memory, about 30% slower.", label="Gradient checkpointing", advanced=True)
    precision: str = _f("auto", "Training precision of the trainable path: auto (bf16 where supported), bf16, fp16, fp32.", ("auto", "bf16", "fp16", "fp32"), label="Precision", advanced=True)
    padding_free: str = _f("auto", "Batch sequences without padding (per-sequence attention, no cross-contamination): auto (on unless batch x max length is over 8192 tokens, then length-grouped batches), on, off (padded random batches).", ("auto", "on", "off"), label="Padding-free batching", advanced=True)
    dequant_cache: str = _f("auto", "Speed lever for 4-bit: dequantise each frozen weight once instead of every step (same numbers, but the frozen weights then also take their 16/32-bit memory). auto = on a CPU without AVX-512 (where bitsandbytes has no fast 4-bit kernels) when it fits easily; on = on any device, a GPU with memory to spare included.", ("auto", "on", "off"), label="Dequantised-weight cache", advanced=True)
    chunked_loss: str = _f("auto", "TRL's fused, chunked lm_head + log-softmax: the full logits never exist, which saves memory on large vocabularies. auto = on a GPU; off on CPU, where the plain fp32 cross-entropy over the logits is faster.", ("auto", "on", "off"), label="Chunked loss", advanced=True)
    attn_implementation: str = _f("auto", "Attention kernel (transformers' attn_implementation): auto (sdpa), sdpa, eager, flex_attention, or flash_attention_2 (needs the flash-attn package). With padding-free batches, flex and flash attention find the packed rows from their position ids instead of a dense block mask.", ("auto", "sdpa", "eager", "flex_attention", "flash_attention_2"), label="Attention kernel", advanced=True)
    torch_compile: bool = _f(False, "Compile the model with torch.compile (transformers' torch_compile): faster steps once compiled (on a 2-core CPU x1.2 in bf16, x1.4 in fp32), but the first two steps compile for about 5 minutes there, so it pays off only on runs of several hundred steps.", label="torch.compile", advanced=True)
    weight_decay: float = _f(0.0, "AdamW weight decay on the adapter weights.", label="Weight decay", advanced=True)
    max_grad_norm: float = _f(1.0, "Gradient clipping norm; 0 disables clipping.", label="Max grad norm", advanced=True)

    # evaluation, checkpoints, reproducibility
    eval_split: float = _f(0.1, "Fraction of the training rows held out for evaluation (0 = none), seeded.", label="Eval split")
    eval_steps: int = _f(0, "Evaluate every N steps; 0 = about 5 times per run.", label="Eval every", advanced=True)
    save_steps: int = _f(0, "Write a resumable checkpoint every N steps; 0 = about 5 per run.", label="Checkpoint every", advanced=True)
    early_stopping_patience: int = _f(0, "Stop when eval loss has not improved for this many evaluations; 0 = off.", label="Early-stopping patience", advanced=True)
    seed: int = _f(42, "Random seed for the split, shuffling and adapter initialisation.", label="Seed", advanced=True)
    logging_steps: int = _f(1, "Record a metric point every N steps.", label="Log every", advanced=True)

    # DPO
    beta: float = _f(0.1, "DPO temperature: how far the policy may move from the reference (adapter disabled).", label="DPO beta", advanced=True)

    # behaviour checks and resources
    golden_prompts: list = _f([], "Prompts answered by the adapter at each checkpoint and at the end, to watch behaviour change.", label="Golden prompts", advanced=True)
    num_gpus: int = _f(1, "GPUs for this job; more than one runs it with accelerate launch (DDP).", label="GPUs", advanced=True)

    # ---- conversion -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobSpec":
        """Build a spec from a flat mapping; unknown keys raise SpecError naming the closest known key."""
        if not isinstance(data, dict):
            raise SpecError({"config": "the configuration must be a mapping of field names to values"})
        known = {f.name: f for f in fields(cls)}
        errors: dict[str, str] = {}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                close = difflib.get_close_matches(str(key), list(known), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                errors[str(key)] = f"unknown key '{key}'{hint}"
                continue
            try:
                values[key] = _coerce(known[key], value)
            except (TypeError, ValueError):
                errors[key] = f"{key} must be {_type_word(known[key])}, got {value!r}"
        if errors:
            raise SpecError(errors)
        return cls(**values)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "JobSpec":
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError({"config": f"the file is not valid YAML: {str(exc).splitlines()[0]}"}) from None
        return cls.from_dict(data or {})

    # ---- derived ----------------------------------------------------------------------------

    def batching(self) -> str:
        """How SFT batches are formed: "padding_free", "grouped" (similar lengths, random order) or "random".

        auto: padding-free while a packed row (batch x max length) stays within PACKED_ROW_LIMIT tokens,
        else length-grouped batches. Padding-free keeps the plain script's batch composition (the same eval
        loss to 4 digits in bench/train_speed.py) without computing a pad token: 2.0-2.3x the plain TRL
        script's real tokens/s on CPU, 1.75x (SmolLM2 shape) and 1.22x (1B, NF4) on an H100. Length-grouped
        batches were faster on the H100 (2.08x, 1.47x), but their uniform-length steps weight short examples
        more under Adam (+3.0% eval loss on the 1B run), so they are only the fallback for long packed rows.
        """
        if self.padding_free == "on":
            return "padding_free"
        if self.padding_free == "off":
            return "random"
        return "padding_free" if self.per_device_train_batch_size * self.max_length <= PACKED_ROW_LIMIT else "grouped"

    def resolved_precision(self, native_bf16: bool) -> str:
        """What precision "auto" becomes on a device (bf16 only where it is computed natively)."""
        if self.precision != "auto":
            return self.precision
        return "bf16" if native_bf16 else "fp32"

    def resolved_target_modules(self, linear_names: list[str]) -> list[str]:
        """Expand presets against the model's linear layer names (lm_head excluded)."""
        names = [n for n in linear_names if n != "lm_head"]
        out: list[str] = []
        for t in self.target_modules:
            if t == "all-linear":
                out += names
            elif t == "attention":
                out += [n for n in names if n in ATTENTION_NAMES]
            elif t == "mlp":
                out += [n for n in names if n in MLP_NAMES]
            else:
                out.append(t)
        return sorted(dict.fromkeys(out))

    # ---- validation -------------------------------------------------------------------------

    def validate(self, linear_names: list[str] | None = None, dataset_kind: str | None = None,
                 quantization_available: bool | None = None) -> dict[str, str]:
        """Field -> one human sentence. Empty when the spec can be queued.

        ``linear_names``: the chosen model's linear layer names (target modules are checked against them).
        ``dataset_kind``: "preference", "chat", "text", ... of the chosen dataset.
        ``quantization_available``: whether bitsandbytes can run on the worker's device.
        """
        e: dict[str, str] = {}
        if not self.base_model.strip():
            e["base_model"] = "choose a base model"
        if not self.dataset.strip():
            e["dataset"] = "choose a dataset to train on"
        if self.name:
            from .settings import SAFE_NAME

            if not SAFE_NAME.match(self.name) or ".." in self.name:
                e["name"] = "run names may use 1-64 letters, digits, '.', '_' and '-'"
        for key in ("method", "bnb_4bit_quant_type", "bnb_4bit_compute_dtype", "lora_bias", "lr_scheduler_type",
                    "precision", "padding_free", "dequant_cache", "attn_implementation", "chunked_loss"):
            choices = _meta(key)["choices"]
            if getattr(self, key) not in choices:
                e[key] = f"{key} must be one of {', '.join(choices)}"
        if self.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            e["attn_implementation"] = ("flash_attention_2 needs the flash-attn package, which is not installed here; "
                                        "choose sdpa or flex_attention")
        if self.load_in_4bit and self.load_in_8bit:
            e["load_in_8bit"] = "choose 4-bit or 8-bit, not both"
        if (self.load_in_4bit or self.load_in_8bit) and quantization_available is False:
            e["load_in_4bit" if self.load_in_4bit else "load_in_8bit"] = (
                "bitsandbytes cannot run on the worker's device; turn quantisation off")
        if not 1 <= self.r <= 1024:
            e["r"] = f"LoRA rank must be between 1 and 1024, got {self.r}"
        if self.lora_alpha <= 0:
            e["lora_alpha"] = f"LoRA alpha must be greater than 0, got {self.lora_alpha}"
        if not 0 <= self.lora_dropout <= 0.5:
            e["lora_dropout"] = f"LoRA dropout must be between 0 and 0.5, got {self.lora_dropout}"
        if not self.target_modules:
            e["target_modules"] = "choose at least one target module"
        elif linear_names is not None:
            names = set(linear_names)
            unknown = [t for t in self.target_modules if t not in TARGET_PRESETS and t not in names]
            if unknown:
                e["target_modules"] = (f"the model has no linear layer named {', '.join(map(repr, unknown))}; "
                                       f"it has {', '.join(sorted(n for n in names if n != 'lm_head'))}")
            elif not self.resolved_target_modules(linear_names):
                e["target_modules"] = "the chosen preset matches no linear layer of this model"
        if not 0 < self.learning_rate < 1:
            e["learning_rate"] = f"learning rate must be between 0 and 1 (exclusive), got {self.learning_rate}"
        if not 0 <= self.warmup_ratio <= 0.5:
            e["warmup_ratio"] = "warm-up ratio must be between 0 and 0.5"
        if self.max_steps < 0:
            e["max_steps"] = "max steps must be 0 (use epochs) or a positive number"
        if self.max_steps == 0 and not 0 < self.num_train_epochs <= 1000:
            e["num_train_epochs"] = f"epochs must be greater than 0 and at most 1000, got {self.num_train_epochs}"
        if not 1 <= self.per_device_train_batch_size <= 4096:
            e["per_device_train_batch_size"] = f"batch size must be at least 1, got {self.per_device_train_batch_size}"
        if not 1 <= self.gradient_accumulation_steps <= 4096:
            e["gradient_accumulation_steps"] = "gradient accumulation must be at least 1"
        if not 32 <= self.max_length <= 131072:
            e["max_length"] = (f"max sequence length must be between 32 and 131072 tokens, got {self.max_length}; "
                               "shorter leaves no room for the chat template")
        if not 0 <= self.eval_split < 0.9:
            e["eval_split"] = "eval split must be between 0 and 0.9"
        for key in ("eval_steps", "save_steps", "early_stopping_patience"):
            if getattr(self, key) < 0:
                e[key] = f"{key} must be 0 or positive"
        if self.logging_steps < 1:
            e["logging_steps"] = "log every must be at least 1 step"
        if self.weight_decay < 0:
            e["weight_decay"] = "weight decay must be 0 or positive"
        if self.max_grad_norm < 0:
            e["max_grad_norm"] = "max grad norm must be 0 or positive"
        if self.beta <= 0:
            e["beta"] = "DPO beta must be greater than 0"
        if self.num_gpus < 1:
            e["num_gpus"] = "a job needs at least one device"
        if self.early_stopping_patience and self.eval_split == 0 and not self.eval_dataset:
            e["early_stopping_patience"] = "early stopping needs evaluation: set an eval split or an eval dataset"
        if dataset_kind is not None:
            if self.method == "dpo" and dataset_kind != "preference":
                e["method"] = "DPO needs a preference dataset (prompt / chosen / rejected)"
            if self.method == "sft" and dataset_kind == "preference":
                e["method"] = "this is a preference dataset: choose DPO, or upload conversations for SFT"
        return e

    def check(self, **kwargs) -> None:
        errors = self.validate(**kwargs)
        if errors:
            raise SpecError(errors)


class SpecError(ValueError):
    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" if not v.startswith(k) else v for k, v in errors.items()))


def _meta(name: str) -> dict:
    return next(f.metadata for f in fields(JobSpec) if f.name == name)


def field_help() -> dict[str, dict]:
    """name -> {help, label, choices, advanced, default}: what the form renders."""
    out = {}
    for f in fields(JobSpec):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = {**f.metadata, "default": default}
    return out


def _type_word(f) -> str:
    t = f.type if isinstance(f.type, str) else f.type.__name__
    return {"int": "a whole number", "float": "a number", "bool": "true or false", "list": "a list",
            "str": "text"}.get(t, t)


def _coerce(f, value):
    t = f.type if isinstance(f.type, str) else f.type.__name__
    if t == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ValueError
    if t == "int":
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    if t == "float":
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    if t == "list":
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError
        return list(value)
    if t == "str":
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)):
            raise ValueError
        return str(value)
    return value
