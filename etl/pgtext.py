"""Text that PostgreSQL reads back exactly: COPY text-format fields and jsonb's own output.

Pure: no I/O. Used by the load path (``Normalizer.normalize_page``):

- COPY text format: fields separated by tabs, ``\\N`` for NULL, and backslash, tab, newline
  and carriage return escaped with a backslash.
- jsonb's output form (``jsonb_out``, what ``raw::text`` prints): object keys ordered by
  length then bytes, ``", "`` and ``": "`` separators, strings escaped as JSON requires
  (the same escapes orjson writes), numbers as ``numeric`` prints them (plain digits, no
  exponent). A payload written in that form compares with a stored one as text, which is
  several times cheaper for PostgreSQL than parsing it and comparing two jsonb values.
  Being off by a character costs only speed: the upsert still compares real jsonb values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from decimal import Decimal
from itertools import repeat
from typing import Any

import orjson

NULL = "\\N"
_COPY_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
PLAIN_FLOAT = re.compile(r"(?!-0\.0*$)-?[0-9]+\.[0-9]+")  # repr() that numeric prints alike
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1  # what orjson (the reference) can store
_NONE = type(None)


def copy_escape(text: str) -> str:
    """``text`` as a COPY text-format field (backslash, tab, newline and CR escaped)."""
    for char, escaped in _COPY_ESCAPES.items():
        if char in text:
            text = text.replace(char, escaped)
    return text


def utc_offset_text(offset: timedelta) -> str:
    """'+HH:MM' for a whole-minute UTC offset; '' for the odd historical one with seconds."""
    seconds = int(offset.total_seconds())
    if seconds % 60:
        return ""
    sign = "+" if seconds >= 0 else "-"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def jsonb_text(value: Any) -> str:
    """``value`` (as ``etl.jsonparse.loads`` gives it) in jsonb's output form.

    Raises TypeError for what orjson would refuse to store (integers beyond 64 bits,
    non-string keys, non-JSON types), so the caller rejects the same records.
    """
    kind = type(value)
    if kind is dict:
        if not all(type(key) is str for key in value):
            raise TypeError("Dict key must be str")
        keys = sorted(value, key=_key_order)
        inner = ", ".join(f"{_string_text(key)}: {jsonb_text(value[key])}" for key in keys)
        return "{" + inner + "}"
    if kind is list:
        return "[" + ", ".join(map(jsonb_text, value)) + "]"
    scalar = _SCALARS.get(kind)
    if scalar is None:
        raise TypeError(f"Type is not JSON serializable: {kind.__name__}")
    return scalar(value)


def jsonb_texts(values: Sequence[Any]) -> list[str]:
    """``jsonb_text`` of each value; a column of plain strings or numbers takes a C fast path."""
    types = set(map(type, values))
    if types <= {str, _NONE}:
        present = "".join(filter(None, values))
        if '"' not in present and "\\" not in present and present.isprintable():
            if _NONE in types:
                return ["null" if value is None else f'"{value}"' for value in values]
            return list(map('"{}"'.format, values))
    elif types == {float}:
        texts = list(map(repr, values))
        if all(map(PLAIN_FLOAT.fullmatch, texts)):
            return texts
    elif types == {int} and min(values) >= _INT64_MIN and max(values) <= _UINT64_MAX:
        return list(map(str, values))
    return list(map(jsonb_text, values))


def jsonb_object_parts(
    keys: Sequence[str], columns: Sequence[Sequence[str]], plain: Sequence[bool]
) -> list[str | Sequence[str]]:
    """The parts (see ``join_parts``) of one jsonb object per row: ``columns[i]`` holds the
    values of ``keys[i]``, either plain strings (``plain[i]``: each goes in as it is, between
    quotes) or already their jsonb texts."""
    parts: list[str | Sequence[str]] = ["{"]
    for position, index in enumerate(sorted(range(len(keys)), key=lambda i: _key_order(keys[i]))):
        quote = '"' if plain[index] else ""
        parts += [
            (", " if position else "") + _string_text(keys[index]) + ": " + quote,
            columns[index],
            quote,
        ]
    parts.append("}")
    return parts


def join_parts(parts: Sequence[str | Sequence[str]]) -> list[str]:
    """Row ``i`` is the concatenation of each part: a constant string as it is, a sequence's
    ``i``-th string. One ``"".join`` per row: C speed, and each value is read once."""
    pieces: list[Iterable[str]] = []
    constant = ""
    for part in parts:
        if isinstance(part, str):
            constant += part
            continue
        if constant:
            pieces.append(repeat(constant))
            constant = ""
        pieces.append(part)
    if constant:
        pieces.append(repeat(constant))
    return list(map("".join, zip(*pieces, strict=False)))  # the constants repeat forever


def _number_text(value: float) -> str:
    if not math.isfinite(value):
        return "null"  # what orjson writes for NaN and infinities
    text = repr(value)
    if PLAIN_FLOAT.fullmatch(text):
        return text
    # numeric prints the number orjson's shortest digits denote, without an exponent, and
    # has no negative zero.
    number = Decimal(orjson.dumps(value).decode())
    return format(abs(number) if number.is_zero() else number, "f")


def _decimal_text(value: Decimal) -> str:
    # numeric prints its digits and scale without an exponent, and has no negative zero
    return format(abs(value) if value.is_zero() else value, "f")


def _string_text(value: str) -> str:
    return str(orjson.dumps(value).decode())  # orjson escapes exactly as jsonb prints


def _int_text(value: int) -> str:
    if not _INT64_MIN <= value <= _UINT64_MAX:
        raise TypeError("Integer exceeds 64-bit range")
    return str(value)


_SCALARS: dict[type, Callable[[Any], str]] = {
    str: _string_text,
    _NONE: lambda _value: "null",
    bool: lambda value: "true" if value else "false",
    int: _int_text,
    float: _number_text,
    Decimal: _decimal_text,
}


def _key_order(key: str) -> tuple[int, bytes]:
    encoded = key.encode("utf-8", "surrogatepass")
    return len(encoded), encoded
