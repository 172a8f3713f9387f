"""The pipeline: ties one run together, window by window.

For each window: fetch every page (signed, retried), normalise each record (bad ones set
aside), COPY the rows into a staging table, merge them into ``cdr``, and write the window's
ledger row (and, for incremental passes, the watermark) in the same transaction. A window
that fails is rolled back as a whole and recorded as failed; the watermark stays behind it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import Engine

from etl import load, state
from etl.budget import RequestBudget
from etl.client import ApiClient, Page
from etl.config import Settings
from etl.db import database_errors
from etl.errors import (
    ApiError,
    AuthError,
    DatabaseError,
    EtlError,
    InvalidRecordError,
    StopRequestedError,
)
from etl.normalize import Normalizer
from etl.pagination import OffsetPaginator, distinct_count, page_digest
from etl.retry import RetryPolicy, call_with_retry
from etl.state import Counts
from etl.windows import Window, plan_windows

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What a run did, for the CLI's summary and for callers in tests."""

    run_id: int
    planned: int = 0
    windows: int = 0
    skipped: int = 0
    counts: Counts = field(default_factory=Counts)
    failures: list[tuple[Window, EtlError]] = field(default_factory=list)
    stopped: bool = False
    paused: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures and not self.stopped

    @property
    def status(self) -> str:
        if self.stopped:
            return "stopped"
        if self.paused and not self.failures:
            return "paused"
        if self.failures or self.windows + self.skipped < self.planned:
            return "failed"
        return "succeeded"


def _ignore(_event: str, _kind: str) -> None:
    """The default observer: metrics are optional."""


@dataclass(frozen=True)
class Job:
    """One account's work: which account, which prefix, how to fetch and retry.

    ``stop`` is set (by a signal handler) to ask the run to stop: the current window is
    abandoned (rolled back) at the next page boundary or retry wait, and no new one starts.
    ``observe(event, kind)`` receives ``("api_request", "ok")``, ``("api_error", kind)`` and
    ``("rows", outcome)`` notifications for metrics.
    """

    client: ApiClient
    settings: Settings
    prefix: str = ""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    stop: threading.Event = field(default_factory=threading.Event)
    observe: Callable[[str, str], None] = _ignore
    budget: RequestBudget | None = None

    @property
    def api_login(self) -> str:
        return self.client.api_login

    def check_stop(self, where: str) -> None:
        """Raise StopRequestedError if a stop was asked for."""
        if self.stop.is_set():
            raise StopRequestedError(f"stop requested; abandoned {where} (rolled back)")


def _normalise(
    normalizer: Normalizer, records: Iterable[Any], api_login: str
) -> tuple[list[tuple[Any, ...]], list[load.Reject]]:
    rows: list[tuple[Any, ...]] = []
    rejects: list[load.Reject] = []
    for record in records:
        try:
            rows.append(normalizer.normalize(record))
        except InvalidRecordError as exc:
            i_cdr = record.get("i_cdr") if isinstance(record, dict) else None
            rejects.append(
                load.Reject(
                    api_login=api_login,
                    i_cdr=None if i_cdr is None else str(i_cdr)[:100],
                    reason=exc.reason,
                    raw=json.dumps(record, ensure_ascii=True, default=str),
                )
            )
    return rows, rejects


def _fetch(job: Job, window: Window, paginator: OffsetPaginator) -> Page:
    params = {**window.api_params(job.settings.api_timezone), **paginator.params()}
    if job.prefix:
        params["prefix"] = job.prefix
    where = f"account {job.api_login}, window {window}, page {paginator.pages + 1}"

    def attempt() -> Page:
        job.check_stop(where)
        if job.budget is not None:
            job.budget.acquire(job.stop.wait)
            job.check_stop(where)
        try:
            page = job.client.fetch_page(params)
        except ApiError as exc:
            job.observe("api_error", exc.kind)
            raise
        job.observe("api_request", "ok")
        return page

    # Real waits wait on the stop event, so a stop request cuts a retry wait short.
    policy = replace(job.retry, sleep=job.stop.wait) if job.retry.sleep is time.sleep else job.retry
    try:
        return call_with_retry(attempt, policy, where)
    except ApiError as exc:
        raise (exc if exc.where else exc.located(where)) from None


