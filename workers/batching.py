"""Padding-free batching without cross-contamination.

The sequences of a batch are concatenated into one row; ``position_ids`` restart at 0 for each, and
a block-diagonal causal 4-D attention mask keeps every token attending only to earlier tokens of its
own sequence (SDPA and eager attention honour an explicit 4-D mask; position ids alone do not
separate sequences there). The first token of each sequence is never a label, so no sequence learns
to predict across a boundary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def block_causal_mask(lengths: list[int]) -> torch.Tensor:
    """(1, 1, L, L) bool mask: True where a query may attend to a key."""
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    total = int(seg.numel())
    causal = torch.ones(total, total, dtype=torch.bool).tril_()
    return (causal & (seg[:, None] == seg[None, :]))[None, None]


@dataclass
class PaddingFreeCollator:
    """Collates pre-tokenised examples ({"input_ids", "labels"}) into one unpadded row."""

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        ids, labels, positions, lengths = [], [], [], []
        for ex in examples:
            seq = list(ex["input_ids"])
            lab = list(ex.get("labels", seq))
            lab[0] = -100  # never predict a sequence's first token from the previous sequence
            ids += seq
            labels += lab
            positions += range(len(seq))
            lengths.append(len(seq))
        return {
            "input_ids": torch.tensor([ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]),
            "attention_mask": block_causal_mask(lengths),
        }
