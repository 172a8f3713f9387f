"""One window, end to end, in one transaction.

Fetch every page (``etl.window_fetch``: signed, paced by the request budget, retried),
normalise each record (bad ones set aside), COPY the rows into ``cdr`` or a staging table and
merge them, refresh the rollups of the hours the window's rows report in, and write the
window's ledger row, plus whatever the caller adds (the watermark), all in the same
transaction.
A window that fails is rolled back as a whole and recorded as failed in its own transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
from sqlalchemy import Engine

from etl import jsonparse, load, reporting, rollup_hours, state
from etl.budget import RequestBudget
from etl.client import ApiClient
from etl.config import Settings
from etl.db import database_errors
from etl.errors import (
    EtlError,
    InvalidRecordError,
    StopRequestedError,
)
from etl.normalize import FUTURE_LIMIT, Normalizer
from etl.retry import RetryPolicy
from etl.state import Counts
from etl.window_fetch import Records, fetch_window
from etl.windows import Window

log = logging.getLogger(__name__)


def _ignore(_event: str, _kind: str) -> None:
    """The default observer: metrics are optional."""


class RequestCounter:
    """API requests per window (every attempt, retried or failed), until the window's ledger
    row takes them: what the hourly request budget counts across processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Window, int] = {}

    def count(self, window: Window) -> None:
        with self._lock:
            self._counts[window] = self._counts.get(window, 0) + 1

    def take(self, window: Window) -> int:
        with self._lock:
            return self._counts.pop(window, 0)


@dataclass(frozen=True)
class Job:
    """One account's work: which account, which prefix, how to fetch and retry.

    ``stop`` is set (by a signal handler) to ask the run to stop: the current window is
    abandoned (rolled back) at the next page boundary or retry wait, and no new one starts.
    ``observe(event, kind)`` receives ``("api_request", "ok")``, ``("api_error", kind)`` and
    ``("rows", outcome)`` notifications for metrics.
    ``recheck`` (``backfill --repair``): a page whose rows are stored with matching digests is
    normalised and merged all the same, so each stored row is compared with the API's values
    and rewritten if it differs (a row changed outside tcxc-etl keeps its digest).
    """

    client: ApiClient
    settings: Settings
    prefix: str = ""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    stop: threading.Event = field(default_factory=threading.Event)
    observe: Callable[[str, str], None] = _ignore
    budget: RequestBudget | None = None
    recheck: bool = False
    requests: RequestCounter = field(default_factory=RequestCounter)

    @property
    def api_login(self) -> str:
        return self.client.api_login

    def seed_budget(self, engine: Engine) -> None:
        """Count the requests the ledger holds for the account's last hour (other processes'
        passes and backfills) against its hourly budget."""
        if self.budget is not None:
            self.budget.seed(state.requests_last_hour(engine, self.api_login))

    def normalizer(self) -> Normalizer:
        """A normaliser of this account's records under the settings; a record holding a time
        more than FUTURE_LIMIT after now is rejected (see ``etl.normalize``)."""
        settings = self.settings
        latest = datetime.now(UTC) + FUTURE_LIMIT
        return Normalizer(self.api_login, settings.api_timezone, settings.raw_payload, latest)

    def check_stop(self, where: str) -> None:
        """Raise StopRequestedError if a stop was asked for."""
        if self.stop.is_set():
            raise StopRequestedError(f"stop requested; abandoned {where} (rolled back)")


