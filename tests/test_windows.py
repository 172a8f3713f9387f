"""Window planning."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etl.errors import UsageError
from etl.windows import MAX_WINDOWS, Coverage, Window, coalesce_count, plan_windows

aware = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(start=aware, length=st.integers(1, 10**8), data=st.data())
def test_windows_tile_the_range_without_gaps(
    start: datetime, length: int, data: st.DataObject
) -> None:
    """Windows start at the range start, share boundaries, and reach the range end."""
    size = data.draw(st.integers(max(1, length // 500), 10**7))
    end = start + timedelta(seconds=length)
    windows = list(plan_windows(start, end, timedelta(seconds=size)))
    assert windows[0].start <= start
    assert windows[-1].end >= end
    for before, after in itertools.pairwise(windows):
        assert before.end == after.start
    assert all(w.start < w.end <= w.start + timedelta(seconds=size) for w in windows)


def test_a_plan_of_too_many_windows_is_refused_before_it_is_built() -> None:
    """1-second windows over years grew memory without bound while planning: a plan of more
    than MAX_WINDOWS is one usage error naming TCXC_WINDOW and the range, raised at once."""
    start = datetime(2020, 1, 1, tzinfo=UTC)
    plan = plan_windows(start, datetime(2026, 11, 2, tzinfo=UTC), timedelta(seconds=1))
    with pytest.raises(UsageError, match=r"TCXC_WINDOW \(0:00:01\) cuts 2020-01-01.*2026-11-02"):
        next(plan)
    fits = start + timedelta(seconds=MAX_WINDOWS)
    assert sum(1 for _ in plan_windows(start, fits, timedelta(seconds=1))) == MAX_WINDOWS


def test_empty_range_is_a_usage_error() -> None:
    """A range whose end is not after its start is refused with a clear error."""
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(UsageError, match="empty"):
        list(plan_windows(moment, moment, timedelta(hours=1)))


def test_api_params_are_in_the_api_zone() -> None:
    """date_from/date_to are formatted in the API's zone, without a zone suffix; date_to a
    second past the window's end (a call on a shared boundary second is asked for by one
    request even if the API's bounds are both exclusive)."""
    from zoneinfo import ZoneInfo

    window = next(
        plan_windows(
            datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC), timedelta(days=1)
        )
    )
    params = window.api_params(ZoneInfo("America/New_York"))
    assert params == {"date_from": "2025-12-31 19:00:00", "date_to": "2026-01-01 19:00:01"}


