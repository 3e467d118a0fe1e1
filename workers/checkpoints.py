"""Where a job's checkpoints live and which of them are complete. No torch here."""
from __future__ import annotations

from pathlib import Path

CHECKPOINTS = "checkpoints"                        # in the job folder; = studio.adapter_library.CHECKPOINTS
COMPLETE_MARKER = "studio-checkpoint-complete"     # written into a checkpoint once it is whole


def complete_checkpoints(output_dir: Path, holding: str = "adapter_model.safetensors") -> dict[int, Path]:
    """step -> folder of every checkpoint the studio finished writing (a torn one, without the marker, is
    skipped) that holds ``holding``: the adapter, to be used; the trainer's state, to be resumed from."""
    out = {}
    for p in (output_dir / CHECKPOINTS).glob("checkpoint-*"):
        try:
            step = int(p.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if (p / COMPLETE_MARKER).exists() and (p / holding).exists():
            out[step] = p
    return out


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """Newest checkpoint a run can resume from."""
    ckpts = complete_checkpoints(output_dir, holding="trainer_state.json")
    return ckpts[max(ckpts)] if ckpts else None


def torn_checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoint folders the studio never finished writing (no marker: never used), oldest first."""
    def step(p: Path) -> int:
        tail = p.name.split("-", 1)[1]
        return int(tail) if tail.isdigit() else -1

    folders = (output_dir / CHECKPOINTS).glob("checkpoint-*")
    return sorted((p for p in folders if p.is_dir() and not (p / COMPLETE_MARKER).exists()), key=step)


# ---- the best checkpoint ---------------------------------------------------------------------------

RULES = ("eval_loss", "golden_rouge", "probe", "last")   # = studio.spec.BEST_CHECKPOINT_RULES
LOWER_IS_BETTER = {"eval_loss"}
RULE_WORDS = {"eval_loss": "lowest eval loss", "golden_rouge": "highest golden-prompt ROUGE-L",
              "probe": "most probe answers right"}


def golden_references(eval_rows: list[dict]) -> dict[str, str]:
    """Held-out prompt -> its reference reply (the row's last assistant turn), for scoring golden answers."""
    from studio.golden_prompts import prompt_of

    refs: dict[str, str] = {}
    for row in eval_rows:
        prompt = prompt_of(row)
        replies = [m.get("content") for m in row.get("messages") or [] if m.get("role") == "assistant"]
        if prompt and replies and isinstance(replies[-1], str) and prompt not in refs:
            refs[prompt] = replies[-1]
    return refs


def _golden_rouge(output_dir: Path, step: int, references: dict[str, str]) -> float | None:
    """Mean ROUGE-L F1 of the golden replies written at ``step`` against their references (None: none to score)."""
    import json

    from studio.batch_evaluation import rouge_l
    from studio.golden_prompts import GOLDEN_DIR

    try:
        data = json.loads((output_dir / GOLDEN_DIR / f"step-{step}.json").read_text())
        pairs = [(r["reply"], references[r["prompt"]]) for r in data["replies"] if r.get("prompt") in references]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return round(sum(rouge_l(reply, ref) for reply, ref in pairs) / len(pairs), 4) if pairs else None


def _probe_correct(output_dir: Path, step: int, final: bool) -> int | None:
    import json

    from studio.probe import PROBE_FOLDER

    folder = output_dir / PROBE_FOLDER
    path = folder / "general.json" if final else folder / f"checkpoint-{step}" / "general.json"
    try:
        return int(json.loads(path.read_text())["adapter_correct"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoint_scores(output_dir: Path, log_history: list[dict], final_step: int,
                      references: dict[str, str] | None = None) -> list[dict]:
    """One row per complete checkpoint and the final adapter: step, eval loss measured at that step, golden
    ROUGE-L against references, probe answers right (where the probe ran on it), and whether it is the final."""
    evals = {h["step"]: h["eval_loss"] for h in log_history if "eval_loss" in h and "step" in h}
    steps = set(complete_checkpoints(output_dir)) | {final_step}
    rows = []
    for step in sorted(steps):
        final = step == final_step
        rows.append({"step": step, "final": final, "eval_loss": evals.get(step),
                     "golden_rouge": _golden_rouge(output_dir, step, references or {}),
                     "probe": _probe_correct(output_dir, step, final)})
    return rows


def pick_best(rows: list[dict], rule: str) -> dict:
    """The checkpoint ``rule`` selects among ``rows`` (``checkpoint_scores``), with the sentence that says so.
    Without any value for the rule's metric, the final adapter. Ties go to the later step."""
    final = next((r for r in rows if r["final"]), rows[-1])
    scored = [r for r in rows if rule in RULE_WORDS and r.get(rule) is not None]
    if rule == "last" or not scored:
        why = "the last step" if rule == "last" else f"no checkpoint was scored by {rule}"
        return {"step": final["step"], "final": True, "rule": rule, "value": None,
                "label": f"the final adapter (step {final['step']}; {why})"}
    sign = 1 if rule in LOWER_IS_BETTER else -1
    best = min(scored, key=lambda r: (sign * r[rule], -r["step"]))
    value = best[rule]
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    where = f"the final adapter (step {best['step']}" if best["final"] else f"checkpoint {best['step']} ("
    return {"step": best["step"], "final": best["final"], "rule": rule, "value": value,
            "label": f"{where}{', ' if best['final'] else ''}{RULE_WORDS[rule]} {shown})"}
