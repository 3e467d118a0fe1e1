"""Training methods, the torch-free half: what each method trains on, which spec fields it reads, what
it reports and what it adds to the memory estimate.

The spec's validation, the Train form, the memory estimate and the Runs chart read these records; the
worker half (TRL config and trainer) of each method lives in ``workers/methods/``. A new method is one
``MethodInfo`` here (registered in ``METHOD_INFO``) and one module there (registered in
``workers.methods.TRAINERS``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class MethodInfo:
    name: str
    label: str
    kinds: tuple[str, ...]                 # dataset kinds it trains on
    needs: str                             # the sentence that refuses a dataset of another kind
    fields: tuple[str, ...] = ()           # spec fields only some methods read (the form shows these)
    help: dict[str, str] = field(default_factory=dict)   # per-method help of a shared field (e.g. beta)
    metrics: tuple[str, ...] = ()          # logged keys beyond loss that the Runs chart draws
    sequences_per_row: int = 1             # sequences of one row that keep activations for backward
    generates: bool = False                # samples completions (after the prompt) before each step
    check: Callable | None = None          # spec -> {field: sentence}: the method's own rules


def _kto_check(spec) -> dict[str, str]:
    if spec.per_device_train_batch_size < 2:
        return {"per_device_train_batch_size": "KTO needs a batch size of at least 2: it estimates its KL term "
                                               "from the other rows of the batch"}
    return {}


def _grpo_check(spec) -> dict[str, str]:
    from .rewards import reward_errors

    e = reward_errors(spec)
    group = spec.per_device_train_batch_size * spec.gradient_accumulation_steps
    if group % spec.num_generations:
        e["num_generations"] = (f"batch size x gradient accumulation ({group}) must be a multiple of the number of "
                                f"generations ({spec.num_generations}): every prompt's completions are scored together")
    return e


BETA = "beta"
SFT = MethodInfo(
    "sft", "SFT", ("chat", "text", "unpaired_preference"),
    "SFT needs conversations or text (the desirable replies of unpaired preference data also work)",
    fields=("assistant_only_loss", "overlong", "padding_free", "chunked_loss", "general_replay", "forgetting_check",
            "forgetting_threshold"),
    metrics=())
DPO = MethodInfo(
    "dpo", "DPO", ("preference",), "DPO needs a preference dataset (prompt / chosen / rejected)",
    fields=(BETA,),
    help={BETA: "DPO temperature: higher keeps the policy closer to the base (adapter disabled)."},
    metrics=("rewards/margins", "rewards/chosen", "rewards/rejected"), sequences_per_row=2)
KTO = MethodInfo(
    "kto", "KTO", ("unpaired_preference",),
    "KTO needs an unpaired preference dataset (prompt / completion / true-or-false label)",
    fields=(BETA, "desirable_weight", "undesirable_weight"),
    help={BETA: "KTO temperature: higher keeps the policy closer to the base (adapter disabled)."},
    metrics=("rewards/margins", "rewards/chosen", "rewards/rejected", "kl"), check=_kto_check)
ORPO = MethodInfo(
    "orpo", "ORPO", ("preference",), "ORPO needs a preference dataset (prompt / chosen / rejected)",
    fields=(BETA,),
    help={BETA: "ORPO's λ: weight of the odds-ratio term added to the SFT loss."},
    metrics=("log_odds_chosen", "logps/rejected", "nll_loss"), sequences_per_row=2)
GRPO = MethodInfo(
    "grpo", "GRPO", ("prompt_only",),
    "GRPO needs a prompt-only dataset (prompt, optionally a reference answer)",
    fields=(BETA, "num_generations", "max_completion_length", "reward_answer",
            "reward_answer_weight", "reward_format_regex", "reward_format_weight", "reward_length_target",
            "reward_length_weight"),
    help={BETA: "GRPO's KL coefficient: how closely the policy stays to the base."},
    metrics=("reward", "reward_std", "kl", "completions/mean_length"), generates=True, check=_grpo_check)
SIMPO = MethodInfo(
    "simpo", "SimPO", ("preference",), "SimPO needs a preference dataset (prompt / chosen / rejected)",
    fields=(BETA,),
    help={BETA: "SimPO's β: scale of the reward margin; the SimPO paper uses 2 to 2.5."},
    metrics=("rewards/margins", "rewards/chosen", "rewards/rejected"), sequences_per_row=2)

# the torch-free half of every method, by name (the worker half: workers.methods.TRAINERS)
METHOD_INFO: dict[str, MethodInfo] = {m.name: m for m in (SFT, DPO, KTO, ORPO, GRPO, SIMPO)}

# every field some method reads and another does not: the form shows it only for the methods that list it
METHOD_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(f for m in METHOD_INFO.values() for f in m.fields))
# every metric a method reports, in a stable order: stored with the metric points, drawn by the Runs chart
METHOD_METRICS: tuple[str, ...] = tuple(dict.fromkeys(k for m in METHOD_INFO.values() for k in m.metrics))


def method_errors(spec, dataset_kind: str | None) -> dict[str, str]:
    """The chosen method's refusals: a dataset of a kind it cannot train, and its own rules."""
    info = METHOD_INFO.get(spec.method)
    if info is None:
        return {}
    e = dict(info.check(spec)) if info.check else {}
    if dataset_kind is not None and dataset_kind not in info.kinds:
        fits = [m.label for m in METHOD_INFO.values() if dataset_kind in m.kinds]
        e["method"] = (f"{info.needs}; '{spec.dataset}' holds {dataset_kind.replace('_', ' ')} rows"
                       + (f": choose {' or '.join(fits)} for them" if fits else ""))
    return e


def shown_fields(method: str) -> dict[str, bool]:
    """Field -> whether the form shows it for ``method`` (fields every method reads are not listed)."""
    info = METHOD_INFO.get(method)
    used = set(info.fields) if info else set()
    return {name: name in used for name in METHOD_FIELDS}
