"""The bundled SmolLM2 made loadable: its GGUF converted once, with torch, to a safetensors folder under the models
directory. Only workers convert (at their start, and on demand when a job needs the model before that is done); the UI
reads what it needs without torch (studio.models: the folder when it is there, the GGUF's tensor table before) and
shows the conversion's progress from the marker written here (studio.models.conversion_progress)."""
from __future__ import annotations

import fcntl
import json
import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from studio.atomic import replace_dir
from studio.models import (BUNDLED_PACKAGE, ModelError, bundled_dir, bundled_gguf, conversion_marker, is_bundled,
                           is_model_folder, mark_preparation, resolve_model)
from studio.spec import BUNDLED_MODEL

log = logging.getLogger("studio.models")

CONVERSION_STAGES = ("reading the GGUF", "checking the weights", "writing safetensors")


def model_folder(ref: str) -> Path:
    """The folder a worker loads the base model ``ref`` from: the bundled one converted first (once, waiting for
    another process that is converting it), any other as studio.models.resolve_model finds it (downloaded once)."""
    return ensure_bundled() if is_bundled((ref or "").strip()) else resolve_model(ref)


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_bundled() -> Path:
    """Convert the bundled GGUF to a safetensors folder once (process- and host-safe via a file lock)."""
    target = bundled_dir()
    if is_model_folder(target):
        return target
    gguf = bundled_gguf()
    with _file_lock(target.parent / f".{target.name}.lock"):
        if is_model_folder(target):  # another process finished while we waited
            return target
        log.warning("converting the bundled %s to safetensors under %s (once, about a minute)", gguf.name, target)
        t0 = time.time()
        tmp = target.parent / f".{target.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            convert_gguf(gguf, tmp, lambda stage: mark_preparation(t0, CONVERSION_STAGES[stage - 1], stage,
                                                                   len(CONVERSION_STAGES)))
            replace_dir(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            conversion_marker().unlink(missing_ok=True)
        log.info("bundled model ready in %.0f s", time.time() - t0)
    return target


def convert_gguf(gguf: Path, out: Path, stage: Callable[[int], None] = lambda stage: None) -> None:
    """The GGUF's weights, dequantised to float32, and its tokenizer, saved as a plain transformers folder in
    ``out``; ``stage(n)`` is told each of CONVERSION_STAGES as it begins."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    stage(1)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["_name_or_path"] = BUNDLED_MODEL
    config = AutoConfig.for_model(**{k: v for k, v in config_dict.items() if k != "model_type"},
                                  model_type=config_dict["model_type"])
    stage(2)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise ModelError(f"converting the bundled model failed: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if plain.generation_config is not None:
        plain.generation_config.pad_token_id = tokenizer.pad_token_id
    stage(3)
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "studio_source.json").write_text(json.dumps({"gguf": gguf.name, "package": BUNDLED_PACKAGE}))
