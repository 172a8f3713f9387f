"""The load path's column checks: one field's values across a page -> COPY text fields.

Pure: no I/O. Used by ``Normalizer.normalize_page`` (etl.normalize), which works column by
column. Each fast check accepts a column only when its text is exactly what the reference
converter (``Normalizer.normalize``) would produce once PostgreSQL casts it (the same integer,
the same numeric with the same scale, the same instant); otherwise it returns None and the
column goes through the reference converters value by value. The checks run in C where they
can (a join of the column and one regular expression, set lookups, ``map``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC
from decimal import Decimal
from itertools import repeat
from math import copysign
from typing import Any

from etl import payload
from etl.fields import (
    BIGINT,
    BIGINT_MAX,
    COUNT,
    DECIMAL,
    INT_MAX,
    MAX_TEXT,
    TEXT,
    TIME,
    ZERO_TIMES,
)
from etl.pgtext import NULL, PLAIN_FLOAT, copy_escape, jsonb_text, jsonb_texts

_NULLS: dict[Any, str] = {None: NULL, "": NULL}
_NONE = type(None)
_STR_OR_NONE = frozenset({str, _NONE})
_NOT_NEGATIVE_ZERO = re.compile(r"(?!-0(?:\.0*)?$)")
_DECIMAL_TEXT = re.compile(r"-?[0-9]{1,18}(?:\.[0-9]{1,20})?")  # within the digit/scale limits
_SEP = payload.SEP  # joins a column's values for the pattern checks (no pattern matches it)
MAX_CACHED = 100_000  # entries of a page-path cache (float texts here, hour offsets)
_FLOAT_TEXTS: dict[float, str] = {}  # float -> repr(), for floats _float_texts accepts


# A column that passed its fast check: its COPY texts, a suffix every one of them takes,
# whether its values are plain JSON strings (each goes into the payload as it is, quoted), and
# which of them api_record rebuilds from the column (a state of etl.payload).
Fast = tuple[Sequence[str], str, bool, str]


def present_strings(values: Sequence[Any], pattern: re.Pattern[str]) -> tuple[Any, bool]:
    """(the values that are not NULL ('' or null), whether none is NULL) when every value is a
    string or null and the present ones, joined by _SEP, match ``pattern``; else (None, _).
    One pass over the values' objects (the join), then a scan of contiguous memory."""
    try:
        if pattern.fullmatch(_SEP.join(values)):
            return values, True
    except TypeError:  # null among them, or not strings at all
        if not set(map(type, values)) <= _STR_OR_NONE:
            return None, False
    present = list(filter(None, values))  # only None and "" are false among str/None
    return (present if not present or pattern.fullmatch(_SEP.join(present)) else None), False


def _text_column(values: Sequence[Any]) -> Fast | None:
    try:
        joined = "".join(values)
        present, full = values, "" not in values
    except TypeError:  # null among them, or not strings at all
        if not set(map(type, values)) <= _STR_OR_NONE:
            return None
        present, full = list(filter(None, values)), False
        joined = "".join(present)
    # Printable (so no NUL, tab, newline, CR or other control) and no backslash: such text
    # needs no escaping as a COPY field, nor inside a JSON string but for quotes.
    if "\\" in joined or not joined.isprintable():
        return None
    if len(joined) > MAX_TEXT and max(map(len, present)) > MAX_TEXT:
        return None
    plain = present is values and '"' not in joined
    return _nulled(values, full), "", plain, payload.present_state(full)


def _integer_column(pattern: re.Pattern[str], high: int) -> Callable[[Sequence[Any]], Fast | None]:
    def check(values: Sequence[Any]) -> Fast | None:
        present, full = present_strings(values, pattern)
        if present is not None:
            texts = _nulled(values, full)
            return texts, "", None not in values, payload.strings_state(present, full)
        if set(map(type, values)) != {int}:  # JSON numbers (bool is another type)
            return None
        if min(values) < 0 or max(values) > high:
            return None
        return list(map(str, values)), "", False, payload.NUMBERS

    return check


def _decimal_column(values: Sequence[Any]) -> Fast | None:
    present, full = present_strings(values, _DECIMALS)
    if present is not None:
        return _nulled(values, full), "", None not in values, payload.strings_state(present, full)
    types = set(map(type, values))
    if types == {float}:
        texts = _float_texts(values)  # as repr(), like the reference: plain decimals, no -0.0
    elif types <= {float, Decimal}:
        texts = _exact_number_texts(values)
    else:
        return None
    return None if texts is None else (texts, "", False, payload.NUMBERS)


def _exact_number_texts(values: Sequence[float | Decimal]) -> list[str] | None:
    """Prices parsed as Decimals (``etl.jsonparse``: a float would not give back the text
    sent, e.g. ``0.004980``) among floats: each one's digits when every value is a plain
    decimal within the limits and none is a negative zero (numeric prints what jsonb keeps),
    else None (the reference reads them)."""
    texts = [repr(value) if type(value) is float else str(value) for value in values]
    if all(map(_DECIMAL_TEXT.fullmatch, texts)) and all(map(_NOT_NEGATIVE_ZERO.match, texts)):
        return texts
    return None


