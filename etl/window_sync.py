"""One window, end to end, in one transaction.

Fetch every page (signed, paced by the request budget, retried), normalise each record (bad
ones set aside), COPY the rows into a staging table, merge them into ``cdr``, refresh the
rollups of the days the window touched (when anything changed), and write the window's ledger
row, plus whatever the caller adds (the watermark), all in the same transaction.
A window that fails is rolled back as a whole and recorded as failed in its own transaction.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any, Protocol

import psycopg
from sqlalchemy import Engine

from etl import load, reporting, rollup_hours, state
from etl.budget import RequestBudget
from etl.client import ApiClient, Page
from etl.config import Settings
from etl.db import database_errors
from etl.errors import (
    ApiError,
    EtlError,
    InvalidRecordError,
    PaginationError,
    ResultChangedError,
    StopRequestedError,
)
from etl.normalize import FUTURE_LIMIT, Normalizer
from etl.pagination import OffsetPaginator, key_texts, page_digest
from etl.retry import RetryPolicy, call_with_retry
from etl.state import Counts
from etl.windows import Window

log = logging.getLogger(__name__)
# A window whose result loses records while it is paged (etl.pagination) is paged again from
# its first page, in the same transaction, this many times before it fails.
RESULT_RESTARTS = 2


def _ignore(_event: str, _kind: str) -> None:
    """The default observer: metrics are optional."""


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

    @property
    def api_login(self) -> str:
        return self.client.api_login

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
        raw=json.dumps(record, ensure_ascii=True, default=str),
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


def fetch_page(job: Job, window: Window, paginator: OffsetPaginator) -> Page:
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


Records = list[Any]  # one page's records, as parsed from the API's JSON


def fetch_window(job: Job, window: Window) -> Iterator[Records]:
    """The records of every page of ``window``, the final empty page included: fetched
    (paced, retried) and loop-guarded, not yet normalised; records a page repeats from an
    earlier one as they were are left out (etl.pagination re-reads the tie at each page's
    end), so a page may come out empty. Touches no database: it runs ahead of the loader
    (etl.prefetch)."""

    def first_page() -> OffsetPaginator:
        return OffsetPaginator(job.settings.page_size, job.settings.max_pages_per_window)

    where = f"account {job.api_login}, window {window}"
    paginator, restarts = first_page(), 0
    seen: set[str] | None = set()  # the i_cdr read, while no known field sorts the pages
    latest: str | None = None  # the latest time the window's records hold (API text)
    while not paginator.done:
        page = fetch_page(job, window, paginator)
        latest = latest_time(page.records, latest)
        try:
            records = paginator.take(page.records, page_digest(page.body))
            if seen is not None:
                seen = None if paginator.sorted_by else seen | key_texts(page.records)
        except ResultChangedError as exc:
            if restarts == RESULT_RESTARTS:
                raise exc.located(where) from None
            restarts += 1
            log.warning(
                "paging again from the first page account=%s window=%s (%d of %d): %s",
                job.api_login,
                window,
                restarts,
                RESULT_RESTARTS,
                exc,
            )
            # Pages already loaded come again: held alike, they are counted unchanged.
            paginator, seen, latest = first_page(), set(), None
            continue
        except ApiError as exc:
            raise exc.located(where) from None
        yield records
    if window.end - window.start > job.settings.window + JOIN_SLACK:  # a joined window
        _probe_the_rest(job, window, latest, where)
    if seen is not None and paginator.unordered:
        # Pages of another size: a server whose order depends on the request's own offset and
        # size cuts its pages elsewhere, and one whose order is random cuts them anew.
        other = max(1, job.settings.page_size - job.settings.page_size // 3)
        _read_again(
            job, window, OffsetPaginator(other, job.settings.max_pages_per_window), seen, where
        )


# A window longer than TCXC_WINDOW by more than this (a DST day is an hour longer) was joined.
JOIN_SLACK = timedelta(hours=1)
_TIMES = ("setup_time", "connect_time", "disconnect_time")


def latest_time(records: Sequence[Any], latest: str | None) -> str | None:
    """The latest time text among ``records`` and ``latest`` ('YYYY-MM-DD HH:MM:SS' texts sort
    as times do; values that are not strings leave a field out)."""
    found = [latest] if latest else []
    for name in _TIMES:
        try:
            found.append(max(filter(None, map(dict.get, records, repeat(name)))))
        except (TypeError, ValueError):  # not all strings (or objects), or none
            texts = [r.get(name) for r in records if isinstance(r, dict)]
            strings = [text for text in texts if isinstance(text, str) and text]
            found += [max(strings)] if strings else []
    return max(found, default=None)


def _probe_the_rest(job: Job, window: Window, latest: str | None, where: str) -> None:
    """Raise PaginationError if the API holds records in the part of a joined ``window`` after
    its records' ``latest`` time when asked for that part alone: it cut the window's requests
    short (an API may limit the date range one request covers, silently), so later records of
    the window were never read. Asked only when that part is longer than a planned window
    (the account's traffic made the window's rows expected all along it)."""
    tz = job.settings.api_timezone
    if latest is None:
        since = window.start + job.settings.window
    else:
        try:
            since = datetime.fromisoformat(latest[:19]).replace(tzinfo=tz).astimezone(UTC)
        except ValueError:
            return  # not a time: the records' own checks will say so
    if window.end - since <= job.settings.window:
        return
    rest = Window(max(since, window.start), window.end)
    page = fetch_page(job, rest, OffsetPaginator(job.settings.page_size))
    later = latest_time(page.records, None)
    if later is not None and (latest is None or later > latest):
        raise PaginationError(
            f"the window's records stop at {latest or 'its start'}, but asked for the rest of "
            f"the window alone the API returns records as late as {later}: it cuts a request's "
            "date range short, so joined windows would load less than it holds; set "
            "TCXC_WINDOW_ROWS=0 and a TCXC_WINDOW within the API's limit",
            where=where,
        )


def _read_again(
    job: Job, window: Window, paginator: OffsetPaginator, seen: set[str], where: str
) -> None:
    """Page ``window`` once more with ``paginator`` and raise PaginationError unless it holds
    the records of ``seen`` (the first reading): its pages are sorted by no field the tie
    guard knows, so only a second reading shows whether the server's order held between
    requests (one that changes per request, such as ``ORDER BY`` an hour, cuts each page
    boundary differently: records read twice, others never)."""
    log.info(
        "pages sorted by no time field or i_cdr: reading the window again to check that the "
        "order held account=%s window=%s",
        job.api_login,
        window,
    )
    again: set[str] = set()
    try:
        while not paginator.done:
            page = fetch_page(job, window, paginator)
            paginator.take(page.records, page_digest(page.body))
            again |= key_texts(page.records)
    except ApiError as exc:
        raise exc.located(where) from None
    if again != seen:
        raise PaginationError(
            f"the API's pages are ordered, but not by a time field or i_cdr, and two readings "
            f"of the window gave different records ({len(seen ^ again)} read by one only): "
            "offset paging cannot be trusted with an order that changes between requests, "
            "so the window is not taken as complete; windows that fit in one page (a larger "
            "TCXC_PAGE_SIZE, or a smaller TCXC_WINDOW with TCXC_WINDOW_ROWS=0) need no paging",
            where=where,
        )


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
                conn, run_id, job.api_login, job.prefix, window, "done", counts, duration
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


def record_failure(engine: Engine, job: Job, window: Window, run_id: int, error: EtlError) -> None:
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
