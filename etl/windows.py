"""Window planning: how a date range is cut into the windows that are fetched one by one.

Pure: no I/O. Windows are closed intervals ``[start, end]`` passed to the API as
``date_from``/``date_to``; adjacent windows share their boundary second, so no CDR can fall
between them whatever the API's (undocumented) boundary semantics. A CDR on a boundary is
fetched twice and loaded once (the upsert is idempotent).

A run may join contiguous planned windows into one (``coalesce_count``, TCXC_WINDOW_ROWS) once
it knows the account's row density; ``Coverage`` tells which planned windows the committed
(possibly joined) windows of an interrupted backfill already cover.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache

from etl.errors import UsageError

API_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True, order=True)
class Window:
    """A closed interval of timezone-aware times, whole seconds."""

    start: datetime
    end: datetime

    def api_range(self, tz: tzinfo) -> tuple[datetime, datetime]:
        """The wall-clock times (naive, in the API's zone ``tz``) to ask for: from the
        earliest the clock shows at an instant of the window to a second past the latest.

        Usually the start's time and a second past the end's. A second past, because whether
        the API's bounds are inclusive or exclusive is undocumented: with both exclusive a
        call on the boundary second two windows share would be in neither request (asked a
        second past it, it is read twice, loaded once). Where the clock goes back inside the
        window (an autumn change), its times are not in order: the earliest is the first one
        after the change, the latest the last one before it; from the start's and the end's
        times alone the range would be shortened (ending a second after 01:59:59 BST asks up
        to 01:00:00 GMT) or inverted (a window from 01:50 BST to 01:05 GMT), and the API
        would answer with fewer calls than the window holds. Times asked for twice (the
        repeated hour) are read as the API's texts are: the first occurrence."""
        return _api_range(self.start, self.end, tz)

    def api_params(self, tz: tzinfo) -> dict[str, str]:
        """``date_from``/``date_to`` (``api_range``) in the API's format."""
        low, high = self.api_range(tz)
        return {
            "date_from": low.strftime(API_TIME_FORMAT),
            "date_to": high.strftime(API_TIME_FORMAT),
        }

    def __str__(self) -> str:
        return f"{self.start.isoformat()} .. {self.end.isoformat()}"


_SECOND = timedelta(seconds=1)
_STEP = timedelta(hours=1)  # no zone changes its offset twice within an hour


@lru_cache(maxsize=256)
def _api_range(start: datetime, end: datetime, tz: tzinfo) -> tuple[datetime, datetime]:
    first, last = _instant(start), _instant(end)
    low, high = _wall(first, tz), _wall(last, tz)
    for turn in _clock_turns_back(first, last, tz):
        low, high = min(low, _wall(turn, tz)), max(high, _wall(turn - _SECOND, tz))
    return low, high + _SECOND


def _wall(instant: datetime, tz: tzinfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def _clock_turns_back(first: datetime, last: datetime, tz: tzinfo) -> Iterator[datetime]:
    """The instants in ``(first, last]`` at which the clock of ``tz`` goes back (the first
    second shown with the smaller UTC offset)."""
    before = first
    while before < last:
        after = min(before + _STEP, last)
        offset = _offset(before, tz)

        def smaller(instant: datetime, offset: timedelta = offset) -> bool:
            return _offset(instant, tz) < offset

        if smaller(after):
            yield _first_second(before, after, smaller)
        before = after


def _first_second(
    before: datetime, after: datetime, changed: Callable[[datetime], bool]
) -> datetime:
    """The first whole second in ``(before, after]`` (instants) for which ``changed`` holds,
    given that it holds at ``after``, not at ``before``, and from some second on."""
    while after - before > _SECOND:
        middle = before + (after - before) // _SECOND // 2 * _SECOND
        if changed(middle):
            after = middle
        else:
            before = middle
    return after


def _offset(instant: datetime, tz: tzinfo) -> timedelta:
    offset = instant.astimezone(tz).utcoffset()
    assert offset is not None
    return offset


# A plan of more windows is refused before it is built (1-second windows over years grew the
# process's memory without bound): a million windows already take about 200 MB.
MAX_WINDOWS = 1_000_000


def plan_windows(start: datetime, end: datetime, size: timedelta) -> Iterator[Window]:
    """Cut ``[start, end]`` into windows of ``size`` (the last one may be shorter).

    The grid is the bounds' wall clock (a 1-day window runs midnight to midnight across a DST
    change), which keeps the API's texts contiguous. A grid time that does not exist there
    (the hour a spring change skips) becomes the first instant after that gap, and a window
    left empty by it is dropped: each bound is a real instant and the windows follow each
    other, so the ledger never holds a window that ends before it starts (nor one whose
    instants are another's, which a resumed backfill would take for done).
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("window bounds must be timezone-aware")
    if end <= start:
        raise UsageError(f"the range is empty: {start.isoformat()} is not before {end.isoformat()}")
    if size < timedelta(seconds=1):
        raise ValueError("the window size must be at least one second")
    planned = -(-(_instant(end) - _instant(start)) // size)  # (within a DST change's hour)
    if planned > MAX_WINDOWS:
        raise UsageError(
            f"TCXC_WINDOW ({size}) cuts {start.isoformat()} .. {end.isoformat()} into about "
            f"{planned:,} windows, more than {MAX_WINDOWS:,}: give a longer TCXC_WINDOW or a "
            "shorter range"
        )
    cursor = start.replace(microsecond=0)
    final = end.replace(microsecond=0) + (timedelta(seconds=1) if end.microsecond else timedelta())
    lower = _existing(cursor)
    while cursor < final:
        cursor = min(cursor + size, final)  # wall-clock arithmetic within the zone
        upper = _existing(cursor)
        if _instant(lower) < _instant(upper):
            yield Window(lower, upper)
            lower = upper


def _instant(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _zone(moment: datetime) -> tzinfo:
    assert moment.tzinfo is not None
    return moment.tzinfo


def _exists(moment: datetime) -> bool:
    return _wall(_instant(moment), _zone(moment)) == moment.replace(tzinfo=None)


def _existing(moment: datetime) -> datetime:
    """``moment`` if its wall-clock time exists in its zone, else the first instant after the
    gap that skips it (as a time of that zone)."""
    if _exists(moment):
        return moment
    # In a gap, fold=1 reads the time with the offset after the change (an instant before
    # it) and fold=0 with the one before (an instant after it): the change lies between.
    zone, wall = _zone(moment), moment.replace(tzinfo=None)
    before, after = _instant(moment.replace(fold=1)), _instant(moment.replace(fold=0))
    return _first_second(before, after, lambda instant: _wall(instant, zone) > wall).astimezone(
        zone
    )


# A coalesced window never spans more than this, however sparse the account: offset paging
# over a long window is more exposed to an unstable result set, and a failure retries it whole.
MAX_COALESCED_SPAN = timedelta(days=31)


def coalesce_count(
    pending: Sequence[Window],
    rows_per_second: float | None,
    target_rows: int,
    slots: int,
    max_span: timedelta = MAX_COALESCED_SPAN,
) -> int:
    """How many of the first ``pending`` windows the next window should cover (at least 1).

    Windows are joined while they are contiguous, while the rows they are expected to hold
    (``rows_per_second`` observed so far in the run, None if nothing is known yet) stay within
    ``target_rows``, the joined span within ``max_span``, and while enough windows are left
    for the other ``slots`` to get as much work (the last windows of a range shrink, so slots
    finish together). ``target_rows`` 0 never joins: every window is synced as planned.
    """
    if not pending or target_rows <= 0 or rows_per_second is None:
        return 1
    fair_share = -(-len(pending) // max(1, slots))  # ceil: the other slots' share of the rest
    count, expected = 1, rows_per_second * _seconds(pending[0])
    while count < min(len(pending), fair_share):
        following = pending[count]
        if following.start != pending[count - 1].end:
            break  # a gap (a window already done): never join across it
        more = rows_per_second * _seconds(following)
        if expected + more > target_rows or following.end - pending[0].start > max_span:
            break
        count, expected = count + 1, expected + more
    return count


def _seconds(window: Window) -> float:
    return (window.end - window.start).total_seconds()


class Coverage:
    """The union of committed windows: ``window in coverage`` when every second of ``window``
    lies in one committed window or in adjacent ones (windows share their boundary second)."""

    def __init__(self, intervals: Iterable[tuple[datetime, datetime]]) -> None:
        merged: list[list[datetime]] = []
        for start, end in sorted(intervals):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._starts = [start for start, _end in merged]
        self._ends = [end for _start, end in merged]

    @property
    def spans(self) -> int:
        """How many disjoint spans the windows make (overlapping or adjacent ones are one)."""
        return len(self._starts)

    def __contains__(self, window: object) -> bool:
        if not isinstance(window, Window):
            return False
        at = bisect_right(self._starts, window.start) - 1
        return at >= 0 and window.end <= self._ends[at]