def load_window(conn: psycopg.Connection[Any], job: Job, window: Window, run_id: int) -> Counts:
    """Fetch, normalise and stage every page of ``window``, then merge; no commit here."""
    settings = job.settings
    normalizer = Normalizer(job.api_login, settings.api_timezone, settings.raw_payload)
    paginator = OffsetPaginator(settings.page_size, settings.max_pages_per_window)
    counts = Counts()
    load.open_stage(conn)
    while not paginator.done:
        page = _fetch(job, window, paginator)
        try:
            paginator.advance(distinct_count(page.records), page_digest(page.body))
        except ApiError as exc:
            raise exc.located(f"account {job.api_login}, window {window}") from None
        job.check_stop(f"account {job.api_login}, window {window}")
        rows, rejects = _normalise(normalizer, page.records, job.api_login)
        load.stage_rows(conn, rows, counts.rows_fetched)
        counts.rows_fetched += len(page.records)
        counts.rejected += load.save_rejects(conn, rejects, run_id, (window.start, window.end))
    counts.pages = paginator.pages
    merged = load.merge(conn, run_id)
    counts.inserted, counts.updated = merged.inserted, merged.updated
    counts.unchanged, counts.conflicts = merged.unchanged, merged.conflicts
    return counts


def sync_window(
    engine: Engine,
    job: Job,
    window: Window,
    run_id: int,
    on_commit: Callable[[psycopg.Connection[Any]], None] | None = None,
) -> Counts:
    """Load one window in one transaction with its ledger row (and ``on_commit`` work)."""
    started = time.monotonic()
    where = f"account {job.api_login}, window {window}"
    with database_errors(where), engine.begin() as sa_conn:
        conn = sa_conn.connection.driver_connection
        assert isinstance(conn, psycopg.Connection)
        counts = load_window(conn, job, window, run_id)
        duration = time.monotonic() - started
        state.record_window(
            conn, run_id, job.api_login, job.prefix, window, "done", counts, duration
        )
        if on_commit is not None:
            on_commit(conn)
    log.info(
        "window done account=%s window_start=%s window_end=%s pages=%d rows=%d inserted=%d "
        "updated=%d unchanged=%d rejected=%d conflicts=%d duration_s=%.2f",
        job.api_login,
        window.start.isoformat(),
        window.end.isoformat(),
        counts.pages,
        counts.rows_fetched,
        counts.inserted,
        counts.updated,
        counts.unchanged,
        counts.rejected,
        counts.conflicts,
        duration,
    )
    return counts


def _record_failure(engine: Engine, job: Job, window: Window, run_id: int, error: EtlError) -> None:
    try:
        with engine.begin() as sa_conn:
            conn = sa_conn.connection.driver_connection
            assert isinstance(conn, psycopg.Connection)
            state.record_window(
                conn, run_id, job.api_login, job.prefix, window, "failed", Counts(), 0.0, str(error)
            )
    except Exception:  # the database may be the thing that failed; the error is raised anyway
        log.warning(
            "could not record the failed window account=%s window=%s", job.api_login, window
        )


def _watermark_mover(job: Job, window: Window) -> Callable[[psycopg.Connection[Any]], None]:
    def move(conn: psycopg.Connection[Any]) -> None:
        state.advance_watermark(conn, job.api_login, job.prefix, window.end)

    return move


