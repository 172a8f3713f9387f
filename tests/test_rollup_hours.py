"""Which hours a window's rollup refresh recomputes (etl.rollup_hours): pure, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from etl.rollup_hours import Hours

START, END = datetime(2026, 9, 24, 10, tzinfo=UTC), datetime(2026, 9, 24, 11, tzinfo=UTC)
LAST = timedelta(minutes=59, seconds=59, microseconds=999999)  # an hour's last instant


def _at(hour: int, day: int = 24) -> datetime:
    return datetime(2026, 9, day, hour, tzinfo=UTC)


def test_times_inside_the_window_leave_it_as_it_is() -> None:
    hours = Hours(ZoneInfo("UTC"))
    assert hours.ranges(START, END) == [(START, END)]
    hours.add([{"setup_time": "2026-09-24 10:05:00", "connect_time": "2026-09-24 10:05:09"}])
    assert hours.ranges(START, END) == [(START, END)]


def test_whole_hours_around_the_window_join_it() -> None:
    """Calls that connected before the window (an API filtering on their end) widen it to
    the whole hours they report in; odd values take the slow path or are left out."""
    hours = Hours(ZoneInfo("UTC"))
    hours.add(
        [
            {"setup_time": "2026-09-24 08:59:00", "connect_time": " 2026-09-24 09:00:00"},
            {"setup_time": "2026-13-45 00:00:00", "connect_time": "0000-00-00 00:00:00"},
            {"setup_time": "", "connect_time": None},
            "not a record",
        ]
    )
    hours.add([{"setup_time": "2026-09-24T13:59:59", "connect_time": 1}])
    # (hour 12 holds none of them: it is not recomputed)
    assert hours.ranges(START, END) == [(_at(8), END), (_at(13), _at(13) + LAST)]


def test_a_stray_time_years_away_adds_its_own_hour_only() -> None:
    """An epoch-zero connect time must not make the window recompute decades of hours."""
    hours = Hours(ZoneInfo("UTC"))
    hours.add(
        [
            {"setup_time": "2026-09-24 10:01:00", "connect_time": "1970-01-01 00:00:00"},
            {"setup_time": "2026-09-24 10:02:00", "connect_time": "2026-09-24 10:02:07"},
        ]
    )
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert hours.ranges(START, END) == [(epoch, epoch + LAST), (START, END)]


def test_hours_rows_had_before_a_merge_rewrote_them_are_recomputed() -> None:
    hours = Hours(ZoneInfo("UTC"))
    hours.add_stored([_at(13), _at(3, day=23)])
    assert hours.ranges(START, END) == [
        (_at(3, day=23), _at(3, day=23) + LAST),
        (START, END),
        (_at(13), _at(13) + LAST),
    ]


def test_a_repeated_local_hour_counts_both_of_its_occurrences() -> None:
    """01:00-01:59 happens twice in London on 2026-10-25 (00:00Z and 01:00Z)."""
    hours = Hours(ZoneInfo("Europe/London"))
    hours.add([{"setup_time": "2026-10-25 01:30:00", "connect_time": "2026-10-25 01:30:10"}])
    start, end = datetime(2026, 10, 26, tzinfo=UTC), datetime(2026, 10, 27, tzinfo=UTC)
    first = datetime(2026, 10, 25, 0, tzinfo=UTC)
    assert hours.ranges(start, end)[0] == (first, first + timedelta(hours=1) + LAST)