def json_copy_texts(values: Sequence[Any], bad: set[int]) -> list[str]:
    """The values in jsonb's output form, as COPY fields."""
    if set(map(type, values)) == {float}:
        texts = _float_texts(values)
        if texts is not None:
            return texts
    try:
        return raw_copy_texts(jsonb_texts(values), bad)
    except TypeError:  # e.g. an integer beyond 64 bits: ``normalize`` rejects the record
        return raw_copy_texts(payload_texts(values, bad), bad)


def _float_texts(values: Sequence[float]) -> list[str] | None:
    """repr() of each float when every one is a plain decimal within the numeric limits (so
    it is also how jsonb prints it), else None. Cached: prices repeat across a page.

    -0.0 equals 0.0 and hashes alike, so the cache (and a set) would take one for the other: a
    page holding a negative zero goes value by value (its repr is not a plain decimal)."""
    if 0.0 in values and any(value == 0.0 and copysign(1.0, value) < 0 for value in values):
        return None
    texts: list[str | None] = list(map(_FLOAT_TEXTS.get, values))
    if None in texts:
        if len(_FLOAT_TEXTS) > MAX_CACHED:
            _FLOAT_TEXTS.clear()
        for value in set(values):  # (the cache is shared by worker threads: no iterating it)
            text = repr(value)
            if (
                value not in _FLOAT_TEXTS
                and _DECIMAL_TEXT.fullmatch(text)
                and PLAIN_FLOAT.fullmatch(text)
            ):
                _FLOAT_TEXTS[value] = text
        texts = list(map(_FLOAT_TEXTS.get, values))
        if None in texts:
            return None
    return texts  # type: ignore[return-value]  # no None left


def _nulled(values: Sequence[Any], full: bool) -> Sequence[str]:
    """The values as COPY fields ('' and null as NULL); ``full``: there is none of those."""
    return values if full else [_NULLS.get(value, value) for value in values]


def with_nulls(values: Sequence[Any], texts: list[str]) -> Sequence[str]:
    """``texts`` (one per present value) spread back over ``values`` with NULLs between."""
    if len(texts) == len(values):
        return texts
    found = iter(texts)
    return [NULL if value is None or value == "" else next(found) for value in values]


def positive_ids(texts: Sequence[str]) -> bool:
    """No i_cdr is missing or zero (those records are rejected by ``normalize``)."""
    return NULL not in texts and "" not in map(str.lstrip, texts, repeat("0"))


def _repeated(item: str) -> re.Pattern[str]:
    """Matches ``item`` (a pattern without groups) once or more, separated by _SEP."""
    return re.compile(f"(?:{item})(?:{_SEP}(?:{item}))*")


_DECIMALS = _repeated(r"-?[0-9]{1,18}(?:\.[0-9]{1,20})?")  # within the digit and scale limits
TIMES = _repeated("[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-5][0-9]:[0-5][0-9]")
FAST_CHECKS: dict[str, Callable[[Sequence[Any]], Fast | None]] = {
    TEXT: _text_column,
    BIGINT: _integer_column(_repeated("[0-9]{1,18}"), BIGINT_MAX),  # 18 digits fit a bigint
    COUNT: _integer_column(_repeated("[0-9]{1,9}"), INT_MAX),  # 9 digits fit an integer
    DECIMAL: _decimal_column,
}


def typed_text(kind: str, value: Any) -> str:
    """A typed value of ``normalize`` as COPY text PostgreSQL reads back as the same value."""
    if value is None:
        return NULL
    if kind == TEXT:
        return copy_escape(value)
    if kind == TIME:
        return str(value.astimezone(UTC).isoformat())
    return str(value)  # int, or Decimal (str keeps its digits and exponent: the same scale)


def payload_texts(raws: Sequence[Any], bad: set[int]) -> list[str]:
    """Each raw payload in jsonb's output form; one orjson would refuse puts its record in bad."""
    texts: list[str] = []
    for index, raw in enumerate(raws):
        try:
            texts.append(jsonb_text(raw))
        except TypeError:
            bad.add(index)
            texts.append("{}")
    return texts


# A NUL character as JSON writes it (jsonb cannot hold one): \u0000 after an even number of
# backslashes; after an odd number, the backslash before "u0000" is itself escaped text.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def holds_nul(json_text: str) -> bool:
    """Whether JSON text holds a NUL character (a substring test first, at C speed)."""
    return "\\u0000" in json_text and _NUL_ESCAPE.search(json_text) is not None


def raw_copy_texts(texts: list[str], bad: set[int]) -> list[str]:
    """Payload texts as COPY fields; one holding a NUL character puts its record in bad."""
    joined = "".join(texts)
    if holds_nul(joined):  # the reference refuses these (see ``normalize``)
        bad.update(index for index, text in enumerate(texts) if holds_nul(text))
    if "\\" in joined:
        return [text.replace("\\", "\\\\") for text in texts]
    return texts


def time_span(values: Sequence[Any]) -> tuple[str, str] | None:
    """The earliest and latest string of a column that is a time (not empty, not the zero
    date); None when there is none."""
    try:
        lo, hi = min(values), max(values)
        if isinstance(lo, str) and lo and lo not in ZERO_TIMES:  # ("0000-..." sorts first)
            return lo, hi
    except (TypeError, ValueError):  # nulls or other types among them; or no values
        pass
    present = [v for v in values if isinstance(v, str) and v and v not in ZERO_TIMES]
    return (min(present), max(present)) if present else None
