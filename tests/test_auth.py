"""The UI's login: passwords only as salted hashes in an auth file, never on a command line or in the
worker's environment. Real `studio serve` and `studio auth` processes, real HTTP logins."""
from __future__ import annotations

import http.cookiejar
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from browser import Server
from conftest import ARTIFACTS, wait_for
from workerproc import ROOT, worker_env


def _studio(home: Path, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studio.cli", *args], cwd=ROOT, env=worker_env(home, **env),
                          input=stdin, capture_output=True, text=True, timeout=120)


def _login(url: str, user: str, password: str):
    """(HTTP status of gradio's /login, an opener holding its cookie)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    body = urllib.parse.urlencode({"username": user, "password": password}).encode()
    try:
        with opener.open(urllib.request.Request(f"{url}/login", data=body), timeout=30) as r:
            return r.status, opener
    except urllib.error.HTTPError as exc:
        return exc.code, opener


def _status(opener, url: str) -> int:
    try:
        with opener.open(url, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                kids.append(int(d.name))
        except OSError:
            continue
    return kids


def test_auth_add_writes_a_private_file_of_salted_hashes(tmp_path):
    from studio import auth

    path = tmp_path / "logins"
    added = _studio(tmp_path, "auth", "add", "alice", "--file", str(path), stdin="s3cret pass\n")
    assert added.returncode == 0, added.stderr
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    text = path.read_text()
    assert "s3cret" not in text and text.startswith("alice:scrypt$")
    again = _studio(tmp_path, "auth", "add", "bob", stdin="s3cret pass\n", STUDIO_AUTH_FILE=str(path))
    assert again.returncode == 0, again.stderr
    entries = auth.read_entries(path)
    assert set(entries) == {"alice", "bob"}
    assert entries["alice"] != entries["bob"], "the same password gets a different salt per user"
    assert auth.checker(path)("alice", "s3cret pass") and not auth.checker(path)("alice", "s3cret")
    assert not auth.checker(path)("carol", "s3cret pass")
    bad = _studio(tmp_path, "auth", "add", "eve:x", "--file", str(path), stdin="pw\n")
    assert bad.returncode == 2 and "not allowed" in bad.stderr and "eve" not in path.read_text()
    empty = _studio(tmp_path, "auth", "add", "dave", "--file", str(path), stdin="\n")
    assert empty.returncode == 2 and "empty" in empty.stderr and "dave" not in path.read_text()


def test_a_password_on_the_command_line_is_refused(tmp_path):
    done = _studio(tmp_path, "serve", "--no-worker", "--auth", "alice:secret")
    assert done.returncode == 2
    assert "--auth is refused" in done.stderr and "--auth-file" in done.stderr and "studio auth add" in done.stderr


def test_serve_refuses_an_auth_file_it_cannot_use(tmp_path):
    missing = _studio(tmp_path, "serve", "--no-worker", "--auth-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad = tmp_path / "bad"
    bad.write_text("alice:secret\n")  # a plain password is not a hash
    wrong = _studio(tmp_path, "serve", "--no-worker", "--auth-file", str(bad))
    assert wrong.returncode == 2 and "line 1" in wrong.stderr


def test_serve_with_an_auth_file_checks_logins_and_keeps_them_from_the_worker(tmp_path):
    from studio import auth

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    logins = tmp_path / "logins"
    auth.set_password(logins, "alice", "correct horse")
    server = Server(tmp_path / "home", ARTIFACTS / "auth-server.log", serve_args=("--auth-file", str(logins)),
                    STUDIO_AUTH_FILE=str(logins))
    try:
        server.wait_ready()
        anonymous = urllib.request.build_opener()
        assert _status(anonymous, f"{server.url}/config") == 401
        wrong, _ = _login(server.url, "alice", "wrong horse")
        unknown, _ = _login(server.url, "mallory", "correct horse")
        assert wrong == 400 and unknown == 400
        ok, opener = _login(server.url, "alice", "correct horse")
        assert ok == 200
        assert _status(opener, f"{server.url}/config") == 200
        with opener.open(f"{server.url}/config", timeout=30) as r:
            assert json.load(r)["components"], "a logged-in user gets the app"

        worker = wait_for(lambda: [p for p in _children(server.proc.pid)
                                   if b"worker" in Path(f"/proc/{p}/cmdline").read_bytes()], 60,
                          what="serve's worker process")[0]
        environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if v.startswith(b"STUDIO_AUTH")], "the worker holds the UI's login"
        assert b"STUDIO_HOME=" + str(tmp_path / "home").encode() in environ
        for pid in (server.proc.pid, worker):
            assert b"correct horse" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    finally:
        code = server.stop()
    assert code == 0, f"studio serve did not stop cleanly ({code}); see {server.log.name}"


def test_compose_publishes_every_port_on_this_machine_only_by_default():
    """The UI, like Redis and PostgreSQL, binds ${STUDIO_BIND:-127.0.0.1}; its login comes from an auth file."""
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"redis", "postgres", "ui"}
    for name, ports in published.items():
        assert all(p.startswith("${STUDIO_BIND:-127.0.0.1}:") for p in ports), (name, ports)
    assert "STUDIO_AUTH" not in services["ui"]["environment"] and "STUDIO_AUTH_FILE" in services["ui"]["environment"]
