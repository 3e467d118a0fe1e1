"""`studio worker`: a huey consumer that runs one job at a time.

SIGINT and SIGTERM both stop gracefully: the running job finishes its current step, writes a
checkpoint and becomes 'interrupted' (resumable); then the consumer exits.
"""
from __future__ import annotations

import logging
import os
import signal
import threading

from huey.consumer import Consumer

log = logging.getLogger("studio.worker")


class StudioConsumer(Consumer):
    def _handle_signal(self, signum, frame):
        from workers.callbacks import SHUTDOWN

        if signum in (signal.SIGINT, signal.SIGTERM):
            if SHUTDOWN.is_set():  # a second signal: stop now
                raise KeyboardInterrupt
            SHUTDOWN.set()
            self._signum, self._restart, self._graceful = signum, False, True
            return
        super()._handle_signal(signum, frame)


def prepare_bundled_model() -> None:
    """Convert the bundled model in the background so the first job and the UI's preview find it ready."""
    from studio.models import ModelError, ensure_bundled

    try:
        ensure_bundled()
    except ModelError as exc:
        log.warning("bundled model unavailable: %s", exc)


def run_worker(gpus: str | None = None, prepare: bool = True) -> None:
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(name)s: %(message)s")
    logging.getLogger("huey").setLevel(logging.INFO)
    import workers.tasks  # noqa: F401  registers the tasks
    from studio import db
    from workers.queue import huey

    db.get_engine()
    if prepare:
        threading.Thread(target=prepare_bundled_model, daemon=True, name="prepare-model").start()
    consumer = StudioConsumer(huey, workers=1, worker_type="thread", periodic=True, check_worker_health=True,
                              scheduler_interval=1, shutdown_timeout=600)
    log.info("worker ready (pid %d, queue %s)", os.getpid(), type(huey).__name__)
    consumer.run()
