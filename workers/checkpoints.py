"""Where a job's checkpoints live and which of them are complete. No torch here."""
from __future__ import annotations

from pathlib import Path

CHECKPOINTS = "checkpoints"                        # in the job folder; = studio.adapters.CHECKPOINTS
COMPLETE_MARKER = "studio-checkpoint-complete"     # written into a checkpoint once it is whole


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """Newest checkpoint the studio finished writing (a torn one, without the marker, is skipped)."""
    ckpts = []
    for p in (output_dir / CHECKPOINTS).glob("checkpoint-*"):
        try:
            step = int(p.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if (p / COMPLETE_MARKER).exists() and (p / "trainer_state.json").exists():
            ckpts.append((step, p))
    return max(ckpts)[1] if ckpts else None
