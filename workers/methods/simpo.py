"""SimPO: TRL's CPOTrainer (trl.experimental) with the SimPO loss on preference pairs: the margin between the
length-normalised log-probabilities of the chosen and the rejected reply, scaled by beta, less a target margin
(TRL's simpo_gamma), with no reference model; cpo_alpha 0 leaves out CPO's SFT term, as SimPO does."""
from __future__ import annotations

from .base import preference_method


def simpo_args(spec) -> dict:
    return {"loss_type": "simpo", "cpo_alpha": 0.0}


METHOD = preference_method("simpo", "trl.experimental.cpo:CPOConfig", "trl.experimental.cpo:CPOTrainer", simpo_args)
