"""The huey instance: SqliteHuey under the data directory by default, RedisHuey when configured.

``STUDIO_QUEUE_URL=redis://host:6379/0`` switches the transport to huey's own RedisHuey; nothing of
ours sits in between.
"""
from __future__ import annotations

from huey import Huey, RedisHuey, SqliteHuey

from studio.settings import get_settings


def make_huey(queue_url: str | None = None) -> Huey:
    url = queue_url or get_settings().queue_url
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisHuey("studio", url=url, results=False)
    if url.startswith("sqlite:///"):
        return SqliteHuey("studio", filename=url[len("sqlite:///"):], results=False, timeout=30)
    raise ValueError(f"STUDIO_QUEUE_URL '{url}' is neither sqlite:///PATH nor redis://HOST:PORT/DB")


huey = make_huey()


def rebind(queue_url: str | None = None) -> Huey:
    """Point the existing huey (and the tasks registered on it) at another queue, e.g. after
    STUDIO_HOME changed in a test process. Only the storage changes; the task registry stays."""
    huey.storage = make_huey(queue_url).storage
    return huey
