"""The one place that resolves paths, URLs and environment variables.

Everything the studio writes lives under ``home`` (``STUDIO_HOME``, default ``./studio-data``).
Stored paths are relative to it, so several hosts may mount it at different places.

This module is the only reader (and writer) of the environment in studio/ and workers/, workers/device.py's
launcher variables aside (RANK, LOCAL_RANK, WORLD_SIZE, CUDA_VISIBLE_DEVICES): the STUDIO_* variables are
``Settings`` fields, parsed once; switches go through ``switch``, numbers through ``whole_number`` and
``positive_number`` (a bad value is one sentence naming its variable); other programs' variables through
``env_text``; a child process's environment through ``child_env``. tests/test_environment_reads.py holds it so.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class UnsafePath(ValueError):
    """A name or path that would leave the data directory or holds unsafe characters."""


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    queue_url: str
    upload_limit_bytes: int
    auth: tuple[str, str] | None          # STUDIO_AUTH=user:password (visible to local users: prefer auth_file)
    models_dir: Path
    model_roots: tuple[Path, ...] = ()    # the only places local base-model folders may come from
    auth_file: Path | None = None         # STUDIO_AUTH_FILE: salted password hashes (studio.auth)
    memory_limit_gb: float | None = None  # STUDIO_MEMORY_LIMIT_GB: the most memory a training step may use
    replay_ahead: bool = True             # STUDIO_REPLAY_AHEAD=off: a starting worker does not make the bundled
                                          # model's general-replay answers before any run (runs make their own)
    ui_port: int = 7860                   # STUDIO_PORT: `studio serve`'s port when --port is not given
    infer_host: str = "127.0.0.1"         # STUDIO_INFER_HOST: the address a worker's inference server binds
    infer_port: int = 0                   # STUDIO_INFER_PORT: its port (0: a free one, registered)
    infer_advertise: str | None = None    # STUDIO_INFER_ADVERTISE: the host name or address other machines reach
                                          # it by, put in the URL it registers (default: the bind address, or
                                          # this machine's name for a wildcard bind)
    infer_memory_gb: float | None = None  # STUDIO_INFER_MEMORY_GB: what an inference server's bases may hold
    heartbeat_stale_seconds: float = 120.0  # STUDIO_HEARTBEAT_STALE: a job's beat older than this from another
                                            # machine means its worker is gone
    endpoint_key: str | None = field(default=None, repr=False)  # STUDIO_API_KEY: the inference endpoint's key
                                                                 # (unset: <home>/api_key, see api_key())
    judge_key: str | None = field(default=None, repr=False)     # STUDIO_JUDGE_KEY: `studio evaluate --judge`'s key
    train_threads: int | str = "auto"     # STUDIO_TRAIN_THREADS: auto (follow the cores other processes leave
                                          # free, workers/threads.py), all (torch's count throughout) or a number

    @property
    def upload_limit_text(self) -> str:
        """The upload limit as it is set: in MiB (STUDIO_UPLOAD_LIMIT_MB)."""
        return shown_mib(self.upload_limit_bytes)

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def exports_dir(self) -> Path:
        return self.home / "exports"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    def ensure_dirs(self) -> None:
        for d in (self.home, self.datasets_dir, self.jobs_dir, self.models_dir, self.exports_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)

    def resolve(self, relative: str | os.PathLike) -> Path:
        """Absolute path of a stored (home-relative) path; refuses anything that leaves ``home``."""
        p = Path(relative)
        if p.is_absolute():
            raise UnsafePath(f"'{relative}' is an absolute path; only paths inside the data directory are allowed")
        full = (self.home / p).resolve()
        if not full.is_relative_to(self.home.resolve()):
            raise UnsafePath(f"'{relative}' points outside the data directory")
        return full

    def relative(self, path: str | os.PathLike) -> str:
        """Home-relative form of an absolute path inside ``home`` (what the database stores)."""
        full = Path(path).resolve()
        home = self.home.resolve()
        if not full.is_relative_to(home):
            raise UnsafePath(f"'{path}' is outside the data directory")
        return full.relative_to(home).as_posix()


def check_name(name: str, what: str = "name") -> str:
    """Names of datasets, jobs and adapters: letters, digits, '.', '_' and '-', at most 64 characters."""
    name = (name or "").strip()
    if not SAFE_NAME.match(name) or ".." in name:
        raise UnsafePath(
            f"the {what} '{name}' is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _parse_auth(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("STUDIO_AUTH must look like user:password")
    return user, password


MIB = 1 << 20
UPLOAD_LIMIT_MB = 1024              # STUDIO_UPLOAD_LIMIT_MB's default
UPLOAD_LIMIT_MB_MOST = 1 << 20      # 1 TiB: larger than any file a browser uploads, small enough for any JSON
GIGABYTES_MOST = 1_000_000          # a memory size in GB beyond any machine (STUDIO_*_GB)
STALE_MOST = 7 * 24 * 3600          # STUDIO_HEARTBEAT_STALE: a week
HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def shown_mib(n_bytes: int) -> str:
    """A size in MiB, the unit STUDIO_UPLOAD_LIMIT_MB is read in: '100 MiB', '0.5 MiB'."""
    mib = n_bytes / MIB
    return f"{mib:.0f} MiB" if mib.is_integer() else f"{mib:.1f} MiB"


def whole_number(env, name: str, default: int, what: str, low: int, high: int) -> int:
    """The whole number in ``name`` (its default when unset or empty), from ``low`` to ``high``; anything else
    is a ValueError naming it: '<name> must be <what>, got '<value>''."""
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value) if value.lstrip("+-").isdigit() else None
    except ValueError:  # more digits than Python converts
        number = None
    if number is None or not low <= number <= high:
        raise ValueError(f"{name} must be {what}, got '{value[:40]}'")
    return number


def positive_number(env, name: str, default: float | None, what: str, high: float) -> float | None:
    """The number in ``name`` (its default when unset or empty), greater than 0 and at most ``high``; anything
    else (a word, nan, inf, 0, a negative) is a ValueError naming it: '<name> must be <what>, got '<value>''."""
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and 0 < number <= high):
        raise ValueError(f"{name} must be {what}, got '{value[:40]}'")
    return number


GIGABYTES = f"a number of gigabytes greater than 0 (at most {GIGABYTES_MOST:,})"


def infer_memory_gb(env: dict[str, str] | None = None) -> float | None:
    """``STUDIO_INFER_MEMORY_GB``: the memory an inference server's loaded bases may hold, None when unset."""
    return positive_number(os.environ if env is None else env, "STUDIO_INFER_MEMORY_GB", None, GIGABYTES,
                           GIGABYTES_MOST)


