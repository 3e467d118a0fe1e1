"""What the ``model`` field of a request may name: a base model, a finished run, a checkpoint or an import.

The listing follows vLLM's ``/v1/models`` with LoRA modules: bases first, then every adapter with its base
as ``parent``. A request may also use the references the UI and `studio chat` pass around (run ids,
``RUN_ID/checkpoint-N``); ``studio.adapter_library.resolve`` reads them all. torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass

from studio import adapter_library, db
from studio.models import shown_model
from studio.settings import UnsafePath


class UnknownModel(LookupError):
    """A ``model`` that names no base, run, checkpoint or imported adapter."""


@dataclass(frozen=True)
class Target:
    model: str                              # the name the client asked for
    base: str                               # the base model reference (what ChatEngine.ensure_base takes)
    adapter: adapter_library.AdapterRef | None  # None: the base alone


@dataclass(frozen=True)
class ModelCard:
    id: str
    created: int
    parent: str | None = None               # the base, for an adapter

    def as_dict(self) -> dict:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "studio",
                "root": self.parent or self.id, "parent": self.parent}


def model_cards() -> list[ModelCard]:
    """Every name a request may use: base models, finished runs (by name), their checkpoints
    (``RUN/checkpoint-N``) and imported adapters (``imported/NAME``)."""
    cards = [ModelCard(base, 0) for base in adapter_library.base_choices()]
    jobs = {j.id: j for j in db.list_jobs()}
    for job in jobs.values():
        if job.status == "completed" and job.adapter_path:
            cards.append(ModelCard(job.name, int(job.created_at), shown_model(job.spec.get("base_model", ""))))
    for ckpt in adapter_library.list_checkpoints():
        job = jobs[ckpt.job_id]
        cards.append(ModelCard(f"{job.name}/checkpoint-{ckpt.step}", int(job.created_at), shown_model(ckpt.base_model)))
    for a in adapter_library.list_adapters():
        if a["kind"] == "imported":
            cards.append(ModelCard(a["ref"], int(a["created_at"] or 0), shown_model(a["base_model"])))
    return list({c.id: c for c in cards}.values())


def resolve_target(model: str) -> Target:
    """The base and adapter a request's ``model`` names; UnknownModel when it names none."""
    model = (model or "").strip()
    if not model:
        raise UnknownModel("the request names no model")
    base = next((b for b in adapter_library.base_choices() if adapter_library.same_base(b, model)), None)
    if base is not None:
        return Target(model, base, None)
    try:
        ref = adapter_library.resolve(model)
    except (adapter_library.AdapterError, UnsafePath):
        raise UnknownModel(f"The model `{model}` does not exist.") from None
    return Target(model, ref.base_model, ref)
