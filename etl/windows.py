"""Window planning: how a date range is cut into the windows that are fetched one by one.

Pure: no I/O. Windows are closed intervals ``[start, end]`` passed to the API as
``date_from``/``date_to``; adjacent windows share their boundary second, so no CDR can fall
between them whatever the API's (undocumented) boundary semantics. A CDR on a boundary is
fetched twice and loaded once (the upsert is idempotent).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from etl.errors import UsageError

API_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True, order=True)
class Window:
    """A closed interval of timezone-aware times, whole seconds."""

    start: datetime
    end: datetime

    def api_params(self, tz: object) -> dict[str, str]:
        """``date_from``/``date_to`` in the API's time zone and format."""
        return {
            "date_from": self.start.astimezone(tz).strftime(API_TIME_FORMAT),  # type: ignore[arg-type]
            "date_to": self.end.astimezone(tz).strftime(API_TIME_FORMAT),  # type: ignore[arg-type]
        }

    def __str__(self) -> str:
        return f"{self.start.isoformat()} .. {self.end.isoformat()}"


def plan_windows(start: datetime, end: datetime, size: timedelta) -> Iterator[Window]:
    """Cut ``[start, end]`` into windows of ``size`` (the last one may be shorter)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("window bounds must be timezone-aware")
    if end <= start:
        raise UsageError(f"the range is empty: {start.isoformat()} is not before {end.isoformat()}")
    if size < timedelta(seconds=1):
        raise ValueError("the window size must be at least one second")
    cursor = start.replace(microsecond=0)
    final = end.replace(microsecond=0) + (timedelta(seconds=1) if end.microsecond else timedelta())
    while cursor < final:
        upper = min(cursor + size, final)
        yield Window(cursor, upper)
        cursor = upper