def run_windows(
    engine: Engine,
    job: Job,
    windows: Sequence[Window],
    summary: RunSummary,
    *,
    watermark: bool = False,
    on_window: Callable[[Window, Counts | None], None] | None = None,
) -> RunSummary:
    """Sync ``windows`` in order into ``summary``.

    With ``watermark`` (incremental passes) each window also moves the watermark to its end
    in its own transaction, and the first failure ends the pass, so the watermark can never
    pass a window that did not commit. Without it (backfills) a failed window is recorded and
    the others carry on. Errors that would fail every later window (auth, database) and stop
    requests end the run at once.
    """
    for window in windows:
        if job.stop.is_set():
            summary.stopped = True
            break
        if job.budget is not None and job.budget.hour_exhausted():
            log.warning(
                "hourly request budget spent account=%s: stopping before window %s; a later "
                "run resumes here (TCXC_REQUESTS_PER_HOUR=%d)",
                job.api_login,
                window,
                job.budget.per_hour,
            )
            summary.paused = True
            break
        mover = _watermark_mover(job, window) if watermark else None
        try:
            counts = sync_window(engine, job, window, summary.run_id, mover)
        except StopRequestedError as stop:
            log.warning("window abandoned account=%s window=%s: %s", job.api_login, window, stop)
            summary.stopped = True
            break
        except EtlError as error:
            log.error("window failed account=%s window=%s error=%s", job.api_login, window, error)
            _record_failure(engine, job, window, summary.run_id, error)
            summary.failures.append((window, error))
            if on_window is not None:
                on_window(window, None)
            if watermark or isinstance(error, AuthError | DatabaseError):
                break
            continue
        summary.windows += 1
        summary.counts.add(counts)
        for outcome in ("inserted", "updated", "unchanged", "rejected", "conflicts"):
            job.observe("rows:" + outcome, str(getattr(counts, outcome)))
        if on_window is not None:
            on_window(window, counts)
    return summary


def close_run(engine: Engine, summary: RunSummary) -> None:
    """Record the run's outcome; never hides the error that ended the run."""
    first_error = str(summary.failures[0][1]) if summary.failures else None
    try:
        state.finish_run(
            engine, summary.run_id, summary.status, summary.windows, summary.counts, first_error
        )
    except Exception:  # the database may be what failed; the run row then stays 'running'
        log.warning("could not record the end of run %d", summary.run_id)


def run_logged(
    engine: Engine,
    job: Job,
    command: str,
    windows: Sequence[Window],
    *,
    watermark: bool = False,
    done: set[tuple[datetime, datetime]] | None = None,
    on_window: Callable[[Window, Counts | None], None] | None = None,
    abandon_stale: bool = False,
) -> RunSummary:
    """Open a run row, sync the windows not in ``done``, close the run row.

    ``abandon_stale`` (only for callers holding the account's lock) first marks the account's
    runs left 'running' by a dead process as 'abandoned'."""
    start, end = (windows[0].start, windows[-1].end) if windows else (None, None)
    if abandon_stale:
        state.abandon_stale_runs(engine, job.api_login)
    run_id = state.start_run(engine, command, job.api_login, start, end)
    summary = RunSummary(run_id=run_id, planned=len(windows))
    todo = [w for w in windows if (w.start, w.end) not in (done or set())]
    summary.skipped = len(windows) - len(todo)
    if job.budget is not None:
        job.budget.seed(state.requests_last_hour(engine, job.api_login))
    try:
        run_windows(engine, job, todo, summary, watermark=watermark, on_window=on_window)
    finally:
        close_run(engine, summary)
        log.info(
            "run %s account=%s command=%s windows=%d/%d skipped=%d failed=%d rows=%d inserted=%d "
            "updated=%d",
            summary.status,
            job.api_login,
            command,
            summary.windows,
            len(todo),
            summary.skipped,
            len(summary.failures),
            summary.counts.rows_fetched,
            summary.counts.inserted,
            summary.counts.updated,
        )
    return summary


def backfill(
    engine: Engine,
    job: Job,
    start: datetime,
    end: datetime,
    on_window: Callable[[Window, Counts | None], None] | None = None,
    *,
    resume: bool = True,
    locked: bool = False,
) -> RunSummary:
    """Sync ``[start, end]`` in windows of the configured size; leaves the watermark alone.

    With ``resume``, windows that an unfinished earlier backfill of the same account, prefix
    and range already committed are skipped (the per-window ledger says which).
    """
    windows = list(plan_windows(start, end, job.settings.window))
    done = (
        state.backfill_windows_done(engine, job.api_login, job.prefix, start, end)
        if resume
        else set()
    )
    return run_logged(
        engine, job, "backfill", windows, done=done, on_window=on_window, abandon_stale=locked
    )
