"""`studio worker`: a huey consumer that runs one job at a time.

SIGINT and SIGTERM both stop gracefully: the running job finishes its current step, writes a
checkpoint and becomes 'interrupted' (resumable); then the consumer folds SQLite's write-ahead log into
the database file and exits.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

from huey.consumer import Consumer, Worker, WorkerRecycle

from studio.retry import Retry
# Imported here, never inside the signal handler: an import there waits for any other thread's import
# (the training stack, seconds) before a stop is even noticed.
from workers.callbacks import SHUTDOWN

log = logging.getLogger("studio.worker")

QUEUE_WAITS = (1.0, 30.0)  # seconds before reading a queue that failed again, and the longest wait


class QueueWorker(Worker):
    """huey's worker thread, except for a queue it cannot read (a full disk, a locked or vanished file, Redis
    down): huey logs a traceback and tries again within a second, for as long as that lasts; this one waits 1 s,
    2 s, 4 s ... 30 s between tries and logs each distinct error once, with its count when it ends."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads = Retry("reading the queue", self._logger, *QUEUE_WAITS)

    def loop(self, now=None):
        try:
            task = self.huey.dequeue()
        except Exception as exc:
            self.stop_flag.wait(self.reads.failed(exc))
            return
        self.reads.worked()
        if task is None:
            if not self.huey.storage.blocking:
                self.sleep()
            return
        self.delay = self.default_delay  # as huey's own loop from here
        self.task_count += 1
        try:
            self.huey.execute(task, now)
        except Exception:
            self._logger.exception("Unhandled error during execution of task %s.", task.id)
        if self.max_tasks and self.task_count >= self.max_tasks:
            self._logger.info("Worker reached max tasks (%d), exiting.", self.max_tasks)
            raise WorkerRecycle()


class StudioConsumer(Consumer):
    worker_class = QueueWorker

    def _handle_signal(self, signum, frame):
        if signum in (signal.SIGINT, signal.SIGTERM):
            if SHUTDOWN.is_set():  # a second signal: stop now
                raise KeyboardInterrupt
            SHUTDOWN.set()
            self._signum, self._restart, self._graceful = signum, False, True
            return
        super()._handle_signal(signum, frame)


WORK_STARTED = threading.Event()  # this worker has started executing a job (its start's preparation then stops)


def note_work(signal, task, *args, **kwargs) -> None:
    """huey's "executing" signal: a job (not the minutely lost-job sweep) starts in this worker."""
    if task.name != "studio.find_lost_jobs":
        WORK_STARTED.set()


def prepare_bundled_model() -> None:
    """In the background at the worker's start: convert the bundled model so the first job and the UI's preview
    find it ready, then have it answer the general-replay prompts (prewarm_replay, below) until a job starts
    (WORK_STARTED) or the worker stops, pausing while its inference server answers a chat; the line "worker
    prepared" ends it."""
    from studio.models import ModelError
    from studio.settings import get_settings
    from workers.bundled import ensure_bundled

    started = time.time()
    stop = lambda: SHUTDOWN.is_set() or WORK_STARTED.is_set()  # noqa: E731
    try:
        ensure_bundled()
    except ModelError as exc:
        log.warning("bundled model unavailable: %s", exc)
        return
    answers = 0
    if get_settings().replay_ahead and not stop():
        try:
            from workers.inference.engine import SERVING

            answers = prewarm_replay(stop, pause=SERVING.busy)
        except Exception:  # noqa: BLE001 - a run makes its own replay answers; preparing never stops the worker
            log.warning("making the bundled model's general-replay answers ahead failed; runs make their own",
                        exc_info=True)
    log.info("worker prepared in %.1f s: the bundled model is ready, %d general-replay answers made ahead",
             time.time() - started, answers)


PAUSE_POLL_SECONDS = 0.25  # how often a paused preparation looks whether the chat it waits for is done


