"""Is a recorded process still alive, and keeping `studio serve`'s worker running.

A row that records a pid (a running job, a registered worker) also records the process's start time, so
a pid the kernel has handed to another process, or a process that exited but whose parent has not
reaped it yet (a zombie), reads as dead. On this host the process table is proof enough either way;
a process on another host can only be judged by its heartbeat. A running job is judged by its heartbeat on
this host too (studio.lifecycle): where the database may have moved (a restored backup, a copied file) a live
pid is no proof that the process still works for the row.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("studio.liveness")


# ---- is it alive --------------------------------------------------------------------------------

def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on, or None where there is no such entry to read."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # the command name (field 2) may hold spaces and parentheses


def process_start(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (/proc/PID/stat field 22); None without /proc."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def _signal_probe(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_alive(pid: int | None, started: int | None = None) -> bool:
    """The process ``pid`` of this host runs (not a zombie) and, when ``started`` is known, is the one
    that started then. Without /proc (or where it hides the process) a signal probe is all there is."""
    if not pid:
        return False
    fields = stat_fields(pid)
    if fields is None:
        return _signal_probe(pid)
    if fields[0] in ("Z", "X"):  # exited; only its parent's wait() is missing
        return False
    return started is None or int(fields[19]) == started


def gone(host: str | None, pid: int | None, started: int | None, beat_at: float | None, stale_seconds: float,
         now: float) -> str | None:
    """Why a process that beats is gone, or None: on this host its pid (and start time) is proof enough
    either way; elsewhere only a stale beat can tell."""
    if host == socket.gethostname() and pid:
        return None if pid_alive(pid, started) else "its worker process is gone"
    return stale(beat_at, stale_seconds, now)


def stale(beat_at: float | None, stale_seconds: float, now: float) -> str | None:
    """Why a beat is too old, or None (None too when no beat was ever recorded: nothing to judge by)."""
    if beat_at is not None and now - beat_at > stale_seconds:
        return f"no heartbeat for {now - beat_at:.0f} s"
    return None


def own_start() -> int | None:
    return process_start(os.getpid())


# ---- serve's worker -----------------------------------------------------------------------------

def next_delay(previous: float, uptime: float, base: float = 1.0, cap: float = 60.0,
               healthy_after: float = 60.0) -> float:
    """Seconds to wait before starting a worker again: ``base`` after one that ran a while, doubling
    (up to ``cap``) while each new one dies soon after it started."""
    if uptime >= healthy_after:
        return base
    return min(cap, max(base, 2 * previous))


class Supervisor:
    """Keeps one child process running from a thread: reaps it the moment it exits, calls ``on_exit``
    with its pid and exit code, and starts another after ``next_delay``. ``stop`` asks the child to
    stop with SIGTERM, waits up to ``grace`` seconds for it, then kills it."""

    def __init__(self, argv: list[str], env: dict[str, str], on_exit: Callable[[int, int], object],
                 grace: float = 600.0, poll: float = 0.2):
        self.argv, self.env, self.on_exit, self.grace, self.poll = argv, env, on_exit, grace, poll
        self.proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    def start(self) -> "Supervisor":
        self._thread.start()
        self._started.wait(30)
        return self

    def _spawn(self) -> subprocess.Popen:
        # A session of its own: a Ctrl-C in the terminal reaches serve alone, which then stops the worker once.
        proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True)
        log.info("worker started (pid %d)", proc.pid)
        return proc

    def _run(self) -> None:
        delay = 0.0
        while not self._stopping.is_set():
            self.proc, started = self._spawn(), time.monotonic()
            self._started.set()
            while self.proc.poll() is None:
                if self._stopping.wait(self.poll):
                    self._stop_child()
                    self._exited(self.proc)
                    return
            uptime = time.monotonic() - started
            self._exited(self.proc)
            delay = next_delay(delay, uptime)
            log.warning("worker (pid %d) exited with code %s; starting another in %.0f s", self.proc.pid,
                        self.proc.returncode, delay)
            if self._stopping.wait(delay):
                return

    def _exited(self, proc: subprocess.Popen) -> None:
        try:
            self.on_exit(proc.pid, proc.returncode)
        except Exception:  # the next worker must start even if the database is briefly unreachable
            log.exception("handling the exit of worker %d failed", proc.pid)

    def _stop_child(self) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            log.warning("worker (pid %d) did not stop within %.0f s; killing it", self.proc.pid, self.grace)
            self.proc.kill()
            self.proc.wait()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        """Stop the worker (it checkpoints and interrupts its job) and start no other; returns once it exited."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()


def watch_parent(parent: int, every: float = 1.0) -> threading.Thread:
    """Stop this process gracefully (SIGTERM to itself) once ``parent`` is no longer its parent: a worker
    never trains on alone after the `studio serve` that started it was killed."""
    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        log.warning("the process that started this worker (pid %d) is gone; stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread
