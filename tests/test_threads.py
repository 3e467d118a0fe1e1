"""Training threads follow the cores other processes leave free (workers/threads.py, STUDIO_TRAIN_THREADS)."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from studio.settings import load_settings
from workers import threads
from workers.threads import OtherLoad, ThreadGovernor, busy_seconds, threads_for


def test_threads_for_the_cores_left():
    assert threads_for(2, 0.0, 2) == 2
    assert threads_for(2, 0.2, 2) == 2  # an idle browser beside the run
    assert threads_for(2, 0.5, 2) == 1  # a busy process sharing a core with one of the run's threads
    assert threads_for(2, 1.0, 2) == 1
    assert threads_for(2, 2.0, 2) == 1  # never none
    assert threads_for(8, 2.9, 8) == 5 and threads_for(8, 2.1, 8) == 6
    assert threads_for(8, 0.0, 4) == 4  # never more than the run started with


def test_busy_seconds_counts_only_the_allowed_cores(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal: busy = all but idle, iowait and steal
    stat.write_text("cpu  900 0 100 5000 50 0 0 0 0 0\n"
                    "cpu0 400 0 50 2500 25 0 0 7 0 0\n"
                    "cpu1 500 0 50 2500 25 0 0 0 0 0\n"
                    "intr 12345\n")
    tick = __import__("os").sysconf("SC_CLK_TCK")
    assert busy_seconds({0}, str(stat)) == pytest.approx(450 / tick)
    assert busy_seconds({0, 1}, str(stat)) == pytest.approx(1000 / tick)
    assert busy_seconds({0}, str(tmp_path / "missing")) is None


def test_other_load_is_the_busy_time_that_is_not_this_process():
    clock, busy, own = iter([0.0, 2.0, 4.0]), iter([10.0, 13.0, 14.0]), iter([1.0, 3.0, 4.0])
    load = OtherLoad({0, 1}, clock=lambda: next(clock), busy=lambda cpus: next(busy), own=lambda: next(own))
    assert load.cores() == pytest.approx(0.5)  # 3 busy seconds in 2 s, 2 of them this process's
    assert load.cores() == pytest.approx(0.0)


def test_a_busy_process_is_seen_on_this_machine():
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        load = OtherLoad()
        time.sleep(1.5)
        seen = load.cores()
    finally:
        loop.kill()
        loop.wait()
    assert seen is not None and seen > 0.5, seen


class FakeLoad:
    def __init__(self, readings):
        self.cpus, self.readings = {0, 1}, list(readings)

    def cores(self):
        return self.readings.pop(0)


def test_the_governor_drops_a_thread_while_a_core_is_taken_and_restores_them():
    now, count, log = [0.0], [2], []

    def set_threads(n):
        count[0] = n
        log.append(n)

    governor = ThreadGovernor(load=FakeLoad([1.0, 0.9, 0.05]), clock=lambda: now[0], set_threads=set_threads,
                              get_threads=lambda: count[0])
    governor.on_train_begin(None, None, None)
    governor.on_step_begin(None, None, None)  # too soon to measure
    assert log == []
    for seconds in (2.5, 5.0, 7.5):
        now[0] = seconds
        governor.on_step_begin(None, None, None)
    assert log == [1, 2] and governor.changes == 2  # down while busy, back up once the other process stopped
    governor.threads = 1
    governor.on_train_end(None, None, None)
    assert count[0] == 2  # the process's own count again (chat, the next run)


def test_a_machine_without_proc_stat_leaves_the_threads_alone():
    governor = ThreadGovernor(load=FakeLoad([None]), clock=iter([0.0, 0.0, 9.0, 9.0]).__next__,
                              set_threads=lambda n: pytest.fail("changed"), get_threads=lambda: 2)
    governor.on_train_begin(None, None, None)
    governor.on_step_begin(None, None, None)
    assert governor.threads == 2


@pytest.mark.parametrize("value, expected", [("", "auto"), ("auto", "auto"), ("ALL", "all"), ("3", 3)])
def test_the_setting(value, expected):
    assert load_settings({"STUDIO_TRAIN_THREADS": value}).train_threads == expected


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_setting_is_one_sentence(value):
    with pytest.raises(ValueError) as caught:
        load_settings({"STUDIO_TRAIN_THREADS": value})
    assert str(caught.value) == (f"STUDIO_TRAIN_THREADS must be auto, all or a whole number of threads from 1 to "
                                 f"1024, got '{value}'")


def test_a_run_on_cpu_is_governed_unless_told():
    import torch

    before = torch.get_num_threads()
    try:
        assert [type(c) for c in threads.thread_callbacks("auto")] == [ThreadGovernor]
        assert threads.thread_callbacks("all") == []
        assert threads.thread_callbacks(1) == [] and torch.get_num_threads() == 1
        torch.set_num_threads(1)  # as a run that failed mid-step, while governed down to one thread, leaves it
        governor, = threads.thread_callbacks("auto")
        assert torch.get_num_threads() == before and governor.most == before  # the next run has them all again
        assert threads.thread_callbacks("all") == [] and torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
