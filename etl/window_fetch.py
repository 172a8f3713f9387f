"""Fetching one window: every page, signed, paced by the account's request budget and
retried, through the loop guards and tie guard of ``etl.pagination``, plus the checks that
only another request can make: a window whose pages no known field sorts is read a second
time (``_read_again``), and a joined window whose records stop early asks for the rest
(``_probe_the_rest``). Touches no database: it runs ahead of the loader (``etl.prefetch``),
and ``etl.window_sync`` loads what it yields.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import TYPE_CHECKING, Any

from etl.client import Page
from etl.columns import time_span
from etl.errors import ApiError, PaginationError, ResultChangedError
from etl.fields import TIME_FIELDS
from etl.pagination import OffsetPaginator, key_texts, page_digest
from etl.retry import call_with_retry
from etl.windows import Window

if TYPE_CHECKING:
    from etl.window_sync import Job

log = logging.getLogger(__name__)
# A window whose result loses records while it is paged (etl.pagination) is paged again from
# its first page, in the same transaction, this many times before it fails.
RESULT_RESTARTS = 2


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
        job.requests.count(window)
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


def latest_time(records: Sequence[Any], latest: str | None) -> str | None:
    """The latest time text among ``records`` and ``latest`` ('YYYY-MM-DD HH:MM:SS' texts sort
    as times do; see ``etl.columns.time_span``)."""
    objects = (
        records
        if set(map(type, records)) == {dict}
        else [r for r in records if isinstance(r, dict)]
    )
    found = [latest] if latest else []
    for name in TIME_FIELDS:
        span = time_span(list(map(dict.get, objects, repeat(name))))
        if span is not None:
            found.append(span[1])
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
