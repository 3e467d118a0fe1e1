"""The UI's login: an auth file of salted password hashes, one ``user:scrypt$salt$hash`` line per user.

The password itself never appears on a command line, in an environment variable or in the file.
`studio auth add USER` writes the file (mode 0600); `studio serve --auth-file PATH` checks each login
against it through gradio's auth callable, reading the file at every login so a change needs no restart.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from .atomic import write_text

SCHEME = "scrypt"
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1, "dklen": 32}


class AuthFileError(ValueError):
    """An auth file or user name that cannot be used; the message is one sentence."""


def _scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, **SCRYPT)


def hash_password(password: str) -> str:
    """``scrypt$salt$hash`` (hex) with a fresh random salt."""
    salt = secrets.token_bytes(16)
    return f"{SCHEME}${salt.hex()}${_scrypt(password, salt).hex()}"


def verify(password: str, stored: str) -> bool:
    scheme, _, rest = stored.partition("$")
    salt, _, digest = rest.partition("$")
    try:
        salt_bytes, digest_bytes = bytes.fromhex(salt), bytes.fromhex(digest)
    except ValueError:
        return False
    return scheme == SCHEME and hmac.compare_digest(_scrypt(password, salt_bytes), digest_bytes)


def check_user(user: str) -> str:
    user = (user or "").strip()
    if not user or ":" in user or any(c.isspace() for c in user):
        raise AuthFileError(f"the user name '{user}' is not allowed: use a non-empty name without ':' or spaces")
    return user


def read_entries(path: Path) -> dict[str, str]:
    """user -> stored hash. Raises AuthFileError with the file's line number when a line is malformed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AuthFileError(f"the auth file '{path}' does not exist: create it with `studio auth add USER`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthFileError(f"the auth file '{path}' cannot be read: {exc}") from None
    entries = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, stored = line.strip().partition(":")
        if not sep or not user or stored.count("$") != 2 or not stored.startswith(f"{SCHEME}$"):
            raise AuthFileError(f"line {n} of the auth file '{path}' is not 'user:{SCHEME}$salt$hash'; "
                                f"write it with `studio auth add USER`")
        entries[user] = stored
    return entries


def load(path: Path) -> dict[str, str]:
    """The entries of an auth file that `studio serve` can use: at least one user."""
    entries = read_entries(path)
    if not entries:
        raise AuthFileError(f"the auth file '{path}' holds no user: add one with `studio auth add USER`")
    return entries


_DUMMY = hash_password(secrets.token_hex(8))


def checker(path: Path):
    """gradio's auth callable: (user, password) -> bool, against the file as it is at each login."""
    def check(user: str, password: str) -> bool:
        try:
            stored = read_entries(path).get(user)
        except AuthFileError:
            return False
        ok = verify(password, stored or _DUMMY)  # an unknown user costs the same time as a known one
        return ok and stored is not None
    return check


def set_password(path: Path, user: str, password: str) -> bool:
    """Add ``user`` or change its password; the file is replaced atomically with mode 0600.
    Returns True when the user is new."""
    user = check_user(user)
    if not password:
        raise AuthFileError("the password is empty")
    path = Path(path)
    entries = read_entries(path) if path.exists() else {}
    new = user not in entries
    entries[user] = hash_password(password)
    write_text(path, "".join(f"{u}:{h}\n" for u, h in entries.items()), mode=0o600)
    return new
