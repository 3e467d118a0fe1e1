"""Adapter types and optimizers: what each one is and what it supports. Pure Python, no torch.

JobSpec.validate, the Train form, the memory estimate, the chat engine and the merge / GGUF export all read
these tables; the worker turns a JobSpec into the matching peft config in ``workers/adapters/``. A new
adapter type is one entry here and one module there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AdapterType:
    name: str                  # the JobSpec value of ``peft_type``
    label: str
    peft_type: str             # what peft writes into adapter_config.json
    fields: tuple[str, ...]    # the JobSpec fields this type reads
    merge: bool                # can be folded into the base weights (and so exported as GGUF)
    multi_adapter: bool        # several adapters of this type can share one base in chat
    four_bit: bool             # trains on a 4-bit (bitsandbytes) base
    packs: bool                # trains on padding-free packed rows
    why_no_merge: str = ""     # the sentence that says why it cannot be merged

    @property
    def gguf(self) -> bool:
        return self.merge


ADAPTER_TYPES = {t.name: t for t in (
    AdapterType("lora", "LoRA", "LORA",
                ("r", "lora_alpha", "lora_dropout", "target_modules", "lora_bias", "use_dora", "use_rslora",
                 "init_lora_weights"),
                merge=True, multi_adapter=True, four_bit=True, packs=True),
    AdapterType("ia3", "IA3", "IA3", ("target_modules",),
                merge=True, multi_adapter=False, four_bit=True, packs=True),
    AdapterType("prompt_tuning", "Prompt tuning", "PROMPT_TUNING",
                ("num_virtual_tokens", "prompt_tuning_init", "prompt_tuning_init_text"),
                merge=False, multi_adapter=False, four_bit=True, packs=False,
                why_no_merge="prompt tuning adds virtual tokens, not weight deltas, so there is nothing to merge "
                             "into the base weights"),
    AdapterType("prefix_tuning", "Prefix tuning", "PREFIX_TUNING", ("num_virtual_tokens",),
                merge=False, multi_adapter=False, four_bit=True, packs=False,
                why_no_merge="prefix tuning adds trained key/value prefixes to every attention layer, not weight "
                             "deltas, so there is nothing to merge into the base weights"),
)}
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


def adapter_type(name: str) -> AdapterType:
    return ADAPTER_TYPES[name]


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
