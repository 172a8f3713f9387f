"""Normalisation: one raw API record into one typed row, or an InvalidRecordError.

Pure: no I/O. The API sends most values as JSON strings ("duration": "7"), the two
billing prices as JSON numbers, and '' or null for absent values. Every documented field
becomes a typed column (integers, exact decimals, timezone-aware times in the API's zone,
'' -> NULL); unknown extra fields are kept in the raw payload and never reject a row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from etl.errors import InvalidRecordError

MAX_TEXT = 2000
BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1
MAX_DECIMAL_DIGITS = 30
MAX_DECIMAL_SCALE = 12
ZERO_TIMES = frozenset({"0000-00-00 00:00:00", "0000-00-00"})
_INT_RE = re.compile(r"[+-]?\d{1,19}")
_TIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?")


def _text(value: Any) -> str | None:
    if isinstance(value, (bool, dict | list)):
        raise ValueError("is not text")
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        raise ValueError("contains a NUL byte")
    if len(text) > MAX_TEXT:
        raise ValueError(f"is longer than {MAX_TEXT} characters")
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
    return isinstance(value, str) and _INT_RE.fullmatch(value.strip()) is not None


def _bigint(value: Any) -> int:
    return _integer(value, 0, BIGINT_MAX)


def _count(value: Any) -> int:
    return _integer(value, 0, INT_MAX)


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"is not a number: {_preview(value)}")
    text = repr(value) if isinstance(value, float) else str(value).strip()
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"is not a number: {_preview(value)}") from None
    if not number.is_finite():
        raise ValueError("is not a finite number")
    _sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    if len(digits) + max(exponent, 0) > MAX_DECIMAL_DIGITS or -exponent > MAX_DECIMAL_SCALE:
        raise ValueError(f"has more precision than {MAX_DECIMAL_DIGITS} digits allow")
    return number


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Field:
    """One documented API field: its column name and how to convert it."""

    name: str
    convert: Callable[[Any], Any]


TEXT, BIGINT, COUNT, DECIMAL, TIME = "text", "bigint", "count", "decimal", "time"
_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    TEXT: _text,
    BIGINT: _bigint,
    COUNT: _count,
    DECIMAL: _decimal,
}

# Every documented field, in column order. Column names are the API's names in lower case.
FIELD_KINDS: dict[str, str] = {
    "i_cdr": BIGINT,
    "cld": TEXT,
    "cli": TEXT,
    "call_id": TEXT,
    "duration": COUNT,
    "billed_duration": COUNT,
    "connect_time": TIME,
    "disconnect_time": TIME,
    "setup_time": TIME,
    "billing_prefix": TEXT,
    "billing_price_1": DECIMAL,
    "billing_price_n": DECIMAL,
    "billing_interval_1": COUNT,
    "billing_interval_n": COUNT,
    "customer_amount": DECIMAL,
    "i_customer": BIGINT,
    "i_account": BIGINT,
    "i_vendor": BIGINT,
    "i_connection": BIGINT,
    "i_purchased_route": BIGINT,
    "disconnect_code": COUNT,
    "customer_ip": TEXT,
    "i_rate": BIGINT,
    "vendor_name": TEXT,
    "account_name": TEXT,
    "connection_name": TEXT,
    "disconnect_reason": TEXT,
    "country_name": TEXT,
    "description": TEXT,
}
FIELDS: tuple[str, ...] = tuple(FIELD_KINDS)
# Columns of a normalised row: the documented fields, the account, the raw payload.
ROW_COLUMNS: tuple[str, ...] = (*FIELDS, "api_login", "raw")


class Normalizer:
    """Turns raw records of one account into rows of ROW_COLUMNS; holds no state per row."""

    def __init__(self, api_login: str, tz: ZoneInfo, raw_payload: str = "full") -> None:
        self.api_login = api_login
        self.tz = tz
        self.keep_full_raw = raw_payload == "full"

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
        raw = record if self.keep_full_raw else extra
        try:
            raw_json = orjson.dumps(raw).decode()
        except TypeError as exc:  # orjson refuses e.g. integers beyond 64 bits
            raise InvalidRecordError(f"payload cannot be stored as JSON: {exc}") from None
        if "\\u0000" in raw_json:
            raise InvalidRecordError("payload contains a NUL character")
        return (*values, self.api_login, raw_json)

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
        text = value.strip()
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
        return aware


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
