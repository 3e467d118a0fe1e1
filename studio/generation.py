"""How a reply is generated: the settings the Chat tab, the CLI, the inference client and server share.

Pure data; the generating itself is the workers' (workers/inference/chat_engine.py, workers/inference/replies.py)."""
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
    min_new_tokens: int = 0           # vLLM's min_tokens: the end of turn is held back until this many

    def generate_kwargs(self) -> dict:
        kw = {"max_new_tokens": int(self.max_new_tokens), "repetition_penalty": float(self.repetition_penalty)}
        if self.min_new_tokens > 0:
            kw["min_new_tokens"] = int(self.min_new_tokens)
        if self.temperature > 0:
            kw.update(do_sample=True, temperature=float(self.temperature), top_p=float(self.top_p),
                      top_k=int(self.top_k))
        else:
            kw.update(do_sample=False)
        return kw

