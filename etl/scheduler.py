"""The daemon: APScheduler 3.x runs the incremental pass on an interval and the deep pass on
a cron schedule, until SIGTERM or SIGINT.

- No two runs of a job overlap (``max_instances=1``); missed runs coalesce into one.
- The passes of one account never overlap either, across jobs and processes: each pass holds
  the account's advisory lock (see ``etl.locks``).
- A stop signal sets the jobs' stop event: the running window commits or is abandoned
  (rolled back) at its next page boundary, no new window starts, and the daemon exits 0.
  If the jobs have not finished within TCXC_STOP_TIMEOUT the daemon exits anyway (exit 1);
  PostgreSQL rolls back the open window transaction when the connection closes.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from etl.config import Settings

log = logging.getLogger(__name__)


def build_scheduler(
    settings: Settings,
    incremental: Callable[[], None],
    deep: Callable[[], None],
) -> BackgroundScheduler:
    """The scheduler with its two jobs; the incremental one also runs at start."""
    scheduler = BackgroundScheduler(
        timezone=UTC,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        executors={"default": {"type": "threadpool", "max_workers": 2}},
    )
    scheduler.add_job(
        incremental,
        IntervalTrigger(seconds=settings.sync_interval.total_seconds(), timezone=UTC),
        id="incremental",
        name="incremental pass",
        next_run_time=datetime.now(UTC),
    )
    scheduler.add_job(
        deep,
        CronTrigger.from_crontab(settings.deep_sync_cron, timezone=UTC),
        id="deep",
        name="deep re-sync pass",
    )

    def on_error(event: JobExecutionEvent) -> None:
        log.error("job %s failed: %r", event.job_id, event.exception)

    scheduler.add_listener(on_error, EVENT_JOB_ERROR)
    return scheduler


def run_until_signalled(
    scheduler: BackgroundScheduler, stop: threading.Event, timeout: float
) -> bool:
    """Start, wait for SIGTERM/SIGINT, then stop within ``timeout``; True if it stopped cleanly."""

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s: stopping after the current window", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    scheduler.start()
    log.info("daemon started; jobs: %s", ", ".join(job.name for job in scheduler.get_jobs()))
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    finished = threading.Event()

    def shutdown() -> None:
        scheduler.shutdown(wait=True)
        finished.set()

    started = time.monotonic()
    threading.Thread(target=shutdown, name="shutdown", daemon=True).start()
    clean = finished.wait(timeout)
    log.info("daemon stopped clean=%s after %.1fs", clean, time.monotonic() - started)
    return clean
