from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the forgetting check (on by default for SFT) answers 200 questions twice after every run; the suite turns the
# default off, as a deployment can, and tests/test_forgetting_run.py asks for it by name
os.environ.setdefault("STUDIO_FORGETTING_CHECK", "off")
# a starting worker makes the bundled model's 99 general-replay answers (a minute of CPU) before any run; the
# suite's `studio serve` workers skip it (tests/test_replay.py covers it), and their runs make their own
os.environ.setdefault("STUDIO_REPLAY_AHEAD", "off")
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="session", autouse=True)
def model_roots(tmp_path_factory) -> Path:
    """The base models tests build live under pytest's temp folder: make it a model root (worker_env passes
    it on to subprocesses)."""
    root = tmp_path_factory.getbasetemp()
    os.environ["STUDIO_MODEL_ROOTS"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama (safetensors) with a ChatML tokenizer, built once per session."""
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gguf_model_dir(tmp_path_factory) -> Path:
    """The tiny random Llama with the bundled SmolLM2's tokenizer, for tests that convert to GGUF: llama.cpp's
    converter refuses a pre-tokenizer it does not know, such as the tiny model's own. Weights drawn wide
    (initializer_range 0.5), so greedy argmax is not a coin toss that f16 rounding flips."""
    from browser import ensure_bundled_model
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-gguf-llama"), tokenizer_dir=ensure_bundled_model(),
                            initializer_range=0.5)


@pytest.fixture
def studio_home(tmp_path, monkeypatch) -> Path:
    """An isolated STUDIO_HOME per test: real SQLite files, nothing shared between tests."""
    from studio import settings

    home = tmp_path / "studio-home"
    monkeypatch.setenv("STUDIO_HOME", str(home))
    for var in ("STUDIO_DATABASE_URL", "STUDIO_QUEUE_URL", "STUDIO_AUTH"):
        monkeypatch.delenv(var, raising=False)
    settings.reset_settings()
    _rebind()
    yield home
    settings.reset_settings()
    from studio import db

    db.dispose_engines()


def free_port() -> int:
    """A loopback port nothing listens on (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def isolated_home(root: Path):
    """``root``/studio-home as STUDIO_HOME for a module's fixtures (module scope cannot use ``monkeypatch``):
    the same isolation as ``studio_home``, undone when the module is done."""
    from studio import settings

    home = root / "studio-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STUDIO_HOME", str(home))
        for var in ("STUDIO_DATABASE_URL", "STUDIO_QUEUE_URL", "STUDIO_AUTH", "STUDIO_API_KEY"):
            mp.delenv(var, raising=False)
        settings.reset_settings()
        _rebind()
        try:
            yield home
        finally:
            settings.reset_settings()
            _rebind()


def _rebind():
    """Module-level singletons that captured the previous STUDIO_HOME follow the new one."""
    from studio import db

    db.dispose_engines()
    if "workers.queue" in sys.modules:
        sys.modules["workers.queue"].rebind()


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Poll until predicate() is truthy; returns its value or fails the test with ``what``."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
