"""DPO: TRL's DPOTrainer on preference pairs; the reference is the base with the adapter disabled."""
from __future__ import annotations

from .base import preference_method

METHOD = preference_method("dpo", "trl:DPOConfig", "trl:DPOTrainer")
