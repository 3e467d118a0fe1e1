"""Adapter types and optimizers: what each one is, what it supports and what it costs in memory. Pure Python,
no torch.

JobSpec.validate, the Train form, the memory estimate, the chat engine and the merge / GGUF export all read
these records; the worker half of each type (its peft config and how it is saved) is one module in
``workers/adapters/``. A new adapter type is one ``AdapterType`` here (registered in ``ADAPTER_TYPES``) and one
module there (registered in ``workers.adapters.ADAPTERS``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class AdapterMemory:
    """An adapter type's terms of the memory estimate (studio.memory.estimate). Every term is nothing by default;
    a type overrides the ones it adds. The arguments, all from studio.memory:

    ``shape``   the model (ModelShape: linears(), hidden, vocab, layers, kv_dim)
    ``a``       the adapter's settings (AdapterSettings: targets, feedforward (the targets that are MLP layers),
                r, use_dora, lora_dropout, num_virtual_tokens)
    ``w``       the widths in bytes (Widths: compute, adapter, lora (the dtype lora_A / lora_B run in), cast (the
                adapter casts its input to its own dtype), mask (one dropout mask element))
    ``kept``    the tensors a decoder layer already keeps for backward (KeptInputs): ``kept.claim(name)`` is True
                the first time the input of layer ``name`` is kept, so a shared input is counted once
    """

    def tensors(self, shape, a) -> list[int]:
        """Elements of each trainable tensor (peft's parameters, one entry per tensor)."""
        return []

    def autocast_elements(self, shape, a) -> tuple[int, int]:
        """(per decoder layer, at lm_head) elements of the adapter that autocast copies to the compute dtype."""
        return 0, 0

    def layer_bytes(self, shape, a, w, kept) -> float:
        """Bytes per token that the adapter keeps for backward in one decoder layer."""
        return 0.0

    def head_bytes(self, shape, a, w) -> float:
        """Bytes per token that the adapter keeps for backward at lm_head."""
        return 0.0

    def weight_copy_bytes(self, shape, a, w) -> float:
        """Bytes per decoder layer of frozen-weight copies (dequantised or cast) kept for backward."""
        return 0.0

    def virtual_tokens(self, a) -> int:
        """Tokens the adapter puts before every sequence, which run through every layer."""
        return 0

    def sequence_bytes(self, shape, a, w, trainable: int) -> float:
        """Bytes per sequence of the batch that the adapter keeps for backward beyond its layers' own."""
        return 0.0


def _layers(shape, a):
    """(name, fan_in, fan_out) of each targeted linear layer of a decoder layer (lm_head is not one)."""
    layer = shape.linears()
    return [(name, *layer[name]) for name in a.targets if name in layer]


def _per_tensor(shape, a, sizes: Callable) -> list[int]:
    """``sizes(name, fan_in, fan_out)`` for every targeted layer: once per decoder layer, once for lm_head."""
    layer = dict(shape.linears(), lm_head=(shape.hidden, shape.vocab))
    out: list[int] = []
    for name in a.targets:
        out += sizes(name, *layer[name]) * (1 if name == "lm_head" else shape.layers)
    return out


class LoraMemory(AdapterMemory):
    """lora_A (r x in) and lora_B (out x r) per targeted layer, with DoRA a magnitude (out)."""

    def tensors(self, shape, a):
        return _per_tensor(shape, a, lambda name, fan_in, fan_out: [a.r * fan_in, fan_out * a.r]
                           + [fan_out] * a.use_dora)

    def autocast_elements(self, shape, a):
        per_layer = sum(a.r * (fan_in + fan_out) + (fan_out if a.use_dora else 0)
                        for _, fan_in, fan_out in _layers(shape, a))
        head = a.r * (shape.hidden + shape.vocab) + (shape.vocab if a.use_dora else 0) if "lm_head" in a.targets else 0
        return per_layer, head

    def layer_bytes(self, shape, a, w, kept):
        """The input of lora_A (its own copy after dropout or a dtype cast, else the layer's input, shared by q/k/v
        and by gate/up), the dropout mask, lora_A's output (r); with DoRA the base and LoRA outputs."""
        total = 0.0
        for name, fan_in, fan_out in _layers(shape, a):
            if a.lora_dropout > 0 or w.cast:
                total += fan_in * (w.lora + (w.mask if a.lora_dropout > 0 else 0))
            elif kept.claim(name):
                total += fan_in * w.lora
            total += a.r * w.lora
            if a.use_dora:
                total += 2 * fan_out * w.compute
        return total

    def head_bytes(self, shape, a, w):
        return shape.hidden * w.compute * 2 + a.r * w.compute if "lm_head" in a.targets else 0.0

    def weight_copy_bytes(self, shape, a, w):
        """DoRA with dropout recomputes the base output from the dropped-out input with a dequantised / cast copy
        of the weight, one per targeted layer."""
        if not (a.use_dora and a.lora_dropout > 0):
            return 0.0
        return sum(fan_in * fan_out for _, fan_in, fan_out in _layers(shape, a)) * w.lora


class IA3Memory(AdapterMemory):
    """One vector per targeted layer: in for a feed-forward (MLP) layer, whose input it scales, else out."""

    def tensors(self, shape, a):
        return _per_tensor(shape, a, lambda name, fan_in, fan_out: [fan_in if name in a.feedforward else fan_out])

    def layer_bytes(self, shape, a, w, kept):
        """The output of a scaled layer; the input of a feed-forward layer (shared like lora_A's, or its own copy
        when cast to the adapter dtype)."""
        total = 0.0
        for name, fan_in, fan_out in _layers(shape, a):
            if name not in a.feedforward:
                total += fan_out * w.compute
            elif w.cast:
                total += fan_in * w.adapter
            elif kept.claim(name):
                total += fan_in * w.compute
        return total


class PromptTuningMemory(AdapterMemory):
    """One embedding of num_virtual_tokens x hidden; the virtual tokens run through every layer."""

    def tensors(self, shape, a):
        return [a.num_virtual_tokens * shape.hidden]

    def virtual_tokens(self, a):
        return a.num_virtual_tokens


class PrefixTuningMemory(AdapterMemory):
    """One embedding of num_virtual_tokens x (layers x 2 x KV width): a key and a value per layer, which SDPA keeps
    expanded to every sequence of the batch."""

    def tensors(self, shape, a):
        return [a.num_virtual_tokens * shape.layers * 2 * shape.kv_dim]

    def sequence_bytes(self, shape, a, w, trainable):
        return trainable * (w.adapter + w.compute)


def _lora_check(spec) -> dict[str, str]:
    problem = lora_init_problem(spec)
    return {"init_lora_weights": problem} if problem else {}


def _prompt_tuning_check(spec) -> dict[str, str]:
    if spec.prompt_tuning_init == "text" and not spec.prompt_tuning_init_text.strip():
        return {"prompt_tuning_init_text": "prompt initialisation from text needs the text: fill in the prompt "
                                           "init text"}
    return {}


@dataclass(frozen=True)
class AdapterType:
    name: str                  # the JobSpec value of ``peft_type``
    label: str
    peft_type: str             # what peft writes into adapter_config.json
    fields: tuple[str, ...]    # the JobSpec fields this type reads (the form shows them for this type only)
    merge: bool                # can be folded into the base weights (and so exported as GGUF)
    multi_adapter: bool        # several adapters of this type can share one base in chat
    four_bit: bool             # trains on a 4-bit (bitsandbytes) base
    packs: bool                # trains on padding-free packed rows
    memory: AdapterMemory      # its terms of the memory estimate
    why_no_merge: str = ""     # the sentence that says why it cannot be merged
    check: Callable | None = None  # spec -> {field: sentence}: the type's own rules

    @property
    def gguf(self) -> bool:
        return self.merge


LORA = AdapterType("lora", "LoRA", "LORA",
                   ("r", "lora_alpha", "lora_dropout", "target_modules", "lora_bias", "use_dora", "use_rslora",
                    "init_lora_weights"),
                   merge=True, multi_adapter=True, four_bit=True, packs=True, memory=LoraMemory(), check=_lora_check)
IA3 = AdapterType("ia3", "IA3", "IA3", ("target_modules",),
                  merge=True, multi_adapter=False, four_bit=True, packs=True, memory=IA3Memory())
PROMPT_TUNING = AdapterType(
    "prompt_tuning", "Prompt tuning", "PROMPT_TUNING",
    ("num_virtual_tokens", "prompt_tuning_init", "prompt_tuning_init_text"),
    merge=False, multi_adapter=False, four_bit=True, packs=False, memory=PromptTuningMemory(),
    why_no_merge="prompt tuning adds virtual tokens, not weight deltas, so there is nothing to merge into the base "
                 "weights",
    check=_prompt_tuning_check)
PREFIX_TUNING = AdapterType(
    "prefix_tuning", "Prefix tuning", "PREFIX_TUNING", ("num_virtual_tokens",),
    merge=False, multi_adapter=False, four_bit=True, packs=False, memory=PrefixTuningMemory(),
    why_no_merge="prefix tuning adds trained key/value prefixes to every attention layer, not weight deltas, so "
                 "there is nothing to merge into the base weights")

# the torch-free half of every adapter type, by JobSpec name (the worker half: workers.adapters.ADAPTERS)
ADAPTER_TYPES: dict[str, AdapterType] = {t.name: t for t in (LORA, IA3, PROMPT_TUNING, PREFIX_TUNING)}
PEFT_TYPES = tuple(ADAPTER_TYPES)

# LoRA initialisations (peft's init_lora_weights). PiSSA and OLoRA start the adapter from the principal
# components (PiSSA: SVD) or a QR factor (OLoRA) of each weight and subtract that from the base weight, so the
# trained adapter only fits the changed base; the worker saves it converted to a plain LoRA of the original base
# (rank 2r: the trained factors next to the initial ones, negated), which chat, merge and export load as any LoRA.
# Their training checkpoints stay as trained (resuming needs them so); the worker writes a converted copy of each
# under PLAIN_CHECKPOINTS beside the checkpoints folder, and ``loadable_folder`` sends chat and export there.
LORA_INITS = ("default", "gaussian", "orthogonal", "pissa", "olora")
BASE_CHANGING_INITS = ("pissa", "olora")
PLAIN_CHECKPOINTS = "checkpoints-plain-lora"


def loadable_folder(folder: Path) -> Path:
    """The folder to load the adapter saved in ``folder`` from: itself, or for a PiSSA / OLoRA training checkpoint
    (``<run>/checkpoints/checkpoint-N``) its plain-LoRA copy, which fits the original base."""
    folder = Path(folder)
    plain = folder.parent.parent / PLAIN_CHECKPOINTS / folder.name
    if folder.name.startswith("checkpoint-") and (plain / "adapter_model.safetensors").is_file():
        return plain
    return folder


def lora_init_problem(spec) -> str | None:
    """The sentence refusing the spec's LoRA initialisation with the rest of the spec, or None."""
    init = spec.init_lora_weights
    if init == "loftq":
        return ("LoftQ initialisation is not offered: peft runs it only on a CUDA GPU, and its adapter fits only the "
                "LoftQ-quantised copy of the base, not the base chat, merge and export load; choose pissa or olora, "
                "which are saved as a plain LoRA of the original base")
    if init == "orthogonal" and spec.r % 2:
        return f"orthogonal initialisation needs an even LoRA rank; r is {spec.r}"
    if init in BASE_CHANGING_INITS:
        name = {"pissa": "PiSSA", "olora": "OLoRA"}[init]
        if spec.load_in_4bit or spec.load_in_8bit:
            return (f"{name} initialisation rewrites the base weights, which a 4-bit or 8-bit base cannot hold exactly, "
                    "so the saved adapter would not fit the original base; turn 4-bit and 8-bit off")
        if spec.use_dora:
            return (f"{name} adapters are saved converted to a plain LoRA of the original base, which has no DoRA "
                    "magnitude; turn DoRA off")
    return None


BY_PEFT_NAME = {t.peft_type: t for t in ADAPTER_TYPES.values()}


@dataclass(frozen=True)
class Optimizer:
    name: str                  # transformers' ``optim`` value
    label: str
    state_bytes: int           # bytes per trainable parameter for the two AdamW states (exp_avg, exp_avg_sq)
    bitsandbytes: bool
    paged: bool                # pages its states between GPU and host memory: CUDA only


OPTIMIZERS = {o.name: o for o in (
    Optimizer("adamw_torch", "AdamW (torch)", 0, bitsandbytes=False, paged=False),  # 0: the parameters' dtype
    Optimizer("adamw_8bit", "AdamW 8-bit", 1, bitsandbytes=True, paged=False),
    Optimizer("paged_adamw_8bit", "Paged AdamW 8-bit", 1, bitsandbytes=True, paged=True),
    Optimizer("paged_adamw_32bit", "Paged AdamW 32-bit", 4, bitsandbytes=True, paged=True),
)}
OPTIM_CHOICES = tuple(OPTIMIZERS)


def optimizer_problem(optim: str, device: str) -> str | None:
    """The sentence refusing ``optim`` on a worker whose device is ``device`` ("cuda" or "cpu"), or None."""
    o = OPTIMIZERS[optim]
    if o.paged and device != "cuda":
        instead = ("adamw_8bit (the same 8-bit states, unpaged)" if o.state_bytes == 1
                   else "adamw_torch (fp32 states, unpaged) or adamw_8bit")
        return (f"{optim} pages its optimizer states between GPU and host memory, which needs a CUDA GPU, and a "
                f"worker here trains on CPU; choose {instead}")
    return None


def of_config(config: dict) -> AdapterType | None:
    """The adapter type of a parsed adapter_config.json (None: a type the studio does not know)."""
    return BY_PEFT_NAME.get(str(config.get("peft_type", "LORA")).upper())


def of_folder(folder: str | Path) -> AdapterType | None:
    """The adapter type of a saved PEFT adapter folder, from its adapter_config.json."""
    try:
        config = json.loads((Path(folder) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    return of_config(config) if isinstance(config, dict) else None


def merge_problem(folder: str | Path) -> str | None:
    """The sentence refusing to merge (or GGUF-export) the adapter in ``folder``, or None when it can be."""
    kind = of_folder(folder)
    if kind is None or kind.merge:
        return None
    return f"{kind.label} adapters cannot be merged or exported as GGUF: {kind.why_no_merge}"
