"""LoRA (with DoRA, rsLoRA and peft's initialisations). PiSSA and OLoRA move part of each targeted base weight
into the adapter; ``save`` writes such an adapter converted to a plain LoRA of the original base."""
from __future__ import annotations

from pathlib import Path

from studio.adapter_types import BASE_CHANGING_INITS, PLAIN_CHECKPOINTS
from studio.spec import JobSpec

from .base import WorkerAdapter

INIT = {"default": True, "gaussian": "gaussian", "orthogonal": "orthogonal", "pissa": "pissa", "olora": "olora"}
INITIAL = "adapter-initial"  # beside the run's adapter: the PiSSA / OLoRA adapter as it started


def peft_config(spec: JobSpec, linear_names: list[str], model_dir: Path | None = None):
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=spec.resolved_target_modules(linear_names),
        bias=spec.lora_bias,
        use_dora=spec.use_dora,
        use_rslora=spec.use_rslora,
        init_lora_weights=INIT[spec.init_lora_weights],
        task_type="CAUSAL_LM",
    )


def changes_base(spec: JobSpec) -> bool:
    return spec.peft_type == "lora" and spec.init_lora_weights in BASE_CHANGING_INITS


def prepare_saving(trainer, spec: JobSpec, run_dir: Path) -> None:
    """For PiSSA / OLoRA, before training: keep the adapter as initialised, which ``save`` converts against, and
    write a plain-LoRA copy of every checkpoint beside it (chat and export load that; resuming reads the checkpoint
    as trained). A resumed run initialises the same way from the same base, so the initial adapter is the same."""
    if changes_base(spec):
        save_initial(trainer.model, run_dir)
        trainer.add_callback(plain_checkpoints(spec, run_dir))


def save_initial(model, run_dir: Path) -> None:
    model.save_pretrained(run_dir / INITIAL, safe_serialization=True)


def plain_checkpoints(spec: JobSpec, run_dir: Path):
    """A TrainerCallback writing each checkpoint's adapter converted, as ``<run>/PLAIN_CHECKPOINTS/checkpoint-N``,
    and dropping the copies of checkpoints the trainer has rotated away."""
    import shutil

    from transformers import TrainerCallback

    class PlainCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kwargs):
            if not state.is_world_process_zero or model is None:
                return
            plain = run_dir / PLAIN_CHECKPOINTS
            save(model, spec, plain / f"checkpoint-{state.global_step}", run_dir)
            kept = {p.name for p in Path(args.output_dir).glob("checkpoint-*")}
            for old in plain.glob("checkpoint-*"):
                if old.name not in kept:
                    shutil.rmtree(old, ignore_errors=True)

    return PlainCheckpoints()


def save(model, spec: JobSpec, folder: Path, run_dir: Path) -> None:
    """Write the trained adapter to ``folder``; PiSSA / OLoRA converted by peft (``path_initial_model_for_weight_
    conversion``) to a LoRA of rank 2r whose update, added to the original base, gives the trained model."""
    if not changes_base(spec):
        model.save_pretrained(folder, safe_serialization=True)
        return
    model.save_pretrained(folder, safe_serialization=True,
                          path_initial_model_for_weight_conversion=str(run_dir / INITIAL))


ADAPTER = WorkerAdapter("lora", peft_config, prepare_saving, save)
