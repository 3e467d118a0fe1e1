"""Finished runs without training: database rows plus a random (non-zero) LoRA adapter on the tiny model; and
queued runs of the identity set on the tiny model, for tests that train them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

_cache: dict[tuple, Path] = {}


def make_adapter(base_dir: Path, out: Path, seed: int = 1, r: int = 4, target_modules="all-linear") -> Path:
    """A LoRA adapter whose A and B are both random (init_lora_weights=False): it really changes the model.
    Built once per (base, seed, r, targets) and copied."""
    key = (str(base_dir), seed, r, str(target_modules))
    if key not in _cache:
        import tempfile

        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=target_modules, init_lora_weights=False,
                            task_type="CAUSAL_LM")
        folder = Path(tempfile.mkdtemp(prefix="studio-test-adapter-"))
        get_peft_model(model, config).save_pretrained(folder)
        _cache[key] = folder
    shutil.copytree(_cache[key], out, dirs_exist_ok=True)
    return out


def make_peft_adapter(base_dir: Path, out: Path, config, seed: int = 1) -> Path:
    """An adapter of any peft type (``config``: a peft config, e.g. IA3Config) on ``base_dir``, its weights
    random where peft starts them at the identity (IA3's ones), so it really changes the model."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out)
    return out


def make_job(base_dir: Path, name: str, seed: int = 1, status: str = "completed", dataset: str = "",
             summary: dict | None = None, **spec_values):
    """A job row as the worker leaves it: output folder under jobs/<id>, adapter under adapter/ when completed."""
    from studio import db
    from studio.settings import get_settings
    from studio.spec import JobSpec

    settings = get_settings()
    db.get_engine()
    spec = JobSpec(base_model=str(base_dir), dataset=dataset or "tiny-data", name=name, load_in_4bit=False,
                   **spec_values)
    job = db.Job(name=name, spec_json=spec.to_json(), status=status)
    out = settings.jobs_dir / job.id
    job.output_dir = settings.relative(out)
    out.mkdir(parents=True, exist_ok=True)
    if status == "completed":
        make_adapter(base_dir, out / "adapter", seed)
        job.adapter_path = settings.relative(out / "adapter")
        job.summary_json = json.dumps(summary or {"final_loss": 1.25, "best_eval_loss": 1.5, "best_eval_step": 4,
                                                  "steps": 8, "runtime_seconds": 3.5, "trainable_params": 1234,
                                                  "total_params": 99999})
        job.current_step = 8
    with db.session() as s:
        s.add(job)
        s.commit()
    return db.get_job(job.id)


def make_checkpoint(job, base_dir: Path, step: int, seed: int = 7, complete: bool = True) -> Path:
    from studio.adapter_library import CHECKPOINT_MARKER
    from studio.settings import get_settings

    folder = get_settings().resolve(job.output_dir) / "checkpoints" / f"checkpoint-{step}"
    make_adapter(base_dir, folder, seed)
    (folder / "trainer_state.json").write_text("{}")
    if complete:
        (folder / CHECKPOINT_MARKER).write_text("1")
    return folder


def queued_job(spec, name: str) -> str:
    """A job row for ``spec``, queued as the form leaves it, its output under jobs/<name>; returns its id."""
    from studio import db

    job = db.Job(name=name, spec_json=spec.to_json(), output_dir=f"jobs/{name}")
    with db.session() as s:
        s.add(job)
        s.commit()
    return job.id


def identity_job(base_dir: Path, tmp_path: Path, name: str, **spec_values) -> str:
    """A queued run (its id) of the 40-row identity set, added to the library on first use, on the tiny model with
    small LoRA and short rows; ``spec_values`` set or override any field. Output under jobs/<name>."""
    from identity_data import write
    from studio import db, library
    from studio.spec import JobSpec

    if db.get_dataset("identity") is None:
        library.add(write(tmp_path / "identity.jsonl"), name="identity")
    values = dict(base_model=str(base_dir), dataset="identity", load_in_4bit=False, r=4, lora_alpha=8,
                  per_device_train_batch_size=2, max_length=128, eval_split=0.2, name=name)
    return queued_job(JobSpec(**{**values, **spec_values}), name)