def _printable(text: str) -> str:
    """PostgreSQL text cannot hold NUL: escape it (and other controls) as Python would."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def make_reject(api_login: str, record: Any, reason: str) -> load.Reject:
    """A reject row for ``record``: its i_cdr (if any) and reason made storable as text."""
    i_cdr = record.get("i_cdr") if isinstance(record, dict) else None
    return load.Reject(
        api_login=api_login,
        i_cdr=None if i_cdr is None else _printable(str(i_cdr))[:100],
        reason=_printable(reason),
        raw=jsonparse.dumps_text(record),
    )


def normalise_page(
    normalizer: Normalizer, records: Iterable[Any], api_login: str
) -> tuple[list[tuple[Any, ...]], list[load.Reject]]:
    rows: list[tuple[Any, ...]] = []
    rejects: list[load.Reject] = []
    for record in records:
        try:
            rows.append(normalizer.normalize(record))
        except InvalidRecordError as exc:
            rejects.append(make_reject(api_login, record, exc.reason))
    return rows, rejects


def load_window(
    conn: psycopg.Connection[Any],
    job: Job,
    window: Window,
    run_id: int,
    pages: Iterable[Records] | None = None,
) -> Counts:
    """Normalise every page of ``window`` (fetched here, or handed over by a fetch-ahead
    thread as ``pages``) and load it: pages of new rows straight into ``cdr``, the others
    staged and merged (see ``etl.load``); no commit here. A page whose every record is stored
    with its digest (``etl.rowdigest``), before any page was staged, is counted unchanged
    as it is: a re-sync of unchanged data neither normalises nor writes."""
    settings = job.settings
    normalizer = job.normalizer()
    counts = Counts()
    hours = rollup_hours.Hours(settings.api_timezone)  # what the rollup refresh covers
    staging = False  # once a page is staged, the rest are too (the last occurrence wins)
    for records in fetch_window(job, window) if pages is None else pages:
        job.check_stop(f"account {job.api_login}, window {window}")
        counts.pages += 1
        counts.rows_fetched += len(records)
        ids = None if staging else load.distinct_ids(records)
        digests = normalizer.digests(records)
        stored = ids is not None and load.any_stored(conn, ids)
        if ids is not None and stored and not job.recheck and load.held_alike(conn, ids, digests):
            counts.unchanged += len(records)  # held as they are: nothing to normalise or write
            continue
        normalized = normalizer.normalize_page(records, digests)  # COPY text; PostgreSQL casts
        hours.add(records)
        direct = ids is not None and not stored and not normalized.rejects
        if direct and load.copy_direct(conn, normalized.copy_text):
            counts.inserted += normalized.rows  # new rows: straight into cdr
        elif normalized.rows:
            if not staging:
                load.open_stage(conn)
                staging = True
            load.stage_text(conn, normalized.copy_text)
        rejects = [make_reject(job.api_login, record, why) for record, why in normalized.rejects]
        counts.rejected += load.save_rejects(conn, rejects, run_id, (window.start, window.end))
    if staging:
        merged = load.merge(conn, run_id)
        counts.inserted += merged.inserted
        counts.updated = merged.updated
        counts.unchanged += merged.unchanged
        counts.conflicts = merged.conflicts
        hours.add_stored(merged.replaced_hours)
    if counts.inserted or counts.updated:  # unchanged rows cannot change the rollup
        for start, end in hours.ranges(window.start, window.end):  # (ascending: lock order)
            reporting.refresh_days(conn, job.api_login, start, end)
    return counts


class CommitHook(Protocol):
    """Work that must commit with a window (the watermark), told whether the commit happened."""

    def before_commit(self, conn: psycopg.Connection[Any], window: Window) -> None: ...

    def after_commit(self, window: Window, committed: bool) -> None: ...


def sync_window(
    engine: Engine,
    job: Job,
    window: Window,
    run_id: int,
    hook: CommitHook | None = None,
    pages: Iterable[Records] | None = None,
) -> Counts:
    """Load one window in one transaction with its ledger row (and the hook's work); ``pages``
    as for ``load_window``."""
    started = time.monotonic()
    where = f"account {job.api_login}, window {window}"
    committed = False
    try:
        with database_errors(where), engine.begin() as sa_conn:
            conn = sa_conn.connection.driver_connection
            assert isinstance(conn, psycopg.Connection)
            counts = load_window(conn, job, window, run_id, pages)
            duration = time.monotonic() - started
            state.record_window(
                conn,
                run_id,
                job.api_login,
                job.prefix,
                window,
                "done",
                counts,
                duration,
                requests=job.requests.take(window),
            )
            if hook is not None:
                hook.before_commit(conn, window)
        committed = True
    finally:
        if hook is not None:
            hook.after_commit(window, committed)
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


def record_failure(
    engine: Engine, job: Job, window: Window, run_id: int, error: EtlError, status: str = "failed"
) -> None:
    """The ledger row of a window that did not commit: ``failed``, or ``stopped`` (abandoned
    by a stop request), with the requests it made (the hourly budget counts them)."""
    requests = job.requests.take(window)
    try:
        with engine.begin() as sa_conn:
            conn = sa_conn.connection.driver_connection
            assert isinstance(conn, psycopg.Connection)
            state.record_window(
                conn,
                run_id,
                job.api_login,
                job.prefix,
                window,
                status,
                Counts(),
                0.0,
                str(error),
                requests=requests,
            )
    except Exception:  # the database may be the thing that failed; the error is raised anyway
        log.warning(
            "could not record the %s window account=%s window=%s", status, job.api_login, window
        )
