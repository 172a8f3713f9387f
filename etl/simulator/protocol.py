"""The TCXC call-history protocol: form fields in, JSON envelopes out.

Authentication follows the vendor's page: ``signature = sha256("c_cdrs" + api_key + api_login
+ ts)``. A missing or unknown login, a wrong signature and a stale ``ts`` all get the same
``{"error": "Wrong signature", "status": "fail"}`` answer, with HTTP 200, as the real API does.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qsl

import orjson

from etl.signing import compute_signature
from etl.simulator.data import TIME_FORMAT, to_epoch

PATHS = ("/buyers/callhistory", "/buyers/callhistory/")
JSON = "application/json"
HTML = "text/html; charset=utf-8"


@dataclass(frozen=True)
class Reply:
    """What the server sends back: an HTTP status, a body, or a reset connection."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()
    reset: bool = False
    delay: float = 0.0


@dataclass(frozen=True)
class Query:
    """A validated call-history request of an authenticated login."""

    login: str
    date_from: int | None
    date_to: int | None
    prefix: str
    pager: int
    off: int


WRONG_SIGNATURE = Reply(200, orjson.dumps({"error": "Wrong signature", "status": "fail"}))
NOT_FOUND = Reply(404, orjson.dumps({"status": "error", "message": "Not Found"}))


def error_reply(message: str, status: int = 200) -> Reply:
    """The API's ``{"status": "error", "message": ...}`` envelope."""
    return Reply(status, orjson.dumps({"status": "error", "message": message}))


def parse_form(text: str) -> dict[str, str]:
    """Form or query-string fields; the last value of a repeated field wins."""
    return dict(parse_qsl(text, keep_blank_values=True))


def authenticate(
    params: Mapping[str, str], accounts: Mapping[str, str], now: float, skew: int
) -> str | None:
    """The login of a correctly signed, fresh request, else None."""
    login = params.get("api_login", "")
    key = accounts.get(login)
    ts_text = params.get("ts", "")
    signature = params.get("signature", "")
    if key is None or not (ts_text.isascii() and ts_text.isdigit()):
        return None
    ts = int(ts_text)
    if abs(ts - now) > skew:
        return None
    expected = compute_signature(key, login, ts)
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        return None
    return login


def parse_query(login: str, params: Mapping[str, str]) -> Query | str:
    """The request's filters and page, or the message of the error the API would give."""
    if params.get("show") != "all":
        return "Invalid value for show, expected 'all'"
    bounds: list[int | None] = []
    for name in ("date_from", "date_to"):
        text = params.get(name, "")
        if not text:
            bounds.append(None)
            continue
        try:
            bounds.append(to_epoch(datetime.strptime(text, TIME_FORMAT)))
        except ValueError:
            return f"Invalid {name} '{text}', expected YYYY-MM-DD HH:MM:SS"
    pager = _count(params.get("pager", ""), minimum=1)
    if pager is None:
        return "Invalid or missing pager, expected a positive integer"
    off_text = params.get("off", "")
    off = _count(off_text, minimum=0) if off_text else 0
    if off is None:
        return "Invalid off, expected a non-negative integer"
    return Query(login, bounds[0], bounds[1], params.get("prefix", ""), pager, off)


def _count(text: str, minimum: int) -> int | None:
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value >= minimum else None


def success_body(rows: list[str]) -> bytes:
    """``{"status":"success","cdrs":[...]}`` around rows already serialised as JSON."""
    return ('{"status":"success","cdrs":[' + ",".join(rows) + "]}").encode()
