"""Normalisation: raw API records into typed rows, or an InvalidRecordError.

Pure: no I/O. The API sends most values as JSON strings ("duration": "7"), the two
billing prices as JSON numbers, and '' or null for absent values. Every documented field
becomes a typed column (integers, exact decimals, timezone-aware times in the API's zone,
'' -> NULL); unknown extra fields are kept in the raw payload and reject a row only when
PostgreSQL cannot store them (a NUL character, an integer beyond 64 bits, a string that is
not valid Unicode). JSON numbers come from ``etl.jsonparse`` as exact floats or Decimals.

Two outputs, one meaning:
- ``Normalizer.normalize(record)``: one record -> one tuple of typed Python values. It is the
  reference: every rule and every reject reason lives here.
- ``Normalizer.normalize_page(records)``: a whole page -> the same rows as lines of
  PostgreSQL's COPY text format (which PostgreSQL casts to exactly those typed values), plus
  the rejects with their reasons. This is the load path: it works column by column with
  the checks of ``etl.columns``, which run in C (a regular expression over a joined column,
  set lookups, ``map``), so the
  common, well-formed page never builds a Decimal or a datetime. A value the fast checks do
  not vouch for goes through the reference converters; a record they refuse goes through
  ``normalize``, which rejects it with its reason (or, if it accepts it, gives its row).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from etl import payload, rowdigest
from etl.columns import (
    FAST_CHECKS,
    MAX_CACHED,
    TIMES,
    Fast,
    holds_nul,
    json_copy_texts,
    payload_texts,
    positive_ids,
    present_strings,
    raw_copy_texts,
    time_span,
    typed_text,
    with_nulls,
)
from etl.errors import InvalidRecordError
from etl.fields import (
    API_KEY_SET,
    API_KEYS,
    BIGINT,
    BIGINT_MAX,
    COUNT,
    DECIMAL,
    FIELD_KINDS,
    FIELDS,
    INT_MAX,
    MAX_TEXT,
    TEXT,
    TIME,
    ZERO_TIMES,
)
from etl.jsonparse import json_number
from etl.pgtext import (
    NULL,
    copy_escape,
    join_parts,
    jsonb_object_parts,
    jsonb_text,
    utc_offset_text,
)

# How far past the sync a record's time may lie (a clock or zone set wrong at either end)
# before the record is set aside: a call cannot have happened later than it was fetched, and
# one stray year-2099 CDR would take over every "latest day" of the reporting views.
FUTURE_LIMIT = timedelta(days=1)
# The most a record's setup, connect and disconnect times may lie apart: a call rings for
# seconds and lasts hours at most, so times days apart are not one call's (and would hide the
# row from ``verify``, which finds a period's rows through connect_time within this of it).
MAX_SPREAD = timedelta(days=2)
_SPREAD_FIELDS = tuple(i for i, name in enumerate(FIELDS) if FIELD_KINDS[name] == TIME)
# Reporting places a CDR by its connect_time, else its setup_time (etl.reporting): a record
# with neither would be counted by `report` and by no rollup, view or verify day.
_SETUP, _CONNECT = FIELDS.index("setup_time"), FIELDS.index("connect_time")
_NO_TIME = frozenset({None, "", *ZERO_TIMES})
# Amounts and prices: at most 30 digits before the point and 20 after it (a rate, or an amount
# computed from one, can have 14 decimals; the columns are unbounded numeric).
MAX_INTEGER_DIGITS = 30
MAX_DECIMAL_SCALE = 20
# ASCII digits and spaces only: Python's int(), Decimal() and str.strip() also take other
# scripts' digits (Arabic-Indic, fullwidth), '_' grouping and Unicode spaces, none of which
# the API writes.
_INT_RE = re.compile(r"[+-]?[0-9]{1,19}")
_NUMBER_RE = re.compile(  # (NaN and infinities get through to be named "not a finite number")
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:s?nan|inf|infinity))"
)
_TIME_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[ T]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?"
)
_SPACES = " \t\n\r\f\v"


def _text(value: Any) -> str | None:
    if isinstance(value, (bool, dict | list)):
        raise ValueError("is not text")
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        raise ValueError("contains a NUL byte")
    if len(text) > MAX_TEXT:
        raise ValueError(f"is longer than {MAX_TEXT} characters")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: see etl.jsonparse
            raise ValueError(
                "is not valid Unicode (an unpaired surrogate, or a byte that is not UTF-8)"
            ) from None
    return text


def _integer(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise ValueError("is not an integer")
    if isinstance(value, int):
        number = value
    elif _is_integral(value):
        number = int(value)
    else:
        raise ValueError(f"is not an integer: {_preview(value)}")
    if not low <= number <= high:
        raise ValueError(f"is out of range ({number})")
    return number


def _is_integral(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, Decimal):  # a JSON number whose float would not be exact
        return value.is_finite() and value == value.to_integral_value()
    return isinstance(value, str) and _INT_RE.fullmatch(value.strip(_SPACES)) is not None


def _bigint(value: Any) -> int:
    return _integer(value, 0, BIGINT_MAX)


def _count(value: Any) -> int:
    return _integer(value, 0, INT_MAX)


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise ValueError(f"is not a number: {_preview(value)}")
    text = repr(value) if isinstance(value, float) else str(value).strip(_SPACES)
    if isinstance(value, str) and not _NUMBER_RE.fullmatch(text):
        raise ValueError(f"is not a number: {_preview(value)}")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"is not a number: {_preview(value)}") from None
    if not number.is_finite():
        raise ValueError("is not a finite number")
    _sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    if -exponent > MAX_DECIMAL_SCALE:
        raise ValueError(f"has more than {MAX_DECIMAL_SCALE} decimal places: {_preview(value)}")
    if len(digits) + exponent > MAX_INTEGER_DIGITS:
        raise ValueError(f"is too large: {_preview(value)}")
    return number


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    TEXT: _text,
    BIGINT: _bigint,
    COUNT: _count,
    DECIMAL: _decimal,
}
# Columns of a normalised row: the documented fields, the account, the raw payload.
# (payload_digest: see etl.rowdigest.)
ROW_COLUMNS: tuple[str, ...] = (*FIELDS, "api_login", "payload_digest", "raw")


class Normalizer:
    """Turns raw records of one account into rows of ROW_COLUMNS; holds no state per row."""

    def __init__(
        self,
        api_login: str,
        tz: ZoneInfo,
        raw_payload: str = payload.COMPACT,
        latest: datetime | None = None,
    ) -> None:
        """``latest``: a record holding a later time is rejected (the sync passes its own time
        plus FUTURE_LIMIT; None: no bound)."""
        if raw_payload not in payload.MODES:
            raise ValueError(f"unknown raw payload mode {raw_payload!r}")
        if latest is not None and latest.tzinfo is None:
            raise ValueError("latest must be timezone-aware")
        self.api_login = api_login
        self.tz = tz
        self.raw_payload = raw_payload
        self._latest = latest
        # The page path vouches for a time column whose texts are all at most this one: three
        # hours before ``latest`` in local text, more than any DST shift between text and
        # instant. Other columns take the reference path, which compares instants.
        self._latest_text = (
            None
            if latest is None
            else (latest - timedelta(hours=3)).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
        )
        zone = str(tz)  # the IANA key of a ZoneInfo; "UTC" for datetime.UTC
        self._utc = zone in payload.UTC_ZONES
        self._digester = rowdigest.Digester(api_login, zone, raw_payload)
        self._login_text = copy_escape(api_login)
        # "YYYY-MM-DD HH" (local) -> the UTC offset text every second of that hour has, or ""
        # when the hour cannot take the fast path (invalid, out of range, DST change inside).
        self._hour_offsets: dict[str, str] = {}

    def normalize(self, record: Any) -> tuple[Any, ...]:
        """Return one typed row, or raise InvalidRecordError saying why not."""
        if not isinstance(record, dict):
            raise InvalidRecordError(f"record is a JSON {type(record).__name__}, not an object")
        fields, extra = _split_fields(record)
        if fields.get("i_cdr") in (None, ""):
            raise InvalidRecordError("i_cdr is missing")
        values = [self._convert(name, fields.get(name)) for name in FIELDS]
        if values[0] == 0:
            raise InvalidRecordError("i_cdr is 0")
        if values[_SETUP] is None and values[_CONNECT] is None:
            raise InvalidRecordError(
                "has no setup_time and no connect_time: it belongs to no reporting period"
            )
        _check_spread(values)
        raw = self._payload(record, extra)
        try:
            raw_json = orjson.dumps(raw, default=json_number).decode()
        except TypeError as exc:  # orjson refuses e.g. integers beyond 64 bits
            raise InvalidRecordError(f"payload cannot be stored as JSON: {exc}") from None
        if holds_nul(raw_json):
            raise InvalidRecordError("payload contains a NUL character")
        return (*values, self.api_login, self._digester.digest(record), raw_json)

    def _payload(self, record: dict[str, Any], extra: dict[str, Any]) -> Any:
        """What ``cdr.raw`` keeps of ``record`` (see ``etl.payload``)."""
        if self.raw_payload == payload.FULL:
            return record
        return payload.compact(record, self._utc) if self.raw_payload == payload.COMPACT else extra

    def _convert(self, name: str, value: Any) -> Any:
        if value is None or value == "":
            return None
        kind = FIELD_KINDS[name]
        try:
            if kind == TIME:
                return self._time(value)
            return _CONVERTERS[kind](value)
        except ValueError as exc:
            raise InvalidRecordError(f"{name} {exc}") from None

    def _time(self, value: Any) -> datetime | None:
        if not isinstance(value, str):
            raise ValueError(f"is not a date-time: {_preview(value)}")
        text = value.strip(_SPACES)
        if text in ZERO_TIMES:
            return None
        match = _TIME_RE.fullmatch(text)
        if not match:
            raise ValueError(f"is not a 'YYYY-MM-DD HH:MM:SS' time: {_preview(value)}")
        year, month, day, hour, minute, second, fraction = match.groups()
        micro = int((fraction or "0").ljust(6, "0"))
        try:
            local = datetime(
                int(year), int(month), int(day), int(hour), int(minute), int(second), micro
            )
        except ValueError:
            raise ValueError(f"is an impossible date: {_preview(value)}") from None
        aware = local.replace(tzinfo=self.tz)
        roundtrip = aware.astimezone(UTC).astimezone(self.tz).replace(tzinfo=None)
        if roundtrip != local:
            raise ValueError(f"does not exist in time zone {self.tz.key}: {_preview(value)}")
        if not 1900 <= local.year <= 2200:
            raise ValueError(f"is out of range: {_preview(value)}")
        if self._latest is not None and aware > self._latest:
            bound = self._latest.astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S")
            raise ValueError(f"is in the future (later than {bound}): {_preview(value)}")
        return aware

    def digests(self, records: Sequence[Any]) -> list[bytes]:
        """Each record's ``payload_digest`` (see ``etl.rowdigest``)."""
        return self._digester.digests(records)

    def normalize_page(
        self, records: Sequence[Any], digests: Sequence[bytes] | None = None
    ) -> NormalizedPage:
        """The page's rows as COPY text lines (in page order) and its rejects with reasons."""
        count = len(records)
        if count == 0:
            return NormalizedPage("", 0, [])
        columns, raws, bad = self._field_columns(records)
        parts: list[str | Sequence[str]] = []  # a line: constant texts and per-record columns
        plain: list[bool] = []  # per field: are its values plain JSON strings?
        rebuilt: list[str] = []  # per field: which values api_record rebuilds (etl.payload)
        timed = False  # does every record have a setup time? (then none is timeless)
        for (name, kind), values in zip(FIELD_KINDS.items(), columns, strict=True):
            found = FAST_CHECKS[kind](values) if kind != TIME else self._time_column(values)
            if found is None or (name == "i_cdr" and not positive_ids(found[0])):
                found = self._exact_column(name, values, bad), "", False, payload.CHECK
            elif name == "setup_time":  # real times all (no null: found[2]; no '')
                timed = found[2] and "" not in values
            parts += [found[0], found[1] + "\t"]
            plain.append(found[2])
            rebuilt.append(payload.column_state(name, found[3]))
        bad |= self._far_apart(columns, bad) | (set() if timed else _timeless(columns))
        if digests is None:
            digests = self.digests(records)
        parts += [self._login_text + "\t", rowdigest.copy_texts(digests), "\t"]
        if raws is not None:
            parts.append(raw_copy_texts(payload_texts(raws, bad), bad))
        elif self.raw_payload == payload.COMPACT:  # the usual page: what the columns miss
            texts = payload.page_texts(columns, rebuilt, self._utc, bad)
            parts.append(texts if isinstance(texts, str) else raw_copy_texts(texts, bad))
        elif self.raw_payload == payload.FULL:  # the usual page: the fields are the payload
            json = [
                v if p else json_copy_texts(v, bad) for v, p in zip(columns, plain, strict=True)
            ]
            parts += jsonb_object_parts(API_KEYS, json, plain)
        else:
            parts.append("{}")
        parts.append("\n")
        lines = join_parts(parts)
        rejects: list[tuple[Any, str]] = []
        if bad:
            lines = self._redo_bad(records, lines, bad, rejects)
        return NormalizedPage("".join(lines), len(lines), rejects)

    def _redo_bad(
        self, records: Sequence[Any], lines: list[str], bad: set[int], rejects: list[Any]
    ) -> list[str]:
        """Lines with each record in ``bad`` redone by ``normalize``: rejected, or its row."""
        kept: list[str] = []
        for index, line in enumerate(lines):
            if index not in bad:
                kept.append(line)
                continue
            try:
                kept.append(self._typed_line(self.normalize(records[index])) + "\n")
            except InvalidRecordError as exc:
                rejects.append((records[index], exc.reason))
        return kept

    def _field_columns(
        self, records: Sequence[Any]
    ) -> tuple[list[Sequence[Any]], list[Any] | None, set[int]]:
        """Each documented field's values across the page, in FIELDS order; the raw payloads
        (None when every record has exactly the documented keys: the fields are the payload);
        the indexes of records that cannot be split into fields."""
        keys = _same_documented_keys(records)
        if keys is not None:  # the usual page: read the values in place, in the keys' order
            columns = list(zip(*map(dict.values, records), strict=True))
            return [columns[keys.index(key)] for key in API_KEYS], None, set()
        rows: list[tuple[Any, ...]] = []
        raws: list[Any] = []
        bad: set[int] = set()
        for index, record in enumerate(records):
            try:
                if not isinstance(record, dict):
                    raise InvalidRecordError("not an object")
                fields, extra = _split_fields(record)
            except InvalidRecordError:
                bad.add(index)
                rows.append(_NULL_ROW)
                raws.append({})
                continue
            rows.append(tuple(map(fields.get, FIELDS)))
            raws.append(self._payload(record, extra))
        return list(zip(*rows, strict=True)), raws, bad

    def _far_apart(self, columns: Sequence[Sequence[Any]], bad: set[int]) -> set[int]:
        """The records whose times lie more than MAX_SPREAD apart (``normalize`` rejects
        them). The usual page's times all lie within a few hours: one look at the earliest and
        latest text of the page settles it; otherwise each record is read as the reference
        reads it."""
        spans = [time_span(columns[i]) for i in _SPREAD_FIELDS]
        texts = [text for span in spans if span for text in span]
        if texts:
            try:
                lo, hi = (datetime.fromisoformat(t[:19]) for t in (min(texts), max(texts)))
                if hi - lo < MAX_SPREAD - timedelta(hours=3):  # more than any DST shift
                    return set()
            except ValueError:
                pass  # a text the time checks refuse: its record is read below
        far: set[int] = set()
        for index in range(len(columns[0])):
            if index in bad:
                continue
            try:
                times = [self._convert(FIELDS[i], columns[i][index]) for i in _SPREAD_FIELDS]
                _check_spread(times)
            except InvalidRecordError:
                far.add(index)
        return far

    def _time_column(self, values: Sequence[Any]) -> Fast | None:
        """Naive 'YYYY-MM-DD HH:MM:SS' local times + the UTC offset of their hour, or None."""
        present, full = present_strings(values, TIMES)
        if present is None:
            return None
        if self._latest_text is not None and present and max(present) > self._latest_text:
            return None  # near or past ``latest``: the reference compares the instants
        heads = list(map(_HEAD, present))
        offsets = self._hour_offsets
        distinct = set(heads)
        if not offsets.keys() >= distinct:
            if len(offsets) > MAX_CACHED:
                offsets.clear()
            for head in distinct - offsets.keys():
                offsets[head] = self._hour_offset(head)
        suffixes = {offsets[head] for head in distinct}
        if "" in suffixes:
            return None
        plain = None not in values
        state = payload.present_state(full) if self._utc else payload.CHECK
        if len(suffixes) == 1 and full:  # one offset for the whole column
            return values, suffixes.pop(), plain, state
        texts = list(map(operator.add, present, map(offsets.__getitem__, heads)))
        return with_nulls(values, texts), "", plain, state

    def _hour_offset(self, head: str) -> str:
        """The offset text shared by every second of local hour ``head``, or ""."""
        if not _HOUR_RE.fullmatch(head):
            return ""
        try:
            first = datetime(int(head[:4]), int(head[5:7]), int(head[8:10]), int(head[11:13]))
        except ValueError:
            return ""
        if not 1900 <= first.year <= 2200:
            return ""
        texts = {self._offset_text(first), self._offset_text(first.replace(minute=59, second=59))}
        # Both ends exist and share one offset: no zone changes its offset twice in an hour.
        return texts.pop() if len(texts) == 1 else ""

    def _offset_text(self, local: datetime) -> str:
        aware = local.replace(tzinfo=self.tz)
        if aware.astimezone(UTC).astimezone(self.tz).replace(tzinfo=None) != local:
            return ""  # inside a DST gap
        offset = aware.utcoffset()
        assert offset is not None
        return utc_offset_text(offset)

    def _exact_column(self, name: str, values: Sequence[Any], bad: set[int]) -> list[str]:
        """A column through the reference converters; records with a bad value join ``bad``."""
        texts: list[str] = []
        kind = FIELD_KINDS[name]
        for index, value in enumerate(values):
            if index in bad:
                texts.append(NULL)
                continue
            try:
                typed = self._convert(name, value)
            except InvalidRecordError:
                typed = None
                bad.add(index)
            if name == "i_cdr" and not typed:
                bad.add(index)  # missing or 0: ``normalize`` says which
            texts.append(typed_text(kind, typed))
        return texts

    def _typed_line(self, row: Sequence[Any]) -> str:
        """One row of ``normalize`` as a COPY text line."""
        fields = map(typed_text, FIELD_KINDS.values(), row)
        digest, raw = rowdigest.copy_texts([row[-2]])[0], jsonb_text(orjson.loads(row[-1]))
        return "\t".join((*fields, self._login_text, digest, copy_escape(raw)))