def prewarm_replay(stop, spec=None, pause=lambda: False) -> int:
    """A worker's idle start: the base's answers to every replay prompt, in the order a run with ``spec``'s seed
    takes them (``studio.replay.pick`` is prefix-stable), loaded as a run with ``spec`` loads it (the form's
    defaults on the bundled model unless told), so a newcomer's first run finds them made instead of spending
    its first seconds on them. Stops between batches once ``stop()`` says a run has started (the run makes what
    it still lacks), and holds still, between batches and between the tokens of one, while ``pause()`` says a chat
    is being answered. The worker line shows the progress. Returns how many answers are cached."""
    from studio import models, replay
    from studio.settings import get_settings
    from studio.spec import BUNDLED_MODEL, JobSpec
    from workers.replay import PREWARM_BATCH, base_answers
    from workers.bundled import model_folder
    from workers.train import golden_base_key, load_model_for_training

    spec = spec or JobSpec(base_model=BUNDLED_MODEL)
    if not replay.applies(spec.method, "chat") or spec.general_replay <= 0:
        return 0
    started = time.time()
    prompts = replay.order(replay.load().prompts, spec.seed)
    what = "its own answers to general instructions, for general replay"
    models.mark_preparation(started, f"{what}: loading")
    try:
        model_dir = model_folder(spec.base_model)
        model, tokenizer = load_model_for_training(spec, model_dir)
        done, at = 0, [0]

        def hold():  # between batches and between the tokens of one: still while a chat is being answered
            if pause() and not stop():
                models.mark_preparation(started, f"{what}: {at[0]} of {len(prompts)}, paused while a chat is answered")
                while pause() and not stop():
                    time.sleep(PAUSE_POLL_SECONDS)
                models.mark_preparation(started, f"{what}: {at[0]} of {len(prompts)}")

        for i in range(0, len(prompts), PREWARM_BATCH):
            at[0] = i
            hold()
            if stop():
                break
            models.mark_preparation(started, f"{what}: {i} of {len(prompts)}")
            done = len(base_answers(model, tokenizer, prompts[:i + PREWARM_BATCH], golden_base_key(spec, model_dir),
                                    get_settings().home / replay.CACHE_DIR, batch_size=PREWARM_BATCH, wait=hold))
    finally:
        models.conversion_marker().unlink(missing_ok=True)
    logging.getLogger("studio.replay").info("general replay: %d of the base's answers ready before any run (%.1f s)",
                                            done, time.time() - started)
    return done


class WorkerRegistration:
    """This worker's row in the ``workers`` table, refreshed every WORKER_BEAT_SECONDS, removed on exit."""

    def __init__(self):
        import socket

        self.id = f"{socket.gethostname()}:{os.getpid()}"

    def __enter__(self):
        from studio import db
        from studio.lifecycle import WORKER_BEAT_SECONDS
        from workers.arguments import device_facts
        from workers.heartbeat import Heartbeat

        facts = device_facts()

        def register():
            db.register_worker(id=self.id, host=self.id.rsplit(":", 1)[0], pid=os.getpid(), **facts)

        register()
        log.info("device: %s, %.1f GB, bf16 %s", facts["device_name"], facts["memory_gb"], facts["bf16"])
        # a database restored from a backup (or a sweep that judged this worker gone) lacks the row: write it again
        self._beat = Heartbeat(lambda: db.touch_worker(self.id) or register(), WORKER_BEAT_SECONDS,
                               "worker-beat").__enter__()
        return self

    def __exit__(self, *exc):
        from studio import db

        self._beat.__exit__(*exc)
        try:
            db.remove_worker(self.id)
        except Exception as exc:
            log.warning("could not remove the worker row: %s", exc)


def run_worker(gpus: str | None = None, prepare: bool = True) -> None:
    if gpus:
        from workers.device import pin_devices

        pin_devices(gpus)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(name)s: %(message)s")
    logging.getLogger("huey").setLevel(logging.INFO)
    import workers.tasks  # noqa: F401  registers the tasks
    from studio import db
    from workers.queue import huey

    db.get_engine()
    if prepare:
        from huey.signals import SIGNAL_EXECUTING

        huey.signal(SIGNAL_EXECUTING)(note_work)
        threading.Thread(target=prepare_bundled_model, daemon=True, name="prepare-model").start()
    # max_delay: an idle worker looks at the queue at least every second (huey's default backs off to 10 s, which a
    # newcomer's first run would wait out); a poll is one small query, and Redis blocks on its list instead
    consumer = StudioConsumer(huey, workers=1, worker_type="thread", periodic=True, check_worker_health=True,
                              scheduler_interval=1, shutdown_timeout=600, max_delay=1.0)
    log.info("worker ready (pid %d, queue %s)", os.getpid(), type(huey).__name__)
    with WorkerRegistration():
        consumer.run()
    db.checkpoint()  # a clean exit leaves every row in the database file itself
