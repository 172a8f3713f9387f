"""How each setting's text is read: one parser per setting (``SETTINGS``), each raising a
ValueError that says what is expected (``etl.config`` names the setting beside it), and
``Secret``, which holds the values no repr, log line or error may show."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from etl import dburl, payload

DEFAULT_API_URL = "https://api.telecomsxchange.com/buyers/callhistory"


class Secret:
    """A string that never shows itself in repr() or str()."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value; call only where it is sent, never where it is printed."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


MAX_DURATION_DAYS = 36_500


def parse_duration(text: str) -> timedelta:
    """Parse '90s', '15m', '6h', '1d' into a timedelta. The unit is required: a bare '3'
    (seconds? days?) is refused rather than guessed."""
    match = re.fullmatch(r"\s*([0-9]+)\s*([smhd])\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 90s, 30m, 6h or 1d")
    amount, unit = int(match.group(1)), match.group(2)
    seconds = amount * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    if seconds > MAX_DURATION_DAYS * 86400:  # beyond it, date arithmetic overflows
        raise ValueError(f"must be at most {MAX_DURATION_DAYS}d")
    return timedelta(seconds=seconds)


# The years a CDR's times may hold: TCXC_START_DATE, --from and --to are refused outside them.
YEARS = range(1900, 2201)


def _start_date(text: str) -> datetime:
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            moment = datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
        if moment.year not in YEARS:
            raise ValueError(f"is out of range: give a year from {YEARS[0]} to {YEARS[-1]}")
        return moment
    raise ValueError("must be a date such as 2026-01-01 (in TCXC_API_TIMEZONE)")


def _cron(text: str) -> str:
    expected = "must be a 5-field cron expression such as '30 3 * * *'"
    if len(text.split()) != 5:
        raise ValueError(expected)
    # What the daemon's scheduler will make of it, checked now (imported only when the
    # setting is given: most commands never schedule anything).
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(text, timezone=UTC)
    except ValueError as exc:
        raise ValueError(f"{expected} ({exc})") from None
    return text


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        expected = f"must be a whole number between {low} and {high}"
        try:
            value = int(text)
        except ValueError:
            raise ValueError(expected) from None
        if not low <= value <= high:
            raise ValueError(expected)
        return value

    return parse


def _number(text: str, expected: str) -> float:
    """``text`` as a finite float, or a ValueError saying ``expected``."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(expected) from None
    if not math.isfinite(value):
        raise ValueError(expected)
    return value


MAX_TIMEOUT = 86_400.0  # a day; far beyond it a socket's timeout overflows


def _timeout(text: str) -> float:
    expected = f"must be a positive number of seconds, at most {MAX_TIMEOUT:.0f} (a day)"
    value = _number(text, expected)
    if not 0 < value <= MAX_TIMEOUT:
        raise ValueError(expected)
    return value


MIN_RATE = 0.001  # one request per 1000 s; a slower pace would wait longer than a clock holds


def _rate(text: str) -> float:
    expected = f"must be 0 (no limit) or between {MIN_RATE} and 100000 requests per second"
    value = _number(text, expected)
    if not (value == 0 or MIN_RATE <= value <= 100_000):
        raise ValueError(expected)
    return value


_HOST = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%-]+|[0-9A-Fa-f:.]+")  # (an IPv6 one without [])


def _api_url(text: str) -> str:
    text = text.strip()  # a pasted value's newline, as the key's and the login's
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL such as " + DEFAULT_API_URL)
    if parts.username or parts.password:
        raise ValueError("must not carry credentials; use TCXC_API_LOGIN and TCXC_API_KEY")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("its port must be a number from 1 to 65535")
    if any(char.isspace() for char in text):
        raise ValueError("must not hold spaces (write one in its path as %20)")
    if not _HOST.fullmatch(parts.hostname or ""):
        raise ValueError("its host name holds a character a host name cannot")
    return text


def _bind_address(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise ValueError(
            "must be an IPv4 address to listen on, such as 127.0.0.1 (0.0.0.0: every interface)"
        ) from None


def _database_url(text: str) -> Secret:
    return Secret(dburl.check_database_url(text))


def _timezone(text: str) -> ZoneInfo:
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{text!r} is not an IANA time zone such as UTC or Europe/London"
        ) from None


def _raw_payload(text: str) -> str:
    if text not in payload.MODES:
        raise ValueError("must be one of " + ", ".join(payload.MODES))
    return text


def _folder(text: str) -> Path:
    if not text.strip():
        raise ValueError("must be a folder path (leave it unset for the default)")
    return Path(text)


def check_prefix(text: str) -> str:
    """A destination prefix: digits, or '' for all (TCXC_PREFIX, an account's, --prefix)."""
    if text and not re.fullmatch("[0-9]+", text):  # not str.isdigit: '²' and '٤' are digits
        raise ValueError("must be digits (0-9), such as 44")
    return text


# setting name (env var; the TOML key is the same in lower case) -> (field, parser)
SETTINGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "TCXC_API_URL": ("api_url", _api_url),
    "TCXC_API_LOGIN": ("api_login", str.strip),
    "TCXC_API_KEY": ("api_key", lambda text: Secret(text.strip())),
    "DATABASE_URL": ("database_url", _database_url),
    "TCXC_API_TIMEZONE": ("api_timezone", _timezone),
    "TCXC_PAGE_SIZE": ("page_size", _int_in(1, 100_000)),
    "TCXC_WINDOW": ("window", parse_duration),
    "TCXC_WINDOW_ROWS": ("window_rows", _int_in(0, 10_000_000)),
    "TCXC_PREFIX": ("prefix", check_prefix),
    "TCXC_CONNECT_TIMEOUT": ("connect_timeout", _timeout),
    "TCXC_READ_TIMEOUT": ("read_timeout", _timeout),
    "TCXC_MAX_PAGES_PER_WINDOW": ("max_pages_per_window", _int_in(1, 10_000_000)),
    "TCXC_RAW_PAYLOAD": ("raw_payload", _raw_payload),
    "TCXC_EMBEDDED_DIR": ("embedded_dir", _folder),
    "TCXC_EMBEDDED_PORT": ("embedded_port", _int_in(1024, 65535)),
    "TCXC_START_DATE": ("start_date", _start_date),
    "TCXC_LOOKBACK": ("lookback", parse_duration),
    "TCXC_SETTLE_LAG": ("settle_lag", parse_duration),
    "TCXC_DEEP_LOOKBACK": ("deep_lookback", parse_duration),
    "TCXC_SYNC_INTERVAL": ("sync_interval", parse_duration),
    "TCXC_DEEP_SYNC_CRON": ("deep_sync_cron", _cron),
    "TCXC_LAG_ALERT": ("lag_alert", parse_duration),
    "TCXC_METRICS_PORT": ("metrics_port", _int_in(1024, 65535)),
    "TCXC_METRICS_HOST": ("metrics_host", _bind_address),
    "TCXC_STOP_TIMEOUT": ("stop_timeout", parse_duration),
    "TCXC_WORKERS": ("workers", _int_in(1, 32)),
    "TCXC_PARALLEL_ACCOUNTS": ("parallel_accounts", _int_in(1, 64)),
    "TCXC_REQUESTS_PER_SECOND": ("requests_per_second", _rate),
    "TCXC_REQUESTS_PER_HOUR": ("requests_per_hour", _int_in(0, 100_000_000)),
}
SECRET_SETTINGS = frozenset({"TCXC_API_KEY", "DATABASE_URL"})
