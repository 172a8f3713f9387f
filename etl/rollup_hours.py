"""Which hours a window's rollup refresh must recompute (see ``etl.reporting``).

A CDR's reporting hour is its connect time (else its setup time) in the reporting zone, and a
refresh recomputes whole hours. Which time the API filters windows on is undocumented:
filtered on the end of the call, a window holds calls that connected up to their duration
before it. ``Hours`` collects, page by page, the hours of the connect and setup times of the
records a window writes (as the API wrote them, in its zone), and the hours that rows a merge
replaced had (an update can move a CDR to another hour: the old one must be recomputed too).
``ranges`` gives the spans to refresh, the window's own among them, in ascending order (each
refresh takes its days' locks in day order; ascending spans keep that order across them).

Per page, the earliest and the latest time of each column come from C-speed passes (texts in
the API's one format sort as times do). A page whose times lie further apart than NEAR (no
call lasts that long) is read record by record and its distinct hours kept one by one, so a
stray time (an epoch-zero timestamp, years away) adds its own hour, not every hour between it
and the window. (The records are read here rather than the normaliser's columns: the
normalising modules' source is part of every row's digest, see etl.rowdigest.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from itertools import repeat
from typing import Any

from etl.fields import ZERO_TIMES

HOUR = timedelta(hours=1)
NEAR = timedelta(days=2)
_LAST = HOUR - timedelta(microseconds=1)  # from an hour's start to its last instant
_REPORTING_TIMES = ("connect_time", "setup_time")
_HOUR_TEXT = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[ T]([0-9]{2})")
_ZERO = tuple(ZERO_TIMES)  # the API's "no time" (normalised to NULL)


class Hours:
    """The hours (as spans of instants) that a window's written rows report in."""

    def __init__(self, zone: tzinfo) -> None:
        self._zone = zone
        self._spans: list[list[datetime]] = []  # disjoint [first instant, last instant], sorted

    def add(self, records: Sequence[Any]) -> None:
        """The hours of a page the window writes."""
        heads: set[str] = set()
        for name in _REPORTING_TIMES:
            heads |= _earliest_and_latest(records, name)
        starts = self._starts(heads)
        if starts and starts[-1] - starts[0] <= NEAR:
            self._include([[starts[0], starts[-1] + _LAST]])
            return
        every = set().union(*(_every_head(records, name) for name in _REPORTING_TIMES))
        self._include([hour, hour + _LAST] for hour in self._starts(every))  # each on its own

    def add_stored(self, hours: Iterable[datetime]) -> None:
        """The UTC hours (their starts) of the rows a merge replaced."""
        self._include([start, start + _LAST] for start in hours)

    def ranges(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """``[start, end]`` and the hours seen, as ascending disjoint spans of instants (the
        refresh recomputes every reporting hour a span overlaps)."""
        return [(low, high) for low, high in _merged([*self._spans, [start, end]])]

    def _include(self, spans: Iterable[list[datetime]]) -> None:
        self._spans = _merged([*self._spans, *spans])

    def _starts(self, heads: Iterable[str]) -> list[datetime]:
        """The start instants (UTC) of the local hours 'YYYY-MM-DD HH', both occurrences of a
        repeated one, sorted; text that is no hour (a value its record is rejected for) is
        left out."""
        found: list[datetime] = []
        for head in heads:
            match = _HOUR_TEXT.fullmatch(head.strip())
            if match is None:
                continue
            year, month, day, hour = map(int, match.groups())
            try:
                naive = datetime(year, month, day, hour)
            except ValueError:
                continue
            found += (naive.replace(tzinfo=self._zone, fold=f).astimezone(UTC) for f in (0, 1))
        return sorted(found)


def _merged(spans: list[list[datetime]]) -> list[list[datetime]]:
    """``spans`` sorted, with overlapping or adjacent ones (an hour apart) joined."""
    merged: list[list[datetime]] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1] + HOUR:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return merged


def _earliest_and_latest(records: Sequence[Any], name: str) -> set[str]:
    """The 'YYYY-MM-DD HH' of the earliest and the latest ``name`` of ``records``; anything
    but the API's one format (a record that is no object, a time that is no string, padded
    or otherwise written) takes the slow path, every value on its own."""
    try:
        given = list(filter(None, map(dict.get, records, repeat(name))))
        if not given:
            return set()
        low, high = min(given), max(given)
        if low[:1] not in ("1", "2"):  # the zero date (or padding) sorts first: leave it out
            given = [value for value in given if not value.startswith(_ZERO)]
            if not given or not all(value[:1].isdigit() for value in given):
                raise TypeError("padded, or not a time")
            low = min(given)
        if not high[:1].isdigit() or "T" in "".join(given):
            raise TypeError("not a time, or mixed formats")
        return {low[:13], high[:13]}
    except TypeError:
        return _every_head(records, name)


def _every_head(records: Sequence[Any], name: str) -> set[str]:
    """The distinct 'YYYY-MM-DD HH' of ``name`` over ``records``, one record at a time."""
    found: set[str] = set()
    for record in records:
        value = record.get(name) if isinstance(record, dict) else None
        if isinstance(value, str) and value.strip():
            found.add(value.strip()[:13])
    return found
