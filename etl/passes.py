"""Scheduled passes: the incremental pass and the deep re-sync pass, for every account.

Incremental: per account, windows from (watermark - lookback) up to (now - settle lag); the
first pass starts at TCXC_START_DATE (default: now - TCXC_DEEP_LOOKBACK). Each window moves the
watermark to its end in the transaction that commits its rows; the first failure ends the
account's pass, so the watermark never passes a window that did not commit.

Deep: per account, re-syncs [now - TCXC_DEEP_LOOKBACK, watermark] so that late and re-rated
CDRs beyond the lookback converge; it never moves the watermark. A deep pass that did not
complete (a failed window, a spent request budget, a stop, a dead process) is finished by the
account's next incremental pass that succeeds: it re-syncs, as a deep pass, the windows of the
last whole deep pass that no run has committed since that pass began (a day's wait for the
next deep pass would leave that period unconverged, and `status` failing, for a day).

Accounts whose lock another process holds are skipped with a log line: several daemons on
one database share the accounts without double work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine

from etl import state
from etl.config import Settings
from etl.db import database_errors
from etl.errors import EtlError, StopRequestedError
from etl.locks import account_lock
from etl.pipeline import Job, RunSummary, run_logged
from etl.windows import Window, plan_windows

log = logging.getLogger(__name__)
INCREMENTAL, DEEP = "sync", "deep-sync"


@dataclass(frozen=True)
class PassResult:
    """One account's outcome in a pass: its summary, or why it was skipped."""

    api_login: str
    summary: RunSummary | None
    skipped: str | None = None
    error: EtlError | None = None
    # An incremental pass's finishing of the account's unfinished deep pass, if it ran one.
    deep_retry: RunSummary | None = None

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and (self.summary is None or self.summary.ok)
            and (self.deep_retry is None or self.deep_retry.ok)
        )


def _aware(moment: datetime, settings: Settings) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=settings.api_timezone)


def _not_before_start(start: datetime, settings: Settings) -> datetime:
    """``start``, or TCXC_START_DATE if later: no pass reaches back before it (history
    before the start date is for an explicit backfill)."""
    if settings.start_date is None:
        return start
    return max(start, _aware(settings.start_date, settings))


def plan_incremental(watermark: datetime | None, now: datetime, settings: Settings) -> list[Window]:
    """The windows an incremental pass syncs (empty when there is nothing due)."""
    end = now - settings.settle_lag
    if watermark is not None:
        start = _not_before_start(watermark - settings.lookback, settings)
    elif settings.start_date is not None:
        start = _aware(settings.start_date, settings)
    else:
        start = now - settings.deep_lookback
    if start >= end:
        return []
    return list(plan_windows(start, end, settings.window))


def plan_deep(watermark: datetime | None, now: datetime, settings: Settings) -> list[Window]:
    """The windows a deep pass re-syncs: the trailing period already covered (from
    TCXC_DEEP_LOOKBACK ago, or the start date if later, to the watermark)."""
    if watermark is None:
        return []
    start = _not_before_start(now - settings.deep_lookback, settings)
    if start >= watermark:
        return []
    return list(plan_windows(start, watermark, settings.window))


def _finish_deep_pass(engine: Engine, job: Job, moment: datetime) -> RunSummary | None:
    """Finish the account's last deep pass if it did not complete (under the account's lock):
    a deep run of the windows the last whole deep pass planned, skipping those committed by
    any run since that pass began (a finishing run that fails again is followed by another
    the same way), and those now wholly before the deep lookback or TCXC_START_DATE (no pass
    reaches back there; none left: the pass is recorded as finished)."""
    last = state.last_deep_pass(engine, job.api_login, job.prefix)
    if last is None or not last.incomplete:
        return None
    if not last.range_start or not last.range_end or not last.unfinished_since:
        return None
    horizon = _not_before_start(moment - job.settings.deep_lookback, job.settings)
    planned = plan_windows(last.range_start, last.range_end, job.settings.window)
    windows = [window for window in planned if window.end > horizon]
    done = state.committed_since(
        engine, job.api_login, job.prefix, last.unfinished_since, last.range_start, last.range_end
    )
    log.info(
        "finishing the deep pass of account=%s (run %d: %s)",
        job.api_login,
        last.run_id,
        last.status,
    )
    return run_logged(engine, job, DEEP, windows, done=done, finishes_run=last.whole_run_id)


def _record_unstarted_deep_pass(
    engine: Engine, job: Job, due: datetime, moment: datetime, error: EtlError
) -> None:
    """A deep pass stopped while it waited for the lock is recorded as stopped, unless a
    whole deep pass (another process's, due at the same time) runs or ended since it was
    due: that one covers it."""
    if state.deep_pass_of_the_same_tick(engine, job.api_login, job.prefix, due, running=True):
        return
    watermark = state.read_watermark(engine, job.api_login, job.prefix)
    windows = plan_deep(watermark, moment, job.settings)
    if windows:
        state.record_unstarted_run(
            engine, DEEP, job.api_login, job.prefix, windows, "stopped", str(error)
        )


