"""Padding-free batching without cross-contamination.

The sequences of a batch are concatenated into one row; ``position_ids`` restart at 0 for each, and
a block-diagonal causal 4-D attention mask keeps every token attending only to earlier tokens of its
own sequence (SDPA and eager attention honour an explicit 4-D mask; flex and flash attention instead
find the rows from the position ids). The first token of each sequence is never a label, so no sequence learns
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
    """Collates pre-tokenised examples into one unpadded row.

    Labels come from ``labels`` when given, else from ``input_ids`` with the tokens outside
    ``assistant_masks`` / ``completion_mask`` (TRL's names) set to -100, as TRL's own collator does.
    ``block_mask=False`` leaves the mask out: position ids alone then separate the rows, which transformers
    honours only with ``use_cache=False`` (TRL's training forward sets it; with the model's default cache
    the rows silently attend to each other, see tests/test_speed_levers.py).
    """

    block_mask: bool = True

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        ids, labels, positions, lengths = [], [], [], []
        for ex in examples:
            seq = list(ex["input_ids"])
            if "labels" in ex:
                lab = list(ex["labels"])
            else:
                keep = ex.get("assistant_masks", ex.get("completion_mask"))
                lab = [t if keep is None or keep[i] else -100 for i, t in enumerate(seq)]
            lab[0] = -100  # never predict a sequence's first token from the previous sequence
            ids += seq
            labels += lab
            positions += range(len(seq))
            lengths.append(len(seq))
        batch = {
            "input_ids": torch.tensor([ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]),
        }
        if self.block_mask:
            batch["attention_mask"] = block_causal_mask(lengths)
        return batch


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Batches of similar length, in random order: little padding without a length curriculum.

    Each epoch: shuffle (seeded), cut into mega-batches of ``group`` batches, sort each mega-batch by
    length into batches, then shuffle the order of the full batches (the one short batch goes last, so
    the DataLoader's own batching keeps the boundaries). Unlike transformers' sampler, small datasets are
    grouped too (its mega-batches shrink to one batch below 16 batches) and the batches are not served
    longest-first.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group: int = 64):
        self.lengths, self.batch_size, self.seed, self.group, self.epoch = list(lengths), batch_size, seed, group, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.batch_size * self.group
        full, short = [], []
        for i in range(0, len(perm), size):
            chunk = sorted(perm[i:i + size], key=lambda j: -self.lengths[j])
            for k in range(0, len(chunk), self.batch_size):
                (full if len(chunk[k:k + self.batch_size]) == self.batch_size else short).append(chunk[k:k + self.batch_size])
        order = torch.randperm(len(full), generator=g).tolist()
        return [full[k] for k in order] + short

    def __iter__(self):
        return iter([i for b in self.batches() for i in b])
