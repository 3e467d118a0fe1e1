"""Training threads that follow the cores other processes leave free (STUDIO_TRAIN_THREADS=auto, the default).

torch splits every operation of a step between its threads and waits for the last of them at the operation's end.
When another process (the user's browser, a build, a second worker) takes one of the cores, the thread that lands
there runs only in the slices the scheduler gives it, milliseconds apart, and every operation of the step waits
for it: on two cores a step became several times slower, not twice (bench/busy_core.py measures it). Running one
thread fewer than there are free cores costs at most that core's share instead.

``ThreadGovernor`` is a TrainerCallback: every couple of seconds, at a step's start, it reads how much CPU time
the cores this process may run on spent busy (/proc/stat) less this process's own (``time.process_time``), and
sets torch's thread count to the cores left, one at least. Where /proc/stat cannot be read it does nothing.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from transformers import TrainerCallback

log = logging.getLogger("studio.train")

SAMPLE_SECONDS = 2.0  # the window over which other processes' use is measured
# Another process counts as holding a core once it is seen taking more than this share of one. Measured on two
# cores (bench/busy_core.py, AMD EPYC, fp32): a neighbour busy all the time slows two threads x4.1 and one x1.3;
# one busy 30% of the time (seen as about 0.2, as it shares its core with a training thread) slows two threads
# and one alike (x1.4-1.5, within the noise), and one thread alone costs 10-15%: so a light neighbour, an idle
# browser, keeps both threads.
SLACK = 0.25


def allowed_cpus() -> set[int]:
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def busy_seconds(cpus: set[int], stat: str = "/proc/stat") -> float | None:
    """CPU seconds the given cores have spent busy (not idle, not waiting for I/O) since boot; None where the
    kernel does not say."""
    try:
        lines = Path(stat).read_text().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, _, fields = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        values = [int(v) for v in fields.split()[:8]]  # user nice system idle iowait irq softirq steal
        ticks += sum(values) - values[3] - values[4] - values[7]
    return ticks / os.sysconf("SC_CLK_TCK") if ticks else None


def threads_for(cores: int, others: float, most: int) -> int:
    """The threads to run with on ``cores`` cores while other processes keep ``others`` cores busy."""
    return max(1, min(most, cores - max(0, math.ceil(others - SLACK))))


class OtherLoad:
    """Cores other processes kept busy since the last reading, on the cores this process may use."""

    def __init__(self, cpus: set[int] | None = None, clock=time.monotonic, busy=busy_seconds, own=time.process_time):
        self.cpus = cpus or allowed_cpus()
        self.clock, self.busy, self.own = clock, busy, own
        self.last = self._read()

    def _read(self):
        return self.clock(), self.busy(self.cpus), self.own()

    def cores(self) -> float | None:
        now = self._read()
        (t0, b0, o0), (t1, b1, o1) = self.last, now
        self.last = now
        if b0 is None or b1 is None or t1 <= t0:
            return None
        return max(0.0, ((b1 - b0) - (o1 - o0)) / (t1 - t0))


class ThreadGovernor(TrainerCallback):
    """torch's thread count during training: the cores other processes leave free, re-read every
    SAMPLE_SECONDS at a step's start; all ``most`` of them at the start and again when training ends."""

    def __init__(self, most: int | None = None, load: OtherLoad | None = None, clock=time.monotonic,
                 set_threads=None, get_threads=None):
        import torch

        self.set_threads = set_threads or torch.set_num_threads
        self.get_threads = get_threads or torch.get_num_threads
        self.most = most or self.get_threads()
        self.load, self.clock = load, clock
        self.threads = self.get_threads()
        self.changes = 0
        self.sampled = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.load = self.load or OtherLoad()
        self.sampled = self.clock()
        if self.threads != self.most:  # all of them until a neighbour is seen
            self.set_threads(self.most)
            self.threads = self.most

    def on_step_begin(self, args, state, control, **kwargs):
        if self.clock() - self.sampled < SAMPLE_SECONDS:
            return
        self.sampled = self.clock()
        others = self.load.cores()
        if others is None:
            return
        want = threads_for(len(self.load.cpus), others, self.most)
        if want != self.threads:
            log.info("training threads %d -> %d: other processes kept %.1f of the %d cores busy", self.threads,
                     want, others, len(self.load.cpus))
            self.set_threads(want)
            self.threads, self.changes = want, self.changes + 1

    def on_train_end(self, args, state, control, **kwargs):
        if self.threads != self.most:
            self.set_threads(self.most)
            self.threads = self.most


_PROCESS_THREADS: list[int] = []  # torch's count when this process first built a trainer


def thread_callbacks(setting: int | str) -> list:
    """What STUDIO_TRAIN_THREADS asks of a run: auto, a governor (on CPU); a number, that many threads; all,
    torch's own count. Each run starts from the process's own count, whatever a run before it ended with (one
    that failed mid-step never reached on_train_end)."""
    import torch

    if not _PROCESS_THREADS:
        _PROCESS_THREADS.append(torch.get_num_threads())
    torch.set_num_threads(setting if isinstance(setting, int) else _PROCESS_THREADS[0])
    return [ThreadGovernor(most=_PROCESS_THREADS[0])] if setting == "auto" else []
