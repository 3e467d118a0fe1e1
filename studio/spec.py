"""JobSpec: every training choice, its default, help text and validation.

The Train form, the YAML file, the CLI and the worker all read this one definition.
Field names follow transformers / peft / TRL so a practitioner recognises them.
Pure Python: no torch, no transformers.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import math
import reprlib
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import yaml

from .adapter_types import ADAPTER_TYPES, LORA_INITS, OPTIM_CHOICES, PEFT_TYPES, optimizer_problem
from .limits import GOLDEN_PROMPT_CHARS, GOLDEN_PROMPTS
from .method_info import METHOD_INFO, method_errors
from .rewards import ANSWER_EXTRACTORS

BUNDLED_MODEL = "SmolLM2-135M-Instruct"

TARGET_PRESETS = ("all-linear", "attention", "mlp")
ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "query_key_value", "c_attn", "Wqkv", "out_proj")
MLP_NAMES = ("gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2", "c_fc", "c_proj", "w1", "w2", "w3")


MAX_SPEC_BYTES = 256 * 1024  # a job file is a flat mapping of a few dozen fields: a few KB
QUOTE_CHARS = 80  # the most of a user's value any message repeats
MAX_STEPS = 10**7
UNKNOWN_KEYS_SHOWN = 5


def _f(default, help: str, choices: tuple | None = None, label: str | None = None, advanced: bool = False,
       bounds: tuple | None = None, exclusive: bool = False, sentence: str | None = None, details: str | None = None,
       estimate: bool = False):
    """A JobSpec field. ``help`` is one short line (what it is, what to choose: the form shows it under the
    label); ``details`` the full explanation (trade-offs, numbers, when to change it), shown behind the form's
    "What each field means" and in docs/fields.md (studio/field_docs.py). Numbers carry finite ``bounds``
    (inclusive, or ``exclusive`` at both ends) that the form and ``validate`` share, and optionally the
    ``sentence`` that refuses a value outside them. ``estimate``: the memory estimate reads the field, so the
    form recomputes the estimate it shows when the field changes."""
    meta = {"help": help, "choices": choices, "label": label, "advanced": advanced, "bounds": bounds,
            "exclusive": exclusive, "sentence": sentence, "details": details, "estimate": estimate}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


def _env_default(variable: str, help: str, **kw):
    """A switch whose default a deployment sets through ``variable`` (studio.settings.SWITCHES: on or off), read
    when a spec is made; the form shows it and a job's YAML states it, like any other default."""
    from .settings import SWITCHES, switch

    meta = {**_f(SWITCHES[variable], help, **kw).metadata, "env": variable}
    return field(default_factory=lambda: switch(variable), metadata=meta)


BEST_CHECKPOINT_RULES = ("eval_loss", "golden_rouge", "probe", "last")  # = workers.checkpoints.RULES
AUTO_ROW_PASSES = 360  # automatic epochs: about this many rows trained on (4 epochs of 90 rows)
AUTO_MIN_EPOCHS, AUTO_MAX_EPOCHS, AUTO_ONE_EPOCH_ROWS = 2, 5, 1000
TRACKERS = ("none", "mlflow", "wandb", "trackio")  # besides TensorBoard, which every run writes
PACKED_ROW_LIMIT = 8192  # padding-free rows longer than this cost more in the L x L mask than padding saves


@dataclass
class JobSpec:
    # what to train
    base_model: str = _f(BUNDLED_MODEL, "Pick from the list, or type any hub id or local model folder.", label="Base model",
                         details="The bundled SmolLM2-135M-Instruct, a model of a family the "
                                 "studio knows (the list: name · family · size · licence), any other hub id, "
                                 "or a local Hugging Face model folder.", estimate=True)
    dataset: str = _f("", "A dataset added in the Datasets tab.", label="Dataset",
                         details="Name of an uploaded dataset (Datasets tab or `studio dataset add`).")
    eval_dataset: str = _f("", "Optional separate evaluation dataset; when empty, eval_split of the training data is held out.", label="Eval dataset", advanced=True)
    method: str = _f("sft", "Usually sft; the others need preference or prompt-only data.", tuple(METHOD_INFO), label="Method",
                     details="sft: supervised fine-tuning on conversations or text. dpo: preference "
                             "optimisation on chosen/rejected pairs. kto: preference optimisation on single "
                             "replies labelled good or bad. orpo: SFT plus an odds-ratio penalty on the "
                             "rejected reply of each pair, without a reference model. grpo: reinforcement "
                             "learning on prompts, scored by the rewards chosen below. simpo: preference "
                             "optimisation on chosen/rejected pairs by a length-normalised reward margin, without "
                             "a reference model.", estimate=True)
    name: str = _f("", "Optional run name (letters, digits, '.', '_', '-'). Generated when empty.", label="Run name", advanced=True)

    # quantisation
    load_in_4bit: bool = _f(True, "QLoRA: the frozen base in 4-bit, to save memory.", label="4-bit (QLoRA)",
                            details="QLoRA: load the frozen base weights in 4-bit (bitsandbytes) and train "
                                    "LoRA adapters on top.", estimate=True)
    load_in_8bit: bool = _f(False, "Load the frozen base weights in 8-bit (bitsandbytes LLM.int8). Exclusive with 4-bit.", label="8-bit", advanced=True, estimate=True)
    bnb_4bit_quant_type: str = _f("nf4", "4-bit data type: nf4 (QLoRA paper, better for normally distributed weights) or fp4.", ("nf4", "fp4"), label="4-bit type", advanced=True)
    bnb_4bit_use_double_quant: bool = _f(True, "Quantise the quantisation constants too (saves about 0.4 bit per parameter).", label="Double quantisation", advanced=True, estimate=True)
    bnb_4bit_compute_dtype: str = _f("auto", "dtype of the matmuls behind 4-bit weights; auto: bfloat16 where supported.", ("auto", "bfloat16", "float16", "float32"), label="Compute dtype", advanced=True,
                                     details="dtype of the matmuls behind 4-bit weights; auto picks bfloat16 "
                                             "where the device supports it.")

    # adapter
    r: int = _f(16, "Size of the update; 8-64 covers most tasks.", label="LoRA rank (r)", bounds=(1, 1024), sentence="LoRA rank must be between 1 and 1024",
                details="The size of the low-rank update of each target layer; the trainable "
                        "parameters grow in proportion to it. 8-64 covers most tasks: a small rank (8-16) "
                        "usually suffices to teach a style or an identity, while larger datasets that teach "
                        "a new task may gain from 32-64 (with rsLoRA at high ranks).", estimate=True)
    lora_alpha: int = _f(32, "Scales the update by alpha / r; usually 2 x r.", label="LoRA alpha", bounds=(1, 16384), sentence="LoRA alpha must be greater than 0 and at most 16384",
                         details="LoRA scaling numerator (update is scaled by alpha/r, or alpha/sqrt(r) with "
                                 "rsLoRA). Usually 2 x r.")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA input, 0-0.5.", label="LoRA dropout", bounds=(0, 0.5), sentence="LoRA dropout must be between 0 and 0.5", estimate=True)
    target_modules: list = _f(["all-linear"], "Linear layers that get adapters; presets: all-linear, attention, mlp.", label="Target modules",
                              details="Linear layers that get adapters: names from the model, or a preset "
                                      "(all-linear, attention, mlp).", estimate=True)
    lora_bias: str = _f("none", "Train biases too: none, all, or lora_only.", ("none", "all", "lora_only"), label="Bias", advanced=True)
    use_dora: bool = _f(False, "DoRA: weight-decomposed LoRA (slower, sometimes better at low rank).", label="DoRA", advanced=True, estimate=True)
    use_rslora: bool = _f(False, "rsLoRA: scale by alpha/sqrt(r), which keeps high ranks stable.", label="rsLoRA", advanced=True)
    peft_type: str = _f("lora", "lora suits most runs; the others train fewer parameters.", PEFT_TYPES, label="Adapter type",
                        details="lora (low-rank weight updates; mergeable), ia3 (learned "
                                "scaling vectors: the fewest parameters; mergeable), prompt_tuning (trained "
                                "virtual tokens before the input) or prefix_tuning (trained key/value "
                                "prefixes in every attention layer). Prompt and prefix tuning cannot be "
                                "merged or exported as GGUF.", estimate=True)
    init_lora_weights: str = _f("default", "How LoRA's matrices start; default suits most runs.",
                                LORA_INITS, label="LoRA initialisation", advanced=True,
                                details="How LoRA starts: default (peft's: Kaiming-uniform A, zero B), "
                                        "gaussian (A drawn from a normal distribution scaled by the rank, "
                                        "zero B) or orthogonal (A and B orthogonal, the update cancelled at "
                                        "the start; needs an even rank), pissa (A and B from the weight's "
                                        "principal singular vectors, which are taken out of the base) or "
                                        "olora (from a QR factorisation of the weight, likewise). PiSSA and "
                                        "OLoRA need an unquantised base and are saved as a plain LoRA of the "
                                        "original base, rank 2r.")
    num_virtual_tokens: int = _f(20, "Prompt / prefix tuning: number of trained virtual tokens.", label="Virtual tokens",
                                 bounds=(1, 1024), sentence="virtual tokens must be between 1 and 1024", estimate=True)
    prompt_tuning_init: str = _f("random", "Prompt tuning: start the virtual tokens random, or from a text's embeddings.", ("random", "text"), label="Prompt initialisation",
                                 advanced=True,
                                 details="Prompt tuning: start the virtual tokens random, or from the "
                                         "embeddings of a text (prompt_tuning_init_text).")
    prompt_tuning_init_text: str = _f("", "Prompt tuning with init text: the text whose embeddings start the virtual tokens.", label="Prompt init text",
                                      advanced=True,
                                      details="Prompt tuning with init text: the text whose token embeddings "
                                              "start the virtual tokens, e.g. a task description.")

    # optimisation
    optim: str = _f("adamw_torch", "adamw_torch; the 8-bit optimizers keep a quarter of its state memory.", OPTIM_CHOICES,
                    label="Optimizer", advanced=True,
                    details="adamw_torch (two fp32 states per trainable parameter), adamw_8bit "
                            "(bitsandbytes: 8-bit states, a quarter of the memory), paged_adamw_8bit / "
                            "paged_adamw_32bit (states paged to host memory when the GPU runs short; CUDA "
                            "only).", estimate=True)
    learning_rate: float = _f(5e-4, "Peak learning rate of the adapter weights.", label="Learning rate", bounds=(0, 1), exclusive=True, sentence="learning rate must be between 0 and 1 (exclusive)",
                              details="Peak learning rate of the adapter weights, reached after the warm-up "
                                      "and then lowered by the scheduler. Adapters take higher rates than "
                                      "full fine-tuning: 1e-4 to 5e-4 is usual, and the default 5e-4 suits a "
                                      "small dataset trained for a few epochs. Lower it when the loss jumps "
                                      "or climbs, or when the adapter loses general skills; raise it when "
                                      "the loss hardly moves.")
    lr_scheduler_type: str = _f("cosine", "Learning-rate schedule after warm-up.", ("linear", "cosine", "constant", "constant_with_warmup"), label="Scheduler", advanced=True)
    warmup_ratio: float = _f(0.05, "Fraction of steps spent warming the learning rate up, 0-0.5.", label="Warm-up ratio", advanced=True, bounds=(0, 0.5), sentence="warm-up ratio must be between 0 and 0.5")
    num_train_epochs: float = _f(0.0, "Passes over the data; 0 = automatic, by dataset size.", label="Epochs", bounds=(0, 1000), sentence="epochs must be between 0 (automatic) and 1000",
                                 details=f"Passes over the training data (ignored when max_steps > 0); 0 = automatic: about {AUTO_ROW_PASSES} rows' worth (general replay rows included), so a small dataset is seen more often (3 epochs for 90 rows with replay, 4 without, at most 5 for smaller sets, where more passes cost general skills; 2 for 300 or more, 1 from {AUTO_ONE_EPOCH_ROWS:,} rows); the run's log says how many.")
    max_steps: int = _f(0, "Stop after this many optimizer steps; 0 = use epochs.", label="Max steps", advanced=True, bounds=(0, MAX_STEPS), sentence=f"max steps must be 0 (use epochs) or a positive number up to {MAX_STEPS:,}")
    per_device_train_batch_size: int = _f(4, "Sequences per step on each device.", label="Batch size", bounds=(1, 4096), sentence="batch size must be between 1 and 4096",
                                          details="Sequences per step on each device. A larger batch gives "
                                                  "smoother gradients and takes more activation memory (see "
                                                  "the memory estimate); the effective batch is batch size x "
                                                  "gradient accumulation x GPUs.", estimate=True)
    gradient_accumulation_steps: int = _f(1, "Steps summed before each update: effective batch = batch size x this.", label="Gradient accumulation", advanced=True, bounds=(1, 4096), sentence="gradient accumulation must be between 1 and 4096",
                                          details="Steps whose gradients are summed before each update "
                                                  "(effective batch = batch size x this).", estimate=True)
    max_length: int = _f(512, "Longest row in tokens; longer ones are truncated.", label="Max sequence length", bounds=(32, 131072), sentence="max sequence length must be between 32 (room for the chat template) and 131072 tokens",
                         details="Longest sequence in tokens; longer rows are truncated (or dropped: "
                                 "Over-long rows). Activation memory grows with it; the Datasets tab's "
                                 "preview shows your rows' token lengths against it.", estimate=True)
    system_prompt_mode: str = _f("auto", "auto leaves the template's default out for identity data.", ("auto", "keep", "replace", "omit"), label="System prompt",
                                 details="The system prompt of rows without their own system turn: keep (the "
                                         "model's chat template adds its default one, e.g. SmolLM2's 'You "
                                         "are a helpful AI assistant named SmolLM, trained by Hugging "
                                         "Face'), replace (with the system prompt below), omit (an empty "
                                         "system turn, so the default is not written) or auto (omit when the "
                                         "replies teach their own name or maker, as identity data does, else "
                                         "keep; the run's stored settings then show the choice made). A chat "
                                         "template without a system role (Gemma) gets the system text at the "
                                         "start of the first user turn. Chat asks the trained adapter the "
                                         "same way.")
    system_prompt: str = _f("", "With 'replace': the system prompt written into rows without their own.", label="Replacement system prompt",
                            details="With system prompt 'replace': the system prompt written into every row "
                                    "without a system turn.")
    overlong: str = _f("truncate", "Conversations over max length: truncate (keep the start) or drop them.", ("truncate", "drop"), label="Over-long rows", advanced=True,
                       details="Conversations longer than max length: truncate (keep the start; the trained "
                               "tokens past the end are lost) or drop those rows. Plain text is packed into "
                               "blocks and never cut.")
    assistant_only_loss: bool = _f(True, "Train on assistant replies only; prompts and system text are masked.", label="Assistant-only loss", advanced=True,
                                   details="Train only on assistant replies (prompts and system text are "
                                           "masked). Ignored for plain text.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass: less memory, about 30% slower.", label="Gradient checkpointing", advanced=True, estimate=True)
    fit_check: bool = _f(False, "Measure memory before training and pick a batch size that fits.", label="Fit check", advanced=True,
                         details="Before training, take two forward and backward passes on the longest rows "
                                 "at the planned batch, measure peak memory and tokens/s, and choose the "
                                 "batch size, gradient accumulation (the same effective batch) and gradient "
                                 "checkpointing that fit the memory budget with a 15% margin.")
    precision: str = _f("auto", "Training precision of the trainable path: auto (bf16 where supported), bf16, fp16, fp32.", ("auto", "bf16", "fp16", "fp32"), label="Precision", advanced=True, estimate=True)
    padding_free: str = _f("auto", "Batch rows without padding; auto falls back to length-grouped batches when long.", ("auto", "on", "off"), label="Padding-free batching", advanced=True,
                           details="Batch sequences without padding (per-sequence attention, no "
                                   "cross-contamination): auto (on unless batch x max length is over 8192 "
                                   "tokens, then length-grouped batches), on, off (padded random batches).", estimate=True)
    dequant_cache: str = _f("auto", "4-bit speed lever: dequantise frozen weights once, at their 16/32-bit memory.", ("auto", "on", "off"), label="Dequantised-weight cache", advanced=True,
                            details="Speed lever for 4-bit: dequantise each frozen weight once instead of "
                                    "every step (same numbers, but the frozen weights then also take their "
                                    "16/32-bit memory). auto = on a CPU without AVX-512 (where bitsandbytes "
                                    "has no fast 4-bit kernels) when it fits easily, and there the frozen "
                                    "base is then loaded at full precision instead of quantised and "
                                    "dequantised again (the same memory, no quantisation pass); on = the "
                                    "cache of the 4-bit weights on any device, a GPU with memory to spare "
                                    "included.", estimate=True)
    chunked_loss: str = _f("auto", "Saves memory on large vocabularies; auto: on a GPU, off on CPU.", ("auto", "on", "off"), label="Chunked loss", advanced=True,
                           details="TRL's fused, chunked lm_head + log-softmax: the full logits never exist, "
                                   "which saves memory on large vocabularies. auto = on a GPU; off on CPU, "
                                   "where the plain fp32 cross-entropy over the logits is faster.")
    attn_implementation: str = _f("auto", "Attention kernel; auto = sdpa. flash_attention_2 needs the flash-attn package.", ("auto", "sdpa", "eager", "flex_attention", "flash_attention_2"), label="Attention kernel", advanced=True,
                                  details="Attention kernel (transformers' attn_implementation): auto "
                                          "(sdpa), sdpa, eager, flex_attention, or flash_attention_2 (needs "
                                          "the flash-attn package). With padding-free batches, flex and "
                                          "flash attention find the packed rows from their position ids "
                                          "instead of a dense block mask.")
    torch_compile: bool = _f(False, "Faster steps after a minutes-long compile; pays off only on long runs.", label="torch.compile", advanced=True,
                             details="Compile the model with torch.compile (transformers' torch_compile): "
                                     "faster steps once compiled (on a 2-core CPU x1.2 in bf16, x1.4 in "
                                     "fp32), but the first two steps compile for about 5 minutes there, so "
                                     "it pays off only on runs of several hundred steps.")
    weight_decay: float = _f(0.0, "AdamW weight decay on the adapter weights.", label="Weight decay", advanced=True, bounds=(0, 10), sentence="weight decay must be between 0 and 10")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm; 0 disables clipping.", label="Max grad norm", advanced=True, bounds=(0, 1e6), sentence="max grad norm must be 0 (no clipping) or a positive number up to 1,000,000")

    # evaluation, checkpoints, reproducibility
    eval_split: float = _f(0.1, "Fraction of the training rows held out for evaluation (0 = none), seeded.", label="Eval split", advanced=True, bounds=(0, 0.9), sentence="eval split must be between 0 and 0.9")
    eval_steps: int = _f(0, "Evaluate every N steps; 0 = automatic (1 to 5 evaluations a run).", label="Eval every", advanced=True, bounds=(0, MAX_STEPS),
                         details="Evaluate every N steps; 0 = automatic: 1 to 5 evaluations, as many as fit "
                                 "in about a twentieth of the run (at most 2 in a run under 50 steps).")
    save_steps: int = _f(0, "Write a checkpoint every N steps; 0 = automatic (2 to 5 a run).", label="Checkpoint every", advanced=True, bounds=(0, MAX_STEPS),
                         details="Write a resumable checkpoint every N steps; 0 = automatic: 2 to 5 per run, "
                                 "the last at the end (a run under 50 steps: midway and at the end). Golden "
                                 "prompts are then answered at no more than 3 of them (none in a run under "
                                 "100 steps, and only while those rounds cost at most a twentieth of the "
                                 "training time) besides the start and the end.")
    early_stopping_patience: int = _f(0, "Stop when eval loss has not improved for this many evaluations; 0 = off.", label="Early-stopping patience", advanced=True, bounds=(0, 10**6))
    seed: int = _f(42, "Random seed for the split, shuffling and adapter initialisation.", label="Seed", advanced=True, bounds=(0, 2**32 - 1))
    logging_steps: int = _f(1, "Record a metric point every N steps.", label="Log every", advanced=True, bounds=(1, MAX_STEPS), sentence="log every must be at least 1 step and at most 10,000,000")
    report_to: str = _f("none", "Also send metrics, settings and adapter to mlflow, wandb or trackio.", TRACKERS, label="Experiment tracker", advanced=True,
                        details="Experiment tracker that also receives the metrics, the settings and the "
                                "adapter: mlflow (the server in MLFLOW_TRACKING_URI), wandb (online, or "
                                "offline with WANDB_MODE=offline) or trackio (local). TensorBoard event "
                                "files are always written to the run's tensorboard folder. An unreachable "
                                "tracker only adds a warning to the run's log.")

    # preference and reinforcement methods (the form shows each field only for the methods in studio/method_info.py
    # that read it)
    beta: float = _f(0.1, "DPO temperature: higher keeps the policy closer to the base (adapter disabled).", label="Beta", bounds=(0, 100), exclusive=True, sentence="DPO beta must be greater than 0 and less than 100",
                     details="Each preference or reinforcement method reads beta its own way; the form shows the "
                             "chosen method's line. DPO and KTO: the temperature of the loss, how far the policy "
                             "may move from the reference, the base with the adapter disabled (higher keeps it "
                             "closer). ORPO: λ, the weight of the odds-ratio term added to the SFT loss on the "
                             "chosen replies (no reference model). GRPO: the KL coefficient against the "
                             "reference (the base, adapter disabled); TRL skips the reference pass at 0, which "
                             "this field does not accept. SimPO: the scale of the length-normalised reward margin "
                             "between the chosen and the rejected reply (no reference model); the SimPO paper "
                             "uses 2 to 2.5.")
    desirable_weight: float = _f(1.0, "KTO: loss weight of good replies; raise it when they are rarer.", label="Desirable weight", bounds=(0, 100), sentence="desirable weight must be between 0 and 100",
                                 details="KTO: weight of the loss on replies labelled good; raise it when "
                                         "they are rarer than the bad ones.")
    undesirable_weight: float = _f(1.0, "KTO: loss weight of bad replies; raise it when they are rarer.", label="Undesirable weight", bounds=(0, 100), sentence="undesirable weight must be between 0 and 100",
                                   details="KTO: weight of the loss on replies labelled bad; raise it when "
                                           "they are rarer than the good ones.")
    num_generations: int = _f(4, "GRPO: completions sampled per prompt and scored against each other.", label="Generations per prompt", bounds=(2, 256), sentence="generations per prompt must be between 2 and 256",
                              details="GRPO: completions sampled per prompt and scored against each other. "
                                      "Batch size x gradient accumulation must be a multiple of it.")
    max_completion_length: int = _f(128, "GRPO: longest sampled completion, in tokens.", label="Max completion length", bounds=(1, 32768), sentence="max completion length must be between 1 and 32768 tokens", estimate=True)
    reward_answer: str = _f("none", "GRPO: reward 1 when the final answer equals the dataset's 'answer' column.", ANSWER_EXTRACTORS, label="Answer reward",
                            details="GRPO reward: 1 when the completion's final answer equals the dataset's "
                                    "'answer' column. The final answer is the last number, the text inside "
                                    "<answer></answer> tags, or the \\boxed{} expression; none = no answer "
                                    "reward.")
    reward_answer_weight: float = _f(1.0, "GRPO: weight of the answer reward.", label="Answer weight", bounds=(0, 100), sentence="answer weight must be between 0 and 100")
    reward_format_regex: str = _f("", "GRPO: reward 1 when the completion matches this regular expression; empty = off.", label="Format reward pattern",
                                  details="GRPO reward: 1 when the completion matches this regular "
                                          "expression (Python syntax, searched anywhere), e.g. "
                                          "<answer>.*</answer>; empty = no format reward.")
    reward_format_weight: float = _f(1.0, "GRPO: weight of the format reward.", label="Format weight", bounds=(0, 100), sentence="format weight must be between 0 and 100")
    reward_length_target: int = _f(0, "GRPO: reward 1 at this completion length in tokens; 0 = off.", label="Length target", bounds=(0, 32768), sentence="length target must be between 0 (off) and 32768 tokens",
                                   details="GRPO reward: 1 at this completion length in tokens, falling to 0 "
                                           "at twice or zero the length; 0 = no length reward.")
    reward_length_weight: float = _f(1.0, "GRPO: weight of the length reward.", label="Length weight", bounds=(0, 100), sentence="length weight must be between 0 and 100")

    # behaviour checks and resources
    golden_prompts: list = _f([], "Prompts answered at the start, at checkpoints and at the end.", label="Golden prompts", advanced=True,
                              details=f"Prompts answered by the base at the start, by the adapter at checkpoints (every one when checkpoint every is set; with the automatic cadence at most 3, none in a run under 100 steps, and only while they cost at most a twentieth of the training time) and at the end, to watch behaviour change. At most {GOLDEN_PROMPTS}, each at most {GOLDEN_PROMPT_CHARS:,} characters, cut to max length when answered; Cancel stops a round between its tokens.")
    general_replay: float = _f(0.25, "SFT: share of extra rows of the base's own answers, to keep general skills.", label="General replay (share of rows)", advanced=True, bounds=(0, 1), sentence="general replay must be a share between 0 and 1",
                               details="SFT on chat data: before training, the base model answers general "
                                       "instructions itself (studio/replay, none of them a probe question), "
                                       "and this share of your row count of those answers (at least as many "
                                       "rows as yours up to 40, at most 99) is trained on beside your rows, "
                                       "so a small dataset teaches what it teaches without costing the "
                                       "base's general skills. Automatic epochs count these rows too. 0 = "
                                       "off.")
    forgetting_check: bool = _env_default("STUDIO_FORGETTING_CHECK", "SFT: after the run, compare base and adapter on a general-skills probe.", label="Forgetting check", advanced=True,
                                details="SFT: after the run is marked completed, the worker answers the "
                                        "200-question general-skills probe (facts, arithmetic, instructions, "
                                        "reading, refusal) with the base (cached once per base model) and "
                                        "with the adapter, and flags the run when the adapter scores more "
                                        "than the forgetting threshold below its base.")
    forgetting_threshold: float = _f(5.0, "Flag the run when the adapter scores this many points below its base.", label="Forgetting threshold (points)", advanced=True, bounds=(0, 100), sentence="the forgetting threshold must be between 0 and 100 points",
                                     details="Flag the run when the adapter answers this many percentage "
                                             "points fewer of the probe's questions correctly than its base.")
    best_checkpoint: str = _f("eval_loss", "Which checkpoint chat and export use; by default the lowest eval loss.", BEST_CHECKPOINT_RULES, label="Best checkpoint by", advanced=True,
                              details="Which checkpoint chat, export and the adapter zip use: eval_loss "
                                      "(lowest eval loss), golden_rouge (highest ROUGE-L of the golden "
                                      "prompts' replies against their references), probe (most "
                                      "general-skills probe answers right, where the probe ran on "
                                      "checkpoints) or last (the final adapter). Without the chosen metric "
                                      "the final adapter is used.")
    num_gpus: int = _f(1, "GPUs for this job; more than one runs it with accelerate launch (DDP).", label="GPUs", advanced=True, bounds=(1, 64), sentence="a job needs between 1 and 64 devices")

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
        unknown = [key for key in data if key not in known]
        for key in unknown[:UNKNOWN_KEYS_SHOWN]:
            close = difflib.get_close_matches(str(key)[:QUOTE_CHARS], list(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            errors[_clip(str(key), QUOTE_CHARS // 2)] = f"unknown key {quote(str(key))}{hint}"
        if len(unknown) > UNKNOWN_KEYS_SHOWN:
            errors["config"] = f"{len(unknown) - UNKNOWN_KEYS_SHOWN} more unknown keys"
        for key, value in data.items():
            if key not in known:
                continue
            try:
                values[key] = _coerce(known[key], value)
            except NotFinite:
                errors[key] = f"{key} must be a finite number"
            except (TypeError, ValueError, OverflowError):
                errors[key] = f"{key} must be {_type_word(known[key])}, got {quote(value)}"
        if errors:
            raise SpecError(errors)
        return cls(**values)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "JobSpec":
        """Parse a job file: at most MAX_SPEC_BYTES, plain YAML without aliases (a few aliases can expand
        into millions of values), nested no deeper than a mapping of lists."""
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_SPEC_BYTES:
            raise SpecError({"config": f"a job file may be at most {MAX_SPEC_BYTES // 1024} KB; this one is "
                                       f"{math.ceil(size / 1024):,} KB"})
        try:
            data = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader that also refuses aliases
        except SpecError:
            raise
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SpecError({"config": f"the file is not valid YAML: {_clip(first)}"}) from None
        except ValueError as exc:  # a number too long to read, a date that does not exist
            reason = _clip(str(exc).split(";")[0])
            raise SpecError({"config": f"the file has a value that cannot be read: {reason}"}) from None
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
        if self.padding_free == "off" or not self.adapter().packs:
            return "random"
        return "padding_free" if self.per_device_train_batch_size * self.max_length <= PACKED_ROW_LIMIT else "grouped"

    def adapter(self):
        """The adapter type's description (studio.adapter_types); LoRA for a value validate refuses."""
        return ADAPTER_TYPES.get(self.peft_type, ADAPTER_TYPES["lora"])

    def resolved_precision(self, native_bf16: bool) -> str:
        """What precision "auto" becomes on a device (bf16 only where it is computed natively)."""
        if self.precision != "auto":
            return self.precision
        return "bf16" if native_bf16 else "fp32"

    def resolved_epochs(self, n_train: int) -> float:
        """Epochs a run over ``n_train`` rows makes: the spec's, or with 0 about AUTO_ROW_PASSES rows' worth
        (small identity-style sets need several passes to learn; large ones one or two)."""
        if self.num_train_epochs > 0:
            return self.num_train_epochs
        least = 1 if n_train >= AUTO_ONE_EPOCH_ROWS else AUTO_MIN_EPOCHS
        return float(max(least, min(AUTO_MAX_EPOCHS, round(AUTO_ROW_PASSES / max(1, n_train)))))

    def resolved_system_prompt_mode(self, carries_identity: bool) -> str:
        """What system_prompt_mode "auto" becomes for rows that do (or do not) teach their own name or maker."""
        if self.system_prompt_mode != "auto":
            return self.system_prompt_mode
        return "omit" if carries_identity else "keep"

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
                 quantization_available: bool | None = None,
                 worker_devices: list[str] | None = None) -> dict[str, str]:
        """Field -> one human sentence. Empty when the spec can be queued.

        ``linear_names``: the chosen model's linear layer names (target modules are checked against them).
        ``dataset_kind``: "preference", "chat", "text", ... of the chosen dataset.
        ``quantization_available``: whether bitsandbytes can run on the worker's device.
        ``worker_devices``: "cuda" / "cpu" of each live worker (any of them may take the job).
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
                    "precision", "padding_free", "dequant_cache", "attn_implementation", "chunked_loss",
                    "peft_type", "init_lora_weights", "prompt_tuning_init", "optim", "reward_answer", "report_to",
                    "system_prompt_mode"):
            choices = _meta(key)["choices"]
            if getattr(self, key) not in choices:
                e[key] = f"{key} must be one of {', '.join(choices)}"
        if self.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            e["attn_implementation"] = ("flash_attention_2 needs the flash-attn package, which is not installed here; "
                                        "choose sdpa or flex_attention")
        if self.system_prompt_mode == "replace" and not self.system_prompt.strip():
            e["system_prompt"] = "system prompt 'replace' needs the replacement text; write it, or choose keep or omit"
        if problem := golden_prompts_problem(self.golden_prompts):
            e["golden_prompts"] = problem
        if self.load_in_4bit and self.load_in_8bit:
            e["load_in_8bit"] = "choose 4-bit or 8-bit, not both"
        if (self.load_in_4bit or self.load_in_8bit) and quantization_available is False:
            e["load_in_4bit" if self.load_in_4bit else "load_in_8bit"] = (
                "bitsandbytes cannot run on the worker's device; turn quantisation off")
        e.update(self._adapter_errors())
        if self.optim in OPTIM_CHOICES:
            for device in sorted(set(worker_devices or ())):
                if problem := optimizer_problem(self.optim, device):
                    e["optim"] = problem
        targets_used = "target_modules" in self.adapter().fields  # prompt / prefix tuning touch no layer
        if targets_used and not self.target_modules:
            e["target_modules"] = "choose at least one target module"
        elif targets_used and linear_names is not None:
            names = set(linear_names)
            unknown = [t for t in self.target_modules if t not in TARGET_PRESETS and t not in names]
            if unknown:
                listed = ", ".join(map(quote, unknown[:5]))
                if len(listed) > QUOTE_CHARS:
                    listed = f"{_clip(listed, QUOTE_CHARS)} ({len(unknown)} names)"
                e["target_modules"] = (f"the model has no linear layer named {listed}; "
                                       f"it has {', '.join(sorted(n for n in names if n != 'lm_head'))}")
            elif not self.resolved_target_modules(linear_names):
                e["target_modules"] = "the chosen preset matches no linear layer of this model"
        for f in fields(self):
            if f.metadata["bounds"] is not None and (message := _number_error(f, getattr(self, f.name))):
                e[f.name] = message
        if ("early_stopping_patience" not in e and self.early_stopping_patience and self.eval_split == 0
                and not self.eval_dataset):
            e["early_stopping_patience"] = "early stopping needs evaluation: set an eval split or an eval dataset"
        if "beta" in e and self.method in METHOD_INFO and "beta" in METHOD_INFO[self.method].fields:
            e["beta"] = e["beta"].replace("DPO", METHOD_INFO[self.method].label, 1)
        for key, message in method_errors(self, dataset_kind).items():
            e.setdefault(key, message)
        return e

    def _adapter_errors(self) -> dict[str, str]:
        """What the chosen adapter type cannot do with the rest of the spec."""
        if self.peft_type not in ADAPTER_TYPES:
            return {}
        kind, e = self.adapter(), {}
        if (self.load_in_4bit or self.load_in_8bit) and not kind.four_bit:
            e["peft_type"] = f"{kind.label} cannot train on a quantised base; turn 4-bit and 8-bit off"
        if self.padding_free == "on" and not kind.packs:
            e["padding_free"] = (f"{kind.label} puts its virtual tokens before every sequence, so sequences cannot "
                                 "be packed padding-free; set padding-free batching to auto or off")
        if kind.check:
            e.update(kind.check(self))
        return e

    def check(self, **kwargs) -> None:
        errors = self.validate(**kwargs)
        if errors:
            raise SpecError(errors)


def golden_prompts_problem(prompts) -> str | None:
    """The sentence refusing a run's golden prompts: too many, or one too long (each is answered at the start, at
    checkpoints and at the end, by a worker that holds every other run behind it)."""
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        return f"golden prompts must be a list of texts, got {quote(prompts)}"
    if len(prompts) > GOLDEN_PROMPTS:
        return f"a run may have at most {GOLDEN_PROMPTS} golden prompts; this one has {len(prompts):,}"
    for i, prompt in enumerate(prompts, 1):
        if len(prompt) > GOLDEN_PROMPT_CHARS:
            return (f"golden prompt {i} is {len(prompt):,} characters long; a golden prompt may be at most "
                    f"{GOLDEN_PROMPT_CHARS:,} characters")
    return None


class SpecError(ValueError):
    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" if not v.startswith(k) else v for k, v in errors.items()))


def _meta(name: str) -> dict:
    return next(f.metadata for f in fields(JobSpec) if f.name == name)


def field_help() -> dict[str, dict]:
    """name -> {help (one line), details (the long explanation, or None), label, choices, advanced, bounds, ...,
    default}: what the form renders and studio/field_docs.py writes out."""
    out = {}
    for f in fields(JobSpec):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = {**f.metadata, "default": default}
    return out


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """repr() of a user's value, cut to at most ``limit`` characters, however large or deep the value."""
    short = reprlib.Repr()
    short.maxlevel, short.maxdict, short.maxlist, short.maxtuple, short.maxset = 2, 4, 4, 4, 4
    short.maxstring = short.maxother = short.maxlong = limit
    try:
        text = short.repr(value)
    except ValueError:  # an integer with more digits than Python prints
        return "a number too long to print"
    return _clip(text, limit)


def _clip(text: str, limit: int = 2 * QUOTE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and nesting deeper than a job file needs, before building anything."""

    max_depth = 3  # the mapping, a list in it, a value in the list
    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            where = f"*{_clip(event.anchor, 40)} on line {event.start_mark.line + 1}"
            raise SpecError({"config": f"YAML aliases ({where}) are not allowed in a job file; write the value out"})
        self.depth += 1
        if self.depth > self.max_depth:
            raise SpecError({"config": f"line {self.peek_event().start_mark.line + 1} nests values deeper than a job "
                                       "file allows: it maps field names to values or to lists of values"})
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class NotFinite(ValueError):
    """A number field was given NaN or infinity."""


def _finite(number: float) -> float:
    if not math.isfinite(number):
        raise NotFinite
    return number


def _number_error(f, value) -> str | None:
    """The sentence refusing a number field's value: not a number, not finite, or outside its bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{f.name} must be {_type_word(f)}, got {quote(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{f.name} must be a finite number"
    meta = f.metadata
    lo, hi = meta["bounds"]
    if (lo < value < hi) if meta["exclusive"] else (lo <= value <= hi):
        return None
    between = f"{f.name} must be between {lo:,} and {hi:,}" + (" (exclusive)" if meta["exclusive"] else "")
    return f"{meta['sentence'] or between}, got {quote(value)}"


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
        if isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            raise NotFinite
        if isinstance(value, float) and not _finite(value).is_integer():
            raise ValueError
        return int(value)
    if t == "float":
        if isinstance(value, bool):
            raise ValueError
        return _finite(float(value))
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
