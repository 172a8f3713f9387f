"""API bodies into Python values without losing a digit, and records back into JSON text.

Prices come as JSON numbers (``"billing_price_1": 0.004980``), and money must stay exact: a
binary float would turn ``0.1000000000000000001`` into ``0.1``, ``0.004980`` into ``0.00498``
(the scale lost) and a 17-digit id into its neighbour. ``loads`` reads every number with a
fraction or an exponent from its text: a float only when ``repr()`` of that float gives back
the very text sent (the usual price: what the page path expects, and as exact as the text),
otherwise a ``Decimal`` with every digit and the scale sent. Integers are Python ints, exact
at any size. (msgspec takes a hook for the number's text, which orjson does not; it parses a
page about as fast.)

A string that is not valid Unicode (an unpaired surrogate escape such as ``"\\ud800"``, or a
byte that is not UTF-8) fails the strict parse. One such value must not make the whole page,
and so its window, fail on every run: the body is read again leniently, the bad character
kept as a lone surrogate (an invalid byte ``B`` as ``\\udcB``), and normalisation rejects
just the record holding it (``etl.normalize``), which keeps it aside with the reason.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec
import orjson

MAX_CACHED = 100_000


class NotJsonError(ValueError):
    """The body is not one JSON document (truncated, or not JSON at all)."""


class _Numbers(dict[str, float | Decimal]):
    """Number text -> value, filled on first sight (prices repeat across pages)."""

    def __missing__(self, text: str) -> float | Decimal:
        number = float(text)
        value: float | Decimal = number if repr(number) == text else Decimal(text)
        if len(self) >= MAX_CACHED:
            self.clear()
        self[text] = value
        return value


_NUMBERS = _Numbers()
_STRICT = msgspec.json.Decoder(float_hook=_NUMBERS.__getitem__)


def loads(body: bytes) -> Any:
    """The JSON document ``body``; NotJsonError when it is not one."""
    try:
        return _STRICT.decode(body)
    except msgspec.DecodeError as strict:
        try:
            text = body.decode("utf-8", "surrogateescape")
            return json.loads(text, parse_float=_NUMBERS.__getitem__, parse_constant=_refuse)
        except (ValueError, RecursionError):
            raise NotJsonError(str(strict)) from None


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_number(value: Any) -> orjson.Fragment:
    """orjson's ``default`` for a Decimal: its digits as they are (no float on the way)."""
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps_text(value: Any) -> str:
    """``value`` (as ``loads`` gives it) as compact JSON text: keys in their order, numbers
    with the digits sent, text as UTF-8. A string that is not valid Unicode, or an integer
    beyond 64 bits, is written by a slower path, with ``\\uXXXX`` escapes for non-ASCII."""
    try:
        return orjson.dumps(value, default=json_number).decode()
    except TypeError:
        return _ascii_text(value)


def _ascii_text(value: Any) -> str:
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k))}:{_ascii_text(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(_ascii_text, value)) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, default=str)
