"""How a reply is generated: the settings the Chat tab, the CLI, the inference client and server share."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0          # 0 = greedy (deterministic, the fairest comparison)
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    seed: int = 0

    def generate_kwargs(self) -> dict:
        kw = {"max_new_tokens": int(self.max_new_tokens), "repetition_penalty": float(self.repetition_penalty)}
        if self.temperature > 0:
            kw.update(do_sample=True, temperature=float(self.temperature), top_p=float(self.top_p),
                      top_k=int(self.top_k))
        else:
            kw.update(do_sample=False)
        return kw
