"""ORPO: TRL's ORPOTrainer (trl.experimental) on preference pairs: the SFT loss on the chosen reply plus
an odds-ratio term against the rejected one, with no reference model."""
from __future__ import annotations

from .base import preference_method

METHOD = preference_method("orpo", "trl.experimental.orpo:ORPOConfig", "trl.experimental.orpo:ORPOTrainer")
