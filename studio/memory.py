"""Peak memory of a LoRA / QLoRA fine-tuning step: arithmetic only, no torch.

Like nanoGPT's ``estimate_mfu()``, every number is a named quantity. The peak of a training step comes at
the start of the backward pass, when every activation of the forward pass is still kept and the loss
gradient over the vocabulary is being formed; it is estimated as the sum of eight terms:

    base weights            frozen weights at their storage width: 4-bit / 8-bit linear layers under
                            bitsandbytes, the embeddings, lm_head (counted once when tied) and norms kept at
                            the compute dtype; 16- or 32-bit everything otherwise. On CPU a quantised load
                            keeps the checkpoint file mapped (its unquantised tensors are used in place), so
                            the pages of the original linear weights stay resident as well
    quantization constants  bitsandbytes 4-bit: one fp32 absmax per 64 weights, or with double quantisation
                            one 8-bit absmax per 64 weights plus one fp32 constant per 256 blocks
                            (0.127 bit per weight, QLoRA paper section 3); 8-bit: one fp32 scale per row
    LoRA weights            r x (in + out) per targeted layer (+ out for the DoRA magnitude), stored in
    LoRA gradients          the adapter dtype: fp32 (peft upcasts adapters), or bf16 when the base is
    optimizer states        quantised (TRL casts QLoRA adapters to bf16, as the QLoRA paper does); torch's
                            AdamW keeps two states per parameter in the parameter's dtype. Under autocast,
                            fp32 adapters also keep a bf16 copy for backward (counted with the weights)
    activations             per layer and token, see ``layer_activation_bytes``; with gradient
                            checkpointing only each layer's input is kept, plus one layer recomputed
    logits                  batch x seq x vocab x 12 bytes: the fp32 log-softmax (kept for backward) and the
                            two fp32 gradients the loss's backward forms (the logits themselves are dropped
                            by then; in the forward pass they, the fp32 upcast and the log-softmax take less)
    framework overhead      CUDA context and kernels on a GPU; on CPU the resident size of the Python
                            process with torch, transformers, peft and bitsandbytes imported, the kernels
                            a first step touches, and the freed activation memory glibc's allocator keeps
                            (measured: about half of what one forward pass allocates, checkpointed or not)

Units: the result is in GiB (2**30 bytes), the unit nvidia-smi reports and GPU sizes are sold in
("24 GB" cards hold 24 GiB); the studio labels it GB. docs/memory.md checks the terms against published
figures and against peak RSS measured on CPU by bench/memory.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .families import LLAMA_LAYERS, Linear, family_of
from .adapter_types import ADAPTER_TYPES, OPTIMIZERS, AdapterMemory
from .method_info import METHOD_INFO
from .spec import MLP_NAMES

GIB = 2**30
GPU_SIZES_GB = (8, 12, 16, 24, 40, 48, 80)

# bitsandbytes quantisation
QUANT_BLOCK = 64                # weights sharing one absmax (bnb_4bit blocksize)
DOUBLE_QUANT_BLOCK = 256        # first-level absmax values sharing one fp32 constant under double quantisation
FP32 = 4

# bitsandbytes' 8-bit optimizers
BNB_OPTIM_BLOCK = 256           # states sharing one fp32 absmax
BNB_QMAP = 256                  # fp32 entries of each state's quantisation code book
BNB_MIN_8BIT_SIZE = 4096        # smaller tensors keep 32-bit states (bitsandbytes' min_8bit_size)

# activations
NORM_BYTES = FP32               # LlamaRMSNorm upcasts its input to fp32 and keeps that copy for backward
LSE_BYTES = FP32                # SDPA keeps one fp32 log-sum-exp per head and token, never an s x s matrix
CUDA_MASK_BYTES = 1             # fused CUDA dropout keeps a bool mask; on CPU the mask has the input's dtype

# logits, per batch x seq x vocab element
LOG_SOFTMAX_BYTES = FP32        # cross_entropy upcasts to fp32; its log-softmax output is kept for backward
LOSS_GRAD_BYTES = 2 * FP32      # backward: the fp32 gradient of the log-softmax output and of its input

# GRPO scores its completions through TRL's fused LM head (trl.kernels.ChunkedLogProbFunction): the logits are
# formed in tiles of at most FUSED_TOKENS tokens x FUSED_VOCAB vocabulary entries, never whole
FUSED_TOKENS = 4096
FUSED_VOCAB = 32768
FUSED_TILES_CPU = 11.6          # fp32 tiles alive at the peak of its backward on CPU, where torch ops stand in for
                                # the Triton kernels (measured: 927 MiB for 640 tokens x 32768 entries)
FUSED_TILES_CUDA = 1            # the tile buffer alone: the Triton kernels fold and differentiate it in place

# framework overhead
CUDA_CONTEXT_GIB = 0.75         # CUDA context, cuBLAS workspace, kernels and allocator slack
CPU_IMPORTS_GIB = 0.40          # VmRSS with torch, transformers, peft and bitsandbytes imported (bench: 0.40)
CPU_KERNELS_GIB = 0.03          # kernel code pages and thread pools a first training step touches (bench)
CPU_ALLOCATOR_RETENTION = 0.55  # glibc keeps freed activations in its heaps: x the forward's allocations (bench)

TERMS = ("base weights", "quantization constants", "LoRA weights", "LoRA gradients", "optimizer states",
         "activations", "logits", "framework overhead")
DEQUANT_TERM = "dequantised weight cache"  # only present when the speed lever is on (workers/speed.py)
GENERATION_TERM = "generation KV cache"    # only for methods that sample completions (GRPO)

# the tensor that feeds each projection: q, k and v read the same normed hidden states (fused: qkv_proj reads
# them once), gate and up the same MLP input
INPUT_OF = {"q_proj": "attention input", "k_proj": "attention input", "v_proj": "attention input",
            "qkv_proj": "attention input", "o_proj": "attention output", "gate_proj": "mlp input",
            "up_proj": "mlp input", "gate_up_proj": "mlp input", "down_proj": "mlp hidden"}


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only config.json that the arithmetic needs."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    layout: tuple[Linear, ...] = LLAMA_LAYERS  # the decoder layer's linear layers (studio.families), fused or not

    @classmethod
    def from_config(cls, config: dict) -> "ModelShape":
        c = config.get("text_config", config) if "hidden_size" not in config else config
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if not c.get(k)]
        if missing:
            raise ValueError(f"the model configuration lacks {', '.join(missing)}; "
                             "the memory estimate covers Llama-style decoder models")
        heads = int(c["num_attention_heads"])
        attention_bias = bool(c.get("attention_bias", False))
        family = family_of(config) or family_of(c)
        return cls(vocab=int(c["vocab_size"]), hidden=int(c["hidden_size"]),
                   intermediate=int(c["intermediate_size"]), layers=int(c["num_hidden_layers"]), heads=heads,
                   kv_heads=int(c.get("num_key_value_heads") or heads),
                   head_dim=int(c.get("head_dim") or int(c["hidden_size"]) // heads),
                   tied=bool(c.get("tie_word_embeddings", False)),
                   qkv_bias=attention_bias or c.get("model_type") == "qwen2",  # Qwen2 always has q/k/v biases
                   o_bias=attention_bias, mlp_bias=bool(c.get("mlp_bias", False)),
                   layout=family.linear_layers if family is not None else LLAMA_LAYERS)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder layer; a fused layer (Phi-3's
        qkv_proj) reads its parts' shared input and writes their outputs side by side."""
        h, i = self.hidden, self.intermediate
        role = {"q": (h, self.q_dim), "k": (h, self.kv_dim), "v": (h, self.kv_dim), "o": (self.q_dim, h),
                "gate": (h, i), "up": (h, i), "down": (i, h)}
        return {layer.name: (role[layer.parts[0]][0], sum(role[p][1] for p in layer.parts)) for layer in self.layout}

    def linear_weights(self) -> int:
        """Elements of every decoder layer's linear weights: what bitsandbytes quantises."""
        return self.layers * sum(fi * fo for fi, fo in self.linears().values())

    def biases_per_layer(self) -> int:
        return ((self.q_dim + 2 * self.kv_dim) * self.qkv_bias + self.hidden * self.o_bias
                + (2 * self.intermediate + self.hidden) * self.mlp_bias)