def infer_memory_bytes(env: dict[str, str] | None = None) -> int | None:
    """``STUDIO_INFER_MEMORY_GB`` in bytes (workers.inference.engine's budget), None when unset."""
    gb = infer_memory_gb(env)
    return None if gb is None else int(gb * 1e9)


def infer_advertise(env: dict[str, str] | None = None) -> str | None:
    """``STUDIO_INFER_ADVERTISE``: the host name or IP address other machines reach this machine's inference
    server by (what its registered URL names), None when unset."""
    import ipaddress

    value = (os.environ if env is None else env).get("STUDIO_INFER_ADVERTISE", "").strip()
    if not value:
        return None
    try:
        ipaddress.ip_address(value.strip("[]"))
        return value.strip("[]")
    except ValueError:
        if HOST_NAME.match(value) and not value.replace(".", "").isdigit():
            return value
    raise ValueError("STUDIO_INFER_ADVERTISE must be a host name or an IP address other machines reach this one "
                     f"by (no scheme, port or path), got '{value[:40]}'")


def train_threads(env: dict[str, str] | None = None) -> int | str:
    """``STUDIO_TRAIN_THREADS``: "auto" (the default), "all", or a whole number of threads from 1 to 1024."""
    env = os.environ if env is None else env
    value = env.get("STUDIO_TRAIN_THREADS", "").strip().lower()
    if value in ("", "auto", "all"):
        return value or "auto"
    return whole_number(env, "STUDIO_TRAIN_THREADS", 0, "auto, all or a whole number of threads from 1 to 1024",
                        1, 1024)


def _port(env, name: str, default: int, low: int) -> int:
    what = "a port number from 1 to 65535" if low else "a port number from 1 to 65535, or 0 for a free one"
    return whole_number(env, name, default, what, low, 65535)


# A deployment's on/off environment switches and their defaults. Each is read where it is used (``switch``) and
# checked when the settings load, so `studio serve` and `studio worker` refuse to start on a value that is neither.
SWITCHES = {
    "STUDIO_REPLAY_AHEAD": True,       # a starting worker makes the bundled model's general-replay answers ahead
    "STUDIO_FORGETTING_CHECK": True,   # the default of JobSpec.forgetting_check (a job may still ask either way)
    "STUDIO_DDP_ON_CPU": False,        # a worker without GPUs runs a multi-GPU job as CPU processes (gloo)
}
ON_WORDS, OFF_WORDS = ("on", "1", "true", "yes"), ("off", "0", "false", "no")


def switch(name: str, env: dict[str, str] | None = None) -> bool:
    """The switch ``name`` (one of SWITCHES): on or off by its value's word, its default when unset or empty;
    any other value is a ValueError naming it, never quietly taken for one or the other."""
    value = (os.environ if env is None else env).get(name, "").strip()
    if not value:
        return SWITCHES[name]
    if value.lower() in ON_WORDS:
        return True
    if value.lower() in OFF_WORDS:
        return False
    raise ValueError(f"{name} must be on or off, got '{value[:40]}'")


def env_text(name: str, default: str = "", env: dict[str, str] | None = None) -> str:
    """The text of the variable ``name`` (another program's: MLFLOW_TRACKING_URI, WANDB_PROJECT, VLLM_API_KEY ...),
    without surrounding spaces; ``default`` when it is unset or empty."""
    return (os.environ if env is None else env).get(name, "").strip() or default