def run_pass(
    engine: Engine,
    job: Job,
    kind: str,
    now: datetime | None = None,
    due: datetime | None = None,
) -> PassResult:
    """One pass of ``kind`` for one account, under the account's lock.

    An incremental pass skips an account whose lock another run holds (the next one comes
    within TCXC_SYNC_INTERVAL). A deep pass, which comes once a day, waits for the lock (a
    stop request ends the wait: a stopped run row is written), then skips only if a whole deep
    pass of the account and prefix ended meanwhile (another daemon's, due at the same time;
    if it did not complete, the next incremental pass finishes it). An incremental pass that
    succeeds then finishes the account's last deep pass if it did not complete
    (``PassResult.deep_retry``).

    A deep pass is due at ``due``: the daemon's, at its cron tick (so that a same-tick pass of
    another daemon that ended before this one even started, a few seconds late, covers it);
    by default when it starts (a `sync --deep` run again right after one runs again)."""
    where = f"{kind} pass of account {job.api_login}"
    deep = kind == DEEP
    if not deep:
        due = None
    elif due is None:
        with database_errors(where):
            due = state.database_now(engine)
    with (
        database_errors(where),
        account_lock(engine, job.api_login, wait=deep, stop=job.stop) as locked,
    ):
        if not locked:
            if job.stop.is_set():  # not done: the pass did not complete
                stopped = StopRequestedError("stopped while waiting for the account's lock")
                if due is not None:  # a run row: status shows it, a later pass finishes it
                    moment = now or datetime.now(UTC)
                    _record_unstarted_deep_pass(engine, job, due, moment, stopped)
                return PassResult(job.api_login, None, error=stopped)
            log.info("skipping account=%s pass=%s: another run holds its lock", job.api_login, kind)
            return PassResult(job.api_login, None, "locked by another run")
        if due is not None and state.deep_pass_of_the_same_tick(
            engine, job.api_login, job.prefix, due, running=False
        ):
            log.info("skipping account=%s pass=%s: done by another run since", job.api_login, kind)
            return PassResult(job.api_login, None, "done by another run since it was due")
        moment = now or datetime.now(UTC)
        watermark = state.read_watermark(engine, job.api_login, job.prefix)
        if kind == INCREMENTAL:
            windows = plan_incremental(watermark, moment, job.settings)
        else:
            windows = plan_deep(watermark, moment, job.settings)
        summary = None
        if windows:
            summary = run_logged(
                engine, job, kind, windows, watermark=kind == INCREMENTAL, abandon_stale=True
            )
        else:
            log.info("nothing due account=%s pass=%s", job.api_login, kind)
        retry = None
        # (not after a failure, a stop or a spent budget: it would fail or pause the same way)
        succeeded = summary is None or summary.status == "succeeded"
        if kind == INCREMENTAL and succeeded and not job.stop.is_set():
            retry = _finish_deep_pass(engine, job, moment)
    if summary is None and retry is None:
        return PassResult(job.api_login, None, "nothing due")
    return PassResult(job.api_login, summary, deep_retry=retry)


def run_all(
    engine: Engine,
    jobs: list[Job],
    kind: str,
    now: datetime | None = None,
    on_result: Callable[[PassResult], None] | None = None,
    due: datetime | None = None,
) -> list[PassResult]:
    """A pass for every account, TCXC_PARALLEL_ACCOUNTS logins at a time; one account's
    failure does not stop the others. Entries of one login (with different prefixes) share
    its lock, so they run one after the other rather than skip each other. Results come back
    in the order of ``jobs``; ``on_result`` is called (in the caller's thread) as each login's
    entries finish. ``due``: when a deep pass was due (see ``run_pass``), for every account."""
    if not jobs:
        return []
    by_login: dict[str, list[int]] = {}
    for n, job in enumerate(jobs):
        by_login.setdefault(job.api_login, []).append(n)
    done: dict[int, PassResult] = {}
    at_once = max(1, min(jobs[0].settings.parallel_accounts, len(by_login)))

    def one_login(numbers: list[int]) -> list[tuple[int, PassResult | None]]:
        return [(n, _pass_or_error(engine, jobs[n], kind, now, due)) for n in numbers]

    with ThreadPoolExecutor(at_once, thread_name_prefix="account") as pool:
        futures = [pool.submit(one_login, numbers) for numbers in by_login.values()]
        for future in as_completed(futures):
            for n, result in future.result():
                if result is None:
                    continue  # a stop was asked for before this account started
                done[n] = result
                if on_result is not None:
                    on_result(result)
    return [done[n] for n in sorted(done)]


def _pass_or_error(
    engine: Engine, job: Job, kind: str, now: datetime | None, due: datetime | None
) -> PassResult | None:
    if job.stop.is_set():
        return None
    try:
        return run_pass(engine, job, kind, now, due)
    except EtlError as error:
        log.error("pass failed account=%s pass=%s error=%s", job.api_login, kind, error)
        return PassResult(job.api_login, None, error=error)