@pytest.mark.parametrize(
    ("zone", "start", "end", "texts"),
    [
        # Ends on the last second before London's autumn change (01:59:59 BST): a second later
        # the clock reads 01:00:00 again, but the window's own times reach 01:59:59.
        (
            "Europe/London",
            "2025-10-26 00:59:59",
            "2025-10-26 01:59:59",
            ("2025-10-26 00:59:59", "2025-10-26 02:00:00"),
        ),
        # Planned in instants across the change (an incremental pass): from 01:50 BST to
        # 01:05 GMT the clock goes back; every time it shows lies in 01:00:00..01:59:59.
        (
            "Europe/London",
            "2025-10-26 00:50:00+00:00",
            "2025-10-26 01:05:00+00:00",
            ("2025-10-26 01:00:00", "2025-10-26 02:00:00"),
        ),
        # Lord Howe goes back 30 minutes at 02:00 (+11:00 -> +10:30).
        (
            "Australia/Lord_Howe",
            "2025-04-06 01:00:00",
            "2025-04-06 01:59:59",
            ("2025-04-06 01:00:00", "2025-04-06 02:00:00"),
        ),
        # No change inside: the window's texts and a second past the end.
        (
            "Europe/London",
            "2025-10-26 02:00:00",
            "2025-10-26 03:00:00",
            ("2025-10-26 02:00:00", "2025-10-26 03:00:01"),
        ),
    ],
)
def test_api_texts_cover_every_wall_clock_time_of_the_window(
    zone: str, start: str, end: str, texts: tuple[str, str]
) -> None:
    """The API filters on wall-clock texts. Where the clock goes back inside a window (or
    right after its end), the texts of its instants are not in order: date_from/date_to must
    span the earliest and the latest of them (a second past it), never an inverted or
    shortened range that the API would answer with fewer calls than the window holds."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)

    def instant(text: str) -> datetime:
        moment = datetime.fromisoformat(text)
        return moment if moment.tzinfo else moment.replace(tzinfo=tz)

    window = Window(instant(start), instant(end))
    params = window.api_params(tz)
    assert (params["date_from"], params["date_to"]) == texts
    second = timedelta(seconds=1)
    moment = window.start.astimezone(UTC)
    while moment <= window.end:  # every second's wall-clock text is asked for
        wall = moment.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
        assert texts[0] <= wall < texts[1], wall
        moment += second


DAY = timedelta(days=1)
T0 = datetime(2026, 9, 1, tzinfo=UTC)


def _days(count: int, start: datetime = T0) -> list[Window]:
    return list(plan_windows(start, start + count * DAY, DAY))


def test_nothing_is_joined_before_the_density_is_known_or_when_joining_is_off() -> None:
    assert coalesce_count(_days(30), None, 50_000, 2) == 1
    assert coalesce_count(_days(30), 0.1, 0, 2) == 1


def test_windows_are_joined_up_to_the_target_rows() -> None:
    per_day = 6_700 / 86_400  # rows per second
    assert coalesce_count(_days(30), per_day, 50_000, 1) == 7  # 7 x 6,700 = 46,900
    assert coalesce_count(_days(30), per_day, 6_700, 1) == 1
    assert coalesce_count(_days(30), per_day, 5_000, 1) == 1, "a window is never split"


def test_the_last_windows_are_shared_between_the_slots() -> None:
    """Joined windows shrink as the range runs out, so no slot is left idle at the end."""
    pending, sizes = _days(30), []
    while pending:
        take = coalesce_count(pending, 1e-9, 10**9, 4)  # no row limit: only the share bounds
        sizes.append(take)
        del pending[:take]
    assert sizes == [8, 6, 4, 3, 3, 2, 1, 1, 1, 1]
    assert sum(sizes) == 30


def test_joining_stops_at_a_gap_and_at_the_longest_span() -> None:
    gap = [*_days(3), *_days(3, T0 + 4 * DAY)]  # day 4 is done already
    assert coalesce_count(gap, 0.0, 50_000, 1) == 3
    empty_year = _days(365)
    assert coalesce_count(empty_year, 0.0, 50_000, 1) == 31  # an empty account: 31 days at most


@given(
    bounds=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 30)), max_size=8),
    probe=st.tuples(st.integers(0, 230), st.integers(1, 40)),
)
def test_coverage_is_the_union_of_committed_windows(
    bounds: list[tuple[int, int]], probe: tuple[int, int]
) -> None:
    """A window is covered exactly when each of its seconds lies in a committed window."""
    hour = timedelta(hours=1)
    committed = [(T0 + a * hour, T0 + (a + n) * hour) for a, n in bounds]
    window = Window(T0 + probe[0] * hour, T0 + (probe[0] + probe[1]) * hour)
    # (closed windows share boundaries: probe at half-hours between the whole hours)
    halves = [window.start + (k + 0.5) * hour for k in range(probe[1])] + [window.start]
    expected = all(any(s <= t <= e for s, e in committed) for t in [*halves, window.end])
    assert (window in Coverage(committed)) == expected


@pytest.mark.parametrize(
    ("zone", "day", "size"),
    [
        ("Europe/London", datetime(2026, 3, 29), timedelta(minutes=30)),  # 01:00 -> 02:00
        ("Europe/London", datetime(2026, 10, 25), timedelta(minutes=30)),  # 02:00 -> 01:00
        ("Australia/Lord_Howe", datetime(2026, 10, 4), timedelta(minutes=20)),  # a 30-min gap
        ("America/New_York", datetime(2026, 3, 8), timedelta(hours=1)),
    ],
)
def test_windows_across_a_dst_change_are_real_instants_with_contiguous_texts(
    zone: str, day: datetime, size: timedelta
) -> None:
    """Sub-day windows in a zone that changes its clocks: every bound is a time that exists
    there (a wall-clock time in the spring gap is no instant: stored, it would make a window
    end before it starts, and a resumed backfill could take a real window for done), the
    windows follow each other as instants, and their API texts still cover the day's local
    times with no gap (overlapping where the clock goes back), so the API is asked for every
    record it holds."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    start, end = day.replace(tzinfo=tz), (day + timedelta(days=1)).replace(tzinfo=tz)
    windows = list(plan_windows(start, end, size))
    for window in windows:
        for bound in (window.start, window.end):
            back = bound.astimezone(UTC).astimezone(tz)
            assert back.replace(tzinfo=None) == bound.replace(tzinfo=None), (
                f"{bound} does not exist"
            )
        assert window.start.astimezone(UTC) < window.end.astimezone(UTC), window
    for before, after in itertools.pairwise(windows):
        assert before.end.astimezone(UTC) == after.start.astimezone(UTC)
    texts = [w.api_params(tz) for w in windows]
    assert texts[0]["date_from"] == day.strftime("%Y-%m-%d %H:%M:%S")
    last = (day + timedelta(days=1, seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
    assert texts[-1]["date_to"] == last
    for before, after in itertools.pairwise(texts):  # each asks at least a second into the next
        next_from = datetime.strptime(after["date_from"], "%Y-%m-%d %H:%M:%S")
        assert before["date_to"] >= (next_from + timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
        assert after["date_from"] <= before["date_to"] < after["date_to"]
    # A resumed backfill: each planned window is covered by the committed windows only once
    # they include that window itself (its instants), never by a neighbour's.
    for k, window in enumerate(windows):
        others = Coverage(
            (w.start.astimezone(UTC), w.end.astimezone(UTC)) for w in windows if w != window
        )
        if 0 < k < len(windows) - 1:
            assert window in Coverage(
                (w.start.astimezone(UTC), w.end.astimezone(UTC)) for w in windows
            )
        assert window not in others or window.start == window.end