@dataclass
class Estimate:
    total_params: int                 # all parameters as peft counts them: the base model plus the adapters
    trainable_params: int
    breakdown: dict[str, float] = field(default_factory=dict)  # term -> GiB, in TERMS order
    total_gb: float = 0.0             # GiB

    def fits(self) -> dict[int, bool]:
        """Whether the estimated peak fits a device of each common size (8 ... 80 GB)."""
        return {size: self.total_gb <= size for size in GPU_SIZES_GB}

    def trainable_text(self) -> str:
        """e.g. "4.9M of 139M, 3.5%"."""
        share = 100 * self.trainable_params / self.total_params if self.total_params else 0.0
        pct = f"{share:.1f}" if share >= 0.1 or share == 0 else f"{share:.2g}"
        return f"{_count(self.trainable_params)} of {_count(self.total_params)}, {pct}%"


def _count(n: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div * 0.9995:  # 999,950 reads 1.0M, not 1000K
            v = n / div
            return f"{v:.1f}{unit}" if v < 99.95 else f"{v:.0f}{unit}"
    return str(n)


def resolve_targets(shape: ModelShape, target_modules: list[str]) -> list[str]:
    """Expand presets (all-linear, attention, mlp) and check the names against the model's layers."""
    from .spec import JobSpec

    names = list(shape.linears())
    resolved = JobSpec(target_modules=list(target_modules)).resolved_target_modules(names)
    unknown = [t for t in resolved if t not in names and t != "lm_head"]
    if unknown:
        raise ValueError(f"the model has no linear layer named {', '.join(map(repr, unknown))}; "
                         f"it has {', '.join(names)}")
    return resolved


@dataclass(frozen=True)
class AdapterSettings:
    """The spec's adapter settings that the adapter types' memory terms read (studio.adapter_types.AdapterMemory)."""

    targets: tuple[str, ...]    # resolved target modules (lm_head included when targeted)
    feedforward: tuple[str, ...] = ()  # the targets that are feed-forward (MLP) layers: IA3 scales their input
    r: int = 16
    use_dora: bool = False
    lora_dropout: float = 0.05
    num_virtual_tokens: int = 20


@dataclass(frozen=True)
class Widths:
    """Bytes per element of the tensors a training step keeps."""

    compute: int                # the compute dtype: activations, and weights bitsandbytes leaves unquantised
    adapter: int                # the adapters' dtype (and their gradients')
    device: str

    @property
    def lora(self) -> int:
        """The dtype lora_A / lora_B run in: autocast's or the adapter's."""
        return min(self.adapter, self.compute)

    @property
    def cast(self) -> bool:
        """peft casts a layer's input to the adapter dtype first."""
        return self.adapter != self.compute

    @property
    def mask(self) -> int:
        """One element of a dropout mask: fused CUDA dropout keeps a bool, on CPU the mask has the input's dtype."""
        return CUDA_MASK_BYTES if self.device == "cuda" else (self.adapter if self.cast else self.compute)


class KeptInputs:
    """The inputs one decoder layer already keeps for backward, by what they are (INPUT_OF): a layer that reads
    one of them keeps no copy of its own. SDPA returns its output laid out (batch, seq, heads, head_dim), so
    o_proj reads the very tensor SDPA keeps."""

    def __init__(self):
        self.kept: set[str] = {"attention output"}

    def claim(self, name: str) -> bool:
        """True the first time the input of layer ``name`` is kept (the caller counts it), False after."""
        what = INPUT_OF.get(name, name)
        if what in self.kept:
            return False
        self.kept.add(what)
        return True


def layer_activation_bytes(shape: ModelShape, adapter: AdapterMemory, a: AdapterSettings, w: Widths,
                           bits: int = 16) -> float:
    """Bytes one decoder layer keeps for the backward pass, per token, with frozen base weights.

    After "Reducing Activation Recomputation in Large Transformer Models" (Korthikanti et al. 2022), adapted
    to a Llama layer whose base weights are frozen, so a frozen linear layer keeps nothing of its input:
      norms       2 RMSNorms x fp32 copy of the hidden state and its 1/rms          8h + 8
      attention   SDPA keeps q, k, v (GQA: k and v at kv width) and its output,
                  plus an fp32 log-sum-exp per head; no s x s term                  cb(2 q_dim + 2 kv_dim) + 4 heads
      mlp         SiLU input, SiLU output and the up projection                     3 cb i
      adapters    what the adapter type keeps (its AdapterMemory.layer_bytes): for LoRA per targeted layer
                  the input of lora_A (own copy after dropout, shared by q/k/v and by gate/up when there is
                  no dropout and no dtype cast), the dropout mask, and lora_A's output (r); with DoRA the
                  base and LoRA outputs, kept for the magnitude's gradient (2 cb out per layer)
      8-bit       bitsandbytes' int8 matmul keeps its input even for frozen weights  cb per distinct input
                  (MatMul8bitLt on GPU, MatMul8bitFp's ctx.A on CPU)
    Verified tensor by tensor with torch.autograd.graph.saved_tensors_hooks (docs/memory.md).
    """
    h, i, cb = shape.hidden, shape.intermediate, w.compute
    norms = 2 * (NORM_BYTES * h + FP32)  # and the fp32 1/rms of each token
    attention = cb * (2 * shape.q_dim + 2 * shape.kv_dim) + LSE_BYTES * shape.heads
    mlp = 3 * cb * i
    kept = KeptInputs()
    adapters = adapter.layer_bytes(shape, a, w, kept)
    int8_inputs = 0
    if bits == 8:
        for name, (fan_in, _) in shape.linears().items():
            if kept.claim(name):
                int8_inputs += fan_in * cb
    return norms + attention + mlp + adapters + int8_inputs


def optimizer_state_bytes(tensors: list[int], optim: str) -> float:
    """AdamW's two states (exp_avg, exp_avg_sq) for trainable tensors of these sizes under a bitsandbytes
    optimizer: 8-bit states with one fp32 absmax per block of 256 and a 256-entry fp32 code book per state,
    except for tensors under 4096 elements, which bitsandbytes keeps in 32-bit; 32-bit optimizers keep fp32.
    Paged states count as on the device: paging only moves them to the host when the device runs short."""
    total = 0.0
    for n in tensors:
        if OPTIMIZERS[optim].state_bytes == 1 and n >= BNB_MIN_8BIT_SIZE:
            total += 2 * (n + math.ceil(n / BNB_OPTIM_BLOCK) * FP32 + BNB_QMAP * FP32)
        else:
            total += 2 * n * FP32
    return total


def estimate(config: dict, *, bits: int, r: int, target_modules: list[str], batch_size: int, seq_len: int,
             gradient_checkpointing: bool, compute_bytes: int = 2, double_quant: bool = True,
             device: str = "cuda", use_dora: bool = False, lora_dropout: float = 0.05,
             adapter_bytes: int | None = None, optimizer_bytes: int | None = None,
             dequant_cache: bool = False, peft_type: str = "lora", num_virtual_tokens: int = 20,
             optim: str = "adamw_torch") -> Estimate:
    """Peak memory of one LoRA training step on one device.

    ``bits``: storage of the frozen linear weights (4 / 8: bitsandbytes; 16 / 32: unquantised).
    ``compute_bytes``: bytes of the compute dtype: activations, and the weights bitsandbytes leaves
    unquantised (embeddings, lm_head, norms). ``adapter_bytes``: dtype of the adapters and their gradients;
    default 2 (bf16) when the base is quantised (TRL casts QLoRA adapters to bf16), else 4 (fp32, peft's
    default). ``optimizer_bytes``: dtype of the two AdamW states; default the adapters' (torch AdamW), 4 for
    bitsandbytes' 32-bit (paged) AdamW. ``dequant_cache``: 4-bit weights also held dequantised in the
    compute dtype (the CPU speed lever), an extra term after the others. ``peft_type``: the adapter type
    (studio.adapter_types.ADAPTER_TYPES, whose ``memory`` adds its terms; ``num_virtual_tokens`` for prompt and
    prefix tuning). ``optim``: the
    optimizer (studio.adapter_types.OPTIMIZERS), whose states ``optimizer_state_bytes`` counts.
    """
    if bits not in (4, 8, 16, 32):
        raise ValueError(f"bits must be 4, 8, 16 or 32, got {bits}")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    s = ModelShape.from_config(config)
    targets = resolve_targets(s, target_modules)
    if adapter_bytes is None:
        adapter_bytes = 2 if bits in (4, 8) else FP32
    adapter = ADAPTER_TYPES[peft_type].memory
    a = AdapterSettings(tuple(targets), tuple(t for t in targets if t in MLP_NAMES), r, use_dora, lora_dropout,
                        num_virtual_tokens)
    w = Widths(compute_bytes, adapter_bytes, device)
    tokens = batch_size * (seq_len + adapter.virtual_tokens(a))  # virtual tokens run through every layer

    # ---- parameters -------------------------------------------------------------------------------
    linear_weights = s.linear_weights()
    embeddings = s.vocab * s.hidden
    lm_head = 0 if s.tied else s.vocab * s.hidden
    norms_and_biases = s.layers * (2 * s.hidden + s.biases_per_layer()) + s.hidden
    base_params = linear_weights + embeddings + lm_head + norms_and_biases
    tensors = adapter.tensors(s, a)
    trainable = sum(tensors)

    # ---- weights ----------------------------------------------------------------------------------
    unquantised = embeddings + lm_head + norms_and_biases
    if bits in (4, 8):
        base_weights = linear_weights * bits / 8 + unquantised * compute_bytes
        if device == "cpu":  # the mapped checkpoint (stored in the compute dtype) keeps its linear weights resident
            base_weights += linear_weights * compute_bytes
    else:
        base_weights = base_params * bits / 8
    if bits == 4:
        blocks = linear_weights / QUANT_BLOCK
        quant_constants = (blocks * 1 + blocks / DOUBLE_QUANT_BLOCK * FP32) if double_quant else blocks * FP32
    elif bits == 8:
        quant_constants = s.layers * sum(fo for _, fo in s.linears().values()) * FP32  # one fp32 scale per row
    else:
        quant_constants = 0

    # under autocast, fp32 adapters are cast to the compute dtype for each matmul; the copies live until
    # backward (with checkpointing only those of the layer being recomputed)
    per_layer_copied, head_copied = adapter.autocast_elements(s, a)
    copied_layers = 1 if gradient_checkpointing else s.layers
    autocast_copies = ((copied_layers * per_layer_copied + head_copied) * w.lora if adapter_bytes > compute_bytes
                       else 0)
    lora_weights = trainable * adapter_bytes + autocast_copies
    lora_gradients = trainable * adapter_bytes
    optimizer_states = (2 * trainable * (optimizer_bytes or adapter_bytes) if optim == "adamw_torch"
                        else optimizer_state_bytes(tensors, optim))

    # ---- activations ------------------------------------------------------------------------------
    per_layer = layer_activation_bytes(s, adapter, a, w, bits)
    final_norm = NORM_BYTES * s.hidden + FP32
    if gradient_checkpointing:
        # each layer's input is kept; in the backward pass one layer at a time is recomputed in full
        per_token = s.layers * s.hidden * compute_bytes + per_layer + final_norm
    else:
        per_token = s.layers * per_layer + final_norm
    if head := adapter.head_bytes(s, a, w):
        per_token += head
    activations = tokens * per_token
    if per_sequence := adapter.sequence_bytes(s, a, w, trainable):
        activations += batch_size * per_sequence
    weight_copy = bits in (4, 8) or bits // 8 != adapter_bytes or adapter_bytes != compute_bytes
    if weight_copy and (copies := adapter.weight_copy_bytes(s, a, w)):
        # kept for backward: one copy per targeted layer (of one layer when checkpointed)
        activations += (1 if gradient_checkpointing else s.layers) * copies

    # forward: the logits, their fp32 upcast (none when already fp32) and its log-softmax; the Trainer drops
    # the logits before backward, where the log-softmax meets two fp32 gradients of the same size
    logits_forward = compute_bytes + (FP32 if compute_bytes < FP32 else 0) + LOG_SOFTMAX_BYTES
    logits_backward = LOG_SOFTMAX_BYTES + LOSS_GRAD_BYTES
    logits = tokens * s.vocab * max(logits_forward, logits_backward)

    if device == "cuda":
        overhead = CUDA_CONTEXT_GIB * GIB
    else:
        # every layer's activations pass through malloc in the forward pass, kept or (checkpointing) not
        forward_allocations = tokens * (s.layers * per_layer + final_norm)
        overhead = (CPU_IMPORTS_GIB + CPU_KERNELS_GIB) * GIB + CPU_ALLOCATOR_RETENTION * forward_allocations

    values = (base_weights, quant_constants, lora_weights, lora_gradients, optimizer_states, activations, logits,
              overhead)
    breakdown = {term: v / GIB for term, v in zip(TERMS, values)}
    if dequant_cache and bits == 4:
        breakdown[DEQUANT_TERM] = linear_weights * compute_bytes / GIB
    return Estimate(total_params=base_params + trainable, trainable_params=trainable, breakdown=breakdown,
                    total_gb=sum(breakdown.values()))


def dequant_cache_on(spec, config: dict, device: str, memory_gb: float | None, fast_4bit: bool = False) -> bool:
    """The worker's rule (workers/speed.py): "on" caches on any device; on a CPU without fast 4-bit kernels,
    "auto" caches when the fp32 weights take under a quarter of the memory."""
    if not spec.load_in_4bit or spec.dequant_cache == "off":
        return False
    if spec.dequant_cache == "on":
        return True
    if device != "cpu" or fast_4bit:
        return False
    linear_bytes = ModelShape.from_config(config).linear_weights() * FP32
    return memory_gb is not None and linear_bytes < memory_gb * 1e9 / 4


def estimate_for_spec(spec, config: dict, device: str = "cuda", bf16: bool | None = None,
                      memory_gb: float | None = None, fast_4bit: bool = False) -> Estimate:
    """The estimate for a JobSpec on ``device``.

    Precision "auto" means bf16 where the device computes it natively (``bf16``; default: on a GPU, not
    on CPU), as the worker decides. Unquantised, the frozen base is held in that dtype on a GPU, in fp32 on a CPU. Each training
    method sets the batch it trains and adds its own terms (``method_batch``, ``with_method_terms``).
    ``memory_gb`` and ``fast_4bit``: the device's memory and whether
    bitsandbytes has fast CPU kernels there, for the CPU dequantisation cache.
    """
    precision = spec.resolved_precision((device == "cuda") if bf16 is None else bf16)
    compute_bytes = 2 if precision in ("bf16", "fp16") else FP32
    frozen_bytes = 2 if precision == "bf16" and device == "cuda" else FP32  # bf16 frozen base: on a GPU only
    bits = 4 if spec.load_in_4bit else 8 if spec.load_in_8bit else 8 * frozen_bytes
    batch, seq_len = method_batch(spec)
    est = estimate(config, bits=bits, r=spec.r, target_modules=list(spec.target_modules), batch_size=batch,
                   seq_len=seq_len, gradient_checkpointing=spec.gradient_checkpointing,
                   compute_bytes=compute_bytes, double_quant=spec.bnb_4bit_use_double_quant, device=device,
                   use_dora=spec.use_dora, lora_dropout=spec.lora_dropout,
                   dequant_cache=dequant_cache_on(spec, config, device, memory_gb, fast_4bit),
                   peft_type=spec.peft_type, num_virtual_tokens=spec.num_virtual_tokens, optim=spec.optim)
    return with_method_terms(est, spec, ModelShape.from_config(config), compute_bytes, device)


# ---- the training methods' terms (studio/method_info.py) ----------------------------------------

def method_batch(spec) -> tuple[int, int]:
    """(sequences, tokens per sequence) that keep activations in one step of the spec's method.

    DPO and ORPO run each pair's chosen and rejected replies in one batch; KTO's reference and KL
    passes and DPO's reference pass run without gradients and keep nothing. GRPO trains on the prompt
    (up to max length) followed by its sampled completion."""
    info = METHOD_INFO[spec.method]
    seq_len = spec.max_length + (spec.max_completion_length if info.generates else 0)
    return spec.per_device_train_batch_size * info.sequences_per_row, seq_len


def generation_cache_bytes(shape: ModelShape, sequences: int, tokens: int, compute_bytes: int) -> float:
    """The KV cache of sampling: a key and a value per layer, KV head and token of every sequence."""
    return 2 * shape.layers * shape.kv_dim * compute_bytes * sequences * tokens


def fused_logits_bytes(shape: ModelShape, tokens: int, compute_bytes: int, device: str) -> float:
    """The logits of TRL's fused LM head: one tile of tokens x vocabulary at a time, and on CPU the torch
    temporaries its backward forms from that tile."""
    tile = min(tokens, FUSED_TOKENS) * min(shape.vocab, FUSED_VOCAB)
    return tile * (FUSED_TILES_CPU * FP32 if device == "cpu" else FUSED_TILES_CUDA * compute_bytes)


def with_method_terms(est: Estimate, spec, shape: ModelShape, compute_bytes: int, device: str = "cuda") -> Estimate:
    """``est`` plus the method's own terms: GRPO samples a whole generation batch (batch size x gradient
    accumulation completions) with a KV cache before the step, and scores the completions through TRL's fused
    LM head, which forms the logits tile by tile instead of whole."""
    if not METHOD_INFO[spec.method].generates:
        return est
    sequences = spec.per_device_train_batch_size * spec.gradient_accumulation_steps
    tokens = spec.max_length + spec.max_completion_length
    est.breakdown["logits"] = fused_logits_bytes(shape, spec.per_device_train_batch_size * tokens, compute_bytes,
                                                 device) / GIB
    est.breakdown[GENERATION_TERM] = generation_cache_bytes(shape, sequences, tokens, compute_bytes) / GIB
    est.total_gb = sum(est.breakdown.values())
    return est
