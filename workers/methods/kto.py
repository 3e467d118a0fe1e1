"""KTO: TRL's KTOTrainer on unpaired replies labelled desirable or undesirable; the reference is the base
with the adapter disabled, the KL term comes from mismatched prompt / reply pairs of the same batch."""
from __future__ import annotations

from .base import preference_method


def kto_args(spec) -> dict:
    return {"desirable_weight": spec.desirable_weight, "undesirable_weight": spec.undesirable_weight}


METHOD = preference_method("kto", "trl:KTOConfig", "trl:KTOTrainer", kto_args)
