"""Window planning."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etl.errors import UsageError
from etl.windows import plan_windows

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


def test_empty_range_is_a_usage_error() -> None:
    """A range whose end is not after its start is refused with a clear error."""
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(UsageError, match="empty"):
        list(plan_windows(moment, moment, timedelta(hours=1)))


def test_api_params_are_in_the_api_zone() -> None:
    """date_from/date_to are formatted in the API's zone, without a zone suffix."""
    from zoneinfo import ZoneInfo

    window = next(
        plan_windows(
            datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC), timedelta(days=1)
        )
    )
    params = window.api_params(ZoneInfo("America/New_York"))
    assert params == {"date_from": "2025-12-31 19:00:00", "date_to": "2026-01-01 19:00:00"}
