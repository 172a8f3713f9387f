"""The pipeline: ties one run together, window by window.

For each window: fetch every page (signed, retried), normalise each record (bad ones set
aside), COPY the rows into a staging table, merge them into ``cdr``, and write the window's
ledger row (and, for incremental passes, the watermark) in the same transaction. A window
that fails is rolled back as a whole and recorded as failed; the watermark stays behind it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import Engine

from etl import load, state
from etl.client import ApiClient, Page
from etl.config import Settings
from etl.db import database_errors
from etl.errors import ApiError, AuthError, DatabaseError, EtlError, InvalidRecordError
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
    windows: int = 0
    counts: Counts = field(default_factory=Counts)
    failures: list[tuple[Window, EtlError]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class Job:
    """One account's work: which account, which prefix, how to fetch and retry."""

    client: ApiClient
    settings: Settings
    prefix: str = ""
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def api_login(self) -> str:
        return self.client.api_login


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
    try:
        return call_with_retry(lambda: job.client.fetch_page(params), job.retry, where)
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


def run_windows(
    engine: Engine,
    job: Job,
    windows: Sequence[Window],
    run_id: int,
    on_window: Callable[[Window, Counts], None] | None = None,
) -> RunSummary:
    """Sync ``windows`` in order; a failed window is recorded and the others carry on.

    Errors that would fail every later window too (auth, database) stop the run at once.
    """
    summary = RunSummary(run_id=run_id)
    for window in windows:
        try:
            counts = sync_window(engine, job, window, run_id)
        except EtlError as error:
            log.error("window failed account=%s window=%s error=%s", job.api_login, window, error)
            _record_failure(engine, job, window, run_id, error)
            summary.failures.append((window, error))
            if isinstance(error, AuthError | DatabaseError):
                break
            continue
        summary.windows += 1
        summary.counts.add(counts)
        if on_window is not None:
            on_window(window, counts)
    return summary


def backfill(
    engine: Engine,
    job: Job,
    start: datetime,
    end: datetime,
    on_window: Callable[[Window, Counts], None] | None = None,
) -> RunSummary:
    """Sync ``[start, end]`` in windows of the configured size; leaves the watermark alone."""
    windows = list(plan_windows(start, end, job.settings.window))
    run_id = state.start_run(engine, "backfill", job.api_login, start, end)
    summary = RunSummary(run_id=run_id)
    try:
        summary = run_windows(engine, job, windows, run_id, on_window)
    finally:
        status = "succeeded" if summary.ok and summary.windows == len(windows) else "failed"
        first_error = str(summary.failures[0][1]) if summary.failures else None
        try:
            state.finish_run(engine, run_id, status, summary.windows, summary.counts, first_error)
        except Exception:  # keep the original error; the run row stays 'running'
            log.warning("could not record the end of run %d", run_id)
    return summary
