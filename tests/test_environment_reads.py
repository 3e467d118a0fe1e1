"""studio/settings.py is the one reader of the environment in shipped code (workers/device.py reads the launcher's
RANK, LOCAL_RANK, WORLD_SIZE and CUDA_VISIBLE_DEVICES), and a bad value is one sentence naming its variable."""
from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READERS = {"studio/settings.py", "workers/device.py"}
ENVIRONMENT = re.compile(r"\bos\s*\.\s*(environ|getenv|putenv|unsetenv)\b|\benviron\s*\[|\bimport\s+environ\b|"
                         r"\bfrom\s+os\s+import\b[^\n]*\b(environ|getenv|putenv)\b")


def shipped() -> list[Path]:
    return sorted([*(ROOT / "studio").rglob("*.py"), *(ROOT / "workers").rglob("*.py"), ROOT / "app.py"])


def code_of(path: Path) -> str:
    """The file's code without its strings and comments (a snippet it writes for users may name os.environ)."""
    kept = []
    for token in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
        if token.type in (tokenize.STRING, tokenize.COMMENT) or token.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            continue
        kept.append(token.string)
    return " ".join(kept)


def test_only_the_settings_and_the_device_read_the_environment():
    found = [f"{path.relative_to(ROOT)}: {match.group(0)}" for path in shipped()
             if path.relative_to(ROOT).as_posix() not in READERS for match in ENVIRONMENT.finditer(code_of(path))]
    assert not found, "the environment read outside studio/settings.py:\n" + "\n".join(found)


def test_the_scan_sees_a_read_and_not_a_string(tmp_path):
    read = tmp_path / "read.py"
    read.write_text('import os\nfrom os import getenv\nkey = os.environ.get("X")\nport = os .getenv("Y")\n')
    quoted = tmp_path / "quoted.py"
    quoted.write_text('SNIPPET = "api_key=os.environ[\\"STUDIO_API_KEY\\"]"  # os.environ in a comment\n')
    assert len(ENVIRONMENT.findall(code_of(read))) == 3 and not ENVIRONMENT.findall(code_of(quoted))


def test_the_heartbeat_limit_is_read_on_use_not_at_import(monkeypatch):
    from studio import lifecycle, settings

    monkeypatch.setenv("STUDIO_HEARTBEAT_STALE", "45")
    settings.reset_settings()
    try:
        assert lifecycle.heartbeat_stale_seconds() == 45.0
    finally:
        settings.reset_settings()


def test_the_keys_are_settings_read_once(tmp_path):
    from studio.settings import api_key, load_settings

    env = {"STUDIO_HOME": str(tmp_path), "STUDIO_API_KEY": "sk-set", "STUDIO_JUDGE_KEY": "sk-judge",
           "STUDIO_AUTH_FILE": str(tmp_path / "auth")}
    loaded = load_settings(env)
    assert (loaded.endpoint_key, loaded.judge_key, loaded.auth_file) == ("sk-set", "sk-judge", tmp_path / "auth")
    assert "sk-set" not in repr(loaded) and "sk-judge" not in repr(loaded)
    assert api_key(env) == "sk-set"
    made = api_key({"STUDIO_HOME": str(tmp_path)})  # unset: the data directory's key, made once
    assert made and made == (tmp_path / "api_key").read_text().strip() == api_key({"STUDIO_HOME": str(tmp_path)})


@pytest.mark.parametrize("value", ["maybe", "2", "onn", "enabled"])
def test_a_switch_refuses_a_word_that_is_neither_on_nor_off_naming_the_variable(value):
    from studio.settings import switch

    with pytest.raises(ValueError) as refused:
        switch("STUDIO_DDP_ON_CPU", {"STUDIO_DDP_ON_CPU": value})
    assert str(refused.value) == f"STUDIO_DDP_ON_CPU must be on or off, got '{value}'"
    assert switch("STUDIO_DDP_ON_CPU", {"STUDIO_DDP_ON_CPU": " On "}) is True
    assert switch("STUDIO_DDP_ON_CPU", {}) is False


@pytest.mark.parametrize("value", ["lots", "1.5", "-3", "9" * 40])
def test_a_number_refuses_what_is_not_one_naming_the_variable(value):
    from studio.settings import process_id, whole_number

    with pytest.raises(ValueError) as refused:
        whole_number({"STUDIO_UPLOAD_LIMIT_MB": value}, "STUDIO_UPLOAD_LIMIT_MB", 1, "a whole number of MiB", 1, 10)
    assert str(refused.value) == f"STUDIO_UPLOAD_LIMIT_MB must be a whole number of MiB, got '{value[:40]}'"
    with pytest.raises(ValueError, match=r"^STUDIO_PARENT_PID must be a process id, got "):
        process_id("STUDIO_PARENT_PID", {"STUDIO_PARENT_PID": value})
    assert process_id("STUDIO_PARENT_PID", {"STUDIO_PARENT_PID": "4242"}) == 4242
    assert process_id("STUDIO_PARENT_PID", {}) is None


@pytest.mark.parametrize("value", ["soon", "nan", "inf", "0", "-1"])
def test_a_positive_number_refuses_what_is_not_one_naming_the_variable(value):
    from studio.settings import positive_number

    with pytest.raises(ValueError) as refused:
        positive_number({"STUDIO_HEARTBEAT_STALE": value}, "STUDIO_HEARTBEAT_STALE", 120.0, "a number of seconds", 60)
    assert str(refused.value) == f"STUDIO_HEARTBEAT_STALE must be a number of seconds, got '{value}'"


def test_other_programs_variables_and_a_childs_environment_come_from_the_settings(monkeypatch):
    from studio.settings import child_env, env_text

    monkeypatch.setenv("WANDB_PROJECT", "  mine ")
    monkeypatch.setenv("STUDIO_AUTH_FILE", "/secret/auth")
    assert env_text("WANDB_PROJECT", "fine-tune-studio") == "mine"
    assert env_text("TRACKIO_PROJECT", "fine-tune-studio", env={}) == "fine-tune-studio"
    child = child_env(drop=("STUDIO_AUTH_FILE",), PYTHONUNBUFFERED="1")
    assert "STUDIO_AUTH_FILE" not in child and child["PYTHONUNBUFFERED"] == "1" and child["WANDB_PROJECT"] == "  mine "