@dataclass(frozen=True)
class NormalizedPage:
    """One page, normalised: ``copy_text`` holds one COPY text line per accepted record, in
    page order, with the columns of ROW_COLUMNS; ``rejects`` holds (record, reason) pairs."""

    copy_text: str
    rows: int
    rejects: list[tuple[Any, str]] = field(default_factory=list)


def _timeless(columns: Sequence[Sequence[Any]]) -> set[int]:
    """The records with no setup time (null, '' or the zero date) and no connect time:
    ``normalize`` rejects them. (One look at each setup time: about 0.2 ms a page; skipped
    when the setup times passed the page path's time check, zero dates fail it, with no
    null nor '' among them.)"""
    setup, connect = columns[_SETUP], columns[_CONNECT]
    return {i for i, (s, c) in enumerate(zip(setup, connect, strict=True)) if _none(s) and _none(c)}


def _none(value: Any) -> bool:
    """Whether the time value is read as no time (as ``Normalizer._time`` reads it)."""
    return value is None or (isinstance(value, str) and value.strip(_SPACES) in _NO_TIME)


def _check_spread(values: Sequence[Any]) -> None:
    """Raise InvalidRecordError if the record's times (of ``values``, all fields or only the
    time fields) lie more than MAX_SPREAD apart."""
    times = [v.astimezone(UTC) for v in values if isinstance(v, datetime)]
    if times and max(times) - min(times) > MAX_SPREAD:
        raise InvalidRecordError(
            f"setup_time, connect_time and disconnect_time lie more than {MAX_SPREAD.days}"
            " days apart"
        )


def _same_documented_keys(records: Sequence[Any]) -> tuple[str, ...] | None:
    """The records' keys when every record is a dict holding exactly the documented fields
    (spelt as the API does), all in one order; else None."""
    first = records[0]
    if type(first) is not dict or len(first) != len(API_KEYS):
        return None
    keys = tuple(first)
    if set(keys) != API_KEY_SET or set(map(type, records)) != {dict}:
        return None
    return keys if all(map(keys.__eq__, map(tuple, records))) else None


def _split_fields(record: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Documented fields by lower-case name, and the unknown extra fields."""
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in record.items():
        name = key.lower() if isinstance(key, str) else key
        if name in FIELD_KINDS:
            if name in fields and fields[name] != value:
                raise InvalidRecordError(f"field {name} appears twice with different values")
            fields[name] = value
        else:
            extra[key] = value
    return fields, extra


# Time columns (Normalizer._time_column): an hour's local times share one UTC offset.
_HOUR_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}")
_HEAD = operator.itemgetter(slice(0, 13))  # "YYYY-MM-DD HH"
# The fields of a record that cannot be split into fields (``normalize`` rejects it).
_NULL_ROW: tuple[Any, ...] = (None,) * len(FIELDS)
