"""What ``cdr.raw`` keeps of each record (TCXC_RAW_PAYLOAD), and the ``compact`` mode's rule.

- ``compact`` (the default): only what the typed columns cannot give back: the undocumented
  fields, and each documented field whose value the SQL function ``api_record(cdr)``
  (migration 0003) would not rebuild exactly from its column: null or '' (both are NULL in
  the column), a number sent as a string or a string sent as a number, leading zeros, a plus
  sign, an exponent, a negative zero, a time with a fraction or in a zone other than UTC...
  ``api_record`` gives back the whole record, equal as jsonb to what ``full`` stores. A
  record that spells a documented field otherwise than the API (``cld`` for ``CLD``) is kept
  whole, wrapped in a one-element array, and ``api_record`` unwraps it. On the API's usual
  page almost every value is rebuilt, so a row's payload is ``{}`` or a few nulls: the table
  is about a third of ``full``'s size and loads much faster (README, Performance).
- ``full``: the whole record as the API sent it.
- ``extra``: only the undocumented fields; the documented ones are what the columns say
  (``api_record`` rebuilds them in the API's usual spelling, which may differ from the text
  sent).

The rule errs one way only: a value it is not sure of stays in the payload (costing bytes);
a value it drops is one ``api_record`` rebuilds exactly (a property test runs it through
PostgreSQL). Times are dropped only when TCXC_API_TIMEZONE is UTC, so rebuilding never
depends on a time zone database.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from etl.fields import (
    API_KEY_SET,
    API_KEYS,
    BIGINT,
    COUNT,
    FIELD_KINDS,
    FIELDS,
    NUMBER_FIELDS,
    TEXT,
    TIME,
    ZERO_TIMES,
)
from etl.pgtext import jsonb_text

COMPACT, FULL, EXTRA = "compact", "full", "extra"
MODES = (COMPACT, FULL, EXTRA)
UTC_ZONES = frozenset({"UTC", "Etc/UTC"})

# What PostgreSQL prints for a bigint or integer; for a numeric (the scale kept, no negative
# zero: '-0.00' prints '0.00'); and what ``api_record`` prints for a time.
_INTEGER = r"0|[1-9][0-9]*"
_DECIMAL = r"(?:0|[1-9][0-9]*)(?:\.[0-9]+)?|-(?:[1-9][0-9]*(?:\.[0-9]+)?|0\.[0-9]*[1-9][0-9]*)"
_TIME = r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}"
SEP = "\x1f"  # joins a column's values for the pattern checks here and in etl.normalize
_NAMES = dict(zip(API_KEYS, FIELDS, strict=True))


def _one(item: str) -> re.Pattern[str]:
    return re.compile(f"(?:{item})")


_PATTERNS = {BIGINT: _one(_INTEGER), COUNT: _one(_INTEGER), TIME: _one(_TIME)}
_DECIMAL_RE = _one(_DECIMAL)


def rebuilt(name: str, value: Any, utc: bool) -> bool:
    """Whether ``api_record`` gives back ``value`` of documented field ``name`` (sent under
    the API's spelling) from its column, for a record that normalisation accepts."""
    if name in NUMBER_FIELDS:
        if type(value) is float:
            return _DECIMAL_RE.fullmatch(repr(value)) is not None
        # an int, or a Decimal (a number whose float would not be exact): its digits as sent
        return type(value) in (int, Decimal) and _DECIMAL_RE.fullmatch(str(value)) is not None
    if type(value) is not str or not value:
        return False
    kind = FIELD_KINDS[name]
    if kind == TEXT:
        return True
    if kind == TIME and (not utc or value in ZERO_TIMES):
        return False
    return _PATTERNS.get(kind, _DECIMAL_RE).fullmatch(value) is not None


def compact(record: dict[str, Any], utc: bool) -> Any:
    """The payload ``compact`` keeps of ``record`` (a dict with string keys)."""
    if any(
        isinstance(key, str) and key not in API_KEY_SET and key.lower() in FIELD_KINDS
        for key in record
    ):
        return [record]  # a documented field spelt otherwise: kept whole
    return {
        key: value
        for key, value in record.items()
        if key not in API_KEY_SET or not rebuilt(_NAMES[key], value, utc)
    }


# Which values of a column ``api_record`` rebuilds, as the page path's fast checks found them:
# every one; every one but the NULLs ('' and null); or ask ``rebuilt`` value by value. NUMBERS:
# the values are JSON numbers (rebuilt only in NUMBER_FIELDS), turned into one of the three by
# ``column_state``.
ALL, NULLS, CHECK, NUMBERS = "all", "nulls", "check", "numbers"
# A plain-decimal string (as the fast checks accept them) that a column prints otherwise: a
# leading zero, or a negative zero; searched in the values joined between separators (a
# literal first character lets the search skip ahead at C speed).
_LEADING_ZERO = re.compile(f"{SEP}-?0[0-9]")
_NEGATIVE_ZERO = re.compile(f"{SEP}-0(?:\\.0+)?{SEP}")


def present_state(full: bool) -> str:
    """The state of a column whose present values are all rebuilt; ``full``: none is NULL."""
    return ALL if full else NULLS


def strings_state(present: Sequence[str], full: bool) -> str:
    """The state of a column of digit strings (optionally signed, with a fraction)."""
    joined = SEP + SEP.join(present) + SEP
    if _LEADING_ZERO.search(joined) or ("-" in joined and _NEGATIVE_ZERO.search(joined)):
        return CHECK
    return present_state(full)


def column_state(name: str, state: str) -> str:
    """``state`` for field ``name``: the API sends prices as numbers, the rest as strings."""
    if name in NUMBER_FIELDS:
        return ALL if state == NUMBERS else CHECK
    return CHECK if state == NUMBERS else state


def page_texts(
    columns: Sequence[Sequence[Any]], states: Sequence[str], utc: bool, bad: set[int]
) -> str | list[str]:
    """The ``compact`` payloads (jsonb text) of a page whose records hold exactly the
    documented fields, from its columns (in API_KEYS order) and their states: the constant
    ``{}`` when every value is rebuilt, else one text per record. A payload orjson would
    refuse to store puts its record in ``bad`` (``normalize`` then says why)."""
    kept: dict[int, list[tuple[str, Any]]] = {}
    odd: set[int] = set()  # records keeping a value other than a string or null
    for key, name, values, state in zip(API_KEYS, FIELDS, columns, states, strict=True):
        if state == ALL:
            continue
        if state == NULLS:  # strings and nulls: only '' and null are false
            indexes = [index for index, value in enumerate(values) if not value]
        else:
            indexes = [n for n, value in enumerate(values) if not rebuilt(name, value, utc)]
            odd.update(n for n in indexes if values[n] is not None and type(values[n]) is not str)
        for index in indexes:
            kept.setdefault(index, []).append((key, values[index]))
    if not kept:
        return "{}"
    texts = ["{}"] * len(columns[0])
    known: dict[tuple[tuple[str, Any], ...], str] = {}  # payloads of only nulls and strings
    for index, pairs in kept.items():
        cacheable = index not in odd
        frozen = tuple(pairs)
        text = known.get(frozen) if cacheable else None
        if text is None:
            try:
                text = jsonb_text(dict(pairs))
            except TypeError:
                bad.add(index)
                continue
            if cacheable:
                known[frozen] = text
        texts[index] = text
    return texts