def process_id(name: str, env: dict[str, str] | None = None) -> int | None:
    """The process id a parent put in ``name`` for its child (STUDIO_PARENT_PID, STUDIO_LAUNCHER_PID), None when
    unset; anything but a process id is a ValueError naming the variable."""
    return whole_number(os.environ if env is None else env, name, 0, "a process id", 0, 2 ** 31 - 1) or None


def set_env(name: str, value: str, only_unset: bool = False) -> None:
    """Set ``name`` in this process's environment, which the libraries it runs and the children it starts read
    (``only_unset``: leave a value the deployment set)."""
    if only_unset:
        os.environ.setdefault(name, value)
    else:
        os.environ[name] = value


def child_env(drop: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """The environment for a child process: this one's without the variables in ``drop``, with ``extra`` set."""
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    home = Path(env.get("STUDIO_HOME", "studio-data")).expanduser().resolve()
    database_url = env.get("STUDIO_DATABASE_URL") or f"sqlite:///{home / 'studio.db'}"
    queue_url = env.get("STUDIO_QUEUE_URL") or f"sqlite:///{home / 'queue.db'}"
    limit = whole_number(env, "STUDIO_UPLOAD_LIMIT_MB", UPLOAD_LIMIT_MB,
                         f"a whole number of MiB greater than 0 (at most {UPLOAD_LIMIT_MB_MOST})", 1,
                         UPLOAD_LIMIT_MB_MOST) * MIB
    # converted base models may live outside the data directory, shared by several homes
    models_dir = Path(env.get("STUDIO_MODELS_DIR") or home / "models").expanduser().resolve()
    switches = {name: switch(name, env) for name in SWITCHES}
    return Settings(
        home=home,
        database_url=database_url,
        queue_url=queue_url,
        upload_limit_bytes=limit,
        auth=_parse_auth(env.get("STUDIO_AUTH")),
        models_dir=models_dir,
        model_roots=_model_roots(env, models_dir),
        auth_file=Path(env["STUDIO_AUTH_FILE"]).expanduser().resolve() if env.get("STUDIO_AUTH_FILE") else None,
        memory_limit_gb=positive_number(env, "STUDIO_MEMORY_LIMIT_GB", None, GIGABYTES, GIGABYTES_MOST),
        replay_ahead=switches["STUDIO_REPLAY_AHEAD"],
        ui_port=_port(env, "STUDIO_PORT", 7860, low=1),
        infer_host=env.get("STUDIO_INFER_HOST", "").strip() or "127.0.0.1",
        infer_port=_port(env, "STUDIO_INFER_PORT", 0, low=0),
        infer_advertise=infer_advertise(env),
        infer_memory_gb=infer_memory_gb(env),
        heartbeat_stale_seconds=positive_number(env, "STUDIO_HEARTBEAT_STALE", 120.0, "a number of seconds "
                                                f"greater than 0 (at most {STALE_MOST:,})", STALE_MOST),
        endpoint_key=env.get("STUDIO_API_KEY") or None,
        judge_key=env.get("STUDIO_JUDGE_KEY") or None,
        train_threads=train_threads(env),
    )


def _model_roots(env, models_dir: Path) -> tuple[Path, ...]:
    """The models directory, the Hugging Face hub cache, and the folders in ``STUDIO_MODEL_ROOTS``
    (os.pathsep-separated)."""
    hub_cache = env.get("HF_HUB_CACHE") or Path(env.get("HF_HOME") or "~/.cache/huggingface") / "hub"
    extra = [r for r in env.get("STUDIO_MODEL_ROOTS", "").split(os.pathsep) if r.strip()]
    return tuple(dict.fromkeys(Path(r).expanduser().resolve() for r in [models_dir, hub_cache, *extra]))


API_KEY_FILE = "api_key"  # under home: the inference endpoint's key when STUDIO_API_KEY is not set


def api_key(env: dict[str, str] | None = None) -> str:
    """The bearer key of the inference endpoint: ``STUDIO_API_KEY``, else the one in ``<home>/api_key``,
    generated on first use (mode 0600, written beside it and linked into place, so no reader ever sees a
    partial key and two processes starting together agree on one)."""
    settings = get_settings() if env is None or env is os.environ else load_settings(env)
    if settings.endpoint_key:
        return settings.endpoint_key
    path = settings.home / API_KEY_FILE
    if not path.exists():
        import secrets
        import tempfile

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".api_key-")  # mkstemp creates it 0600
        try:
            os.write(fd, secrets.token_urlsafe(32).encode())
            os.close(fd)
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return path.read_text().strip()


_settings: Settings | None = None


def get_settings() -> Settings:
    """Process-wide settings, read once from the environment."""
    global _settings
    if _settings is None:
        _settings = load_settings()
        _settings.ensure_dirs()
    return _settings


def reset_settings() -> None:
    """Forget cached settings (tests change STUDIO_HOME between cases)."""
    global _settings
    _settings = None
