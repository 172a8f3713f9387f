"""The TCXC API client: signs, sends and classifies one ``buyers/callhistory`` request.

The only module that imports requests (and urllib3, its transport). One keep-alive session;
connect and read timeouts; a fresh ``ts`` and signature on every attempt. The body is read in
one call (requests' own ``.content`` reads it in 10 kB chunks, dozens of reads per page) and
the environment's proxy and CA settings are read once per client, not once per request.
A response is data only if it is the success envelope ``{"status": "success", "cdrs": [...]}``;
anything else raises a typed ApiError, so an unrecognised answer can never be mistaken for
"zero rows". Error messages never contain the API key or a signature (requests' own
exceptions, which may quote the request, are summarised, not chained into our messages).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
import urllib3

from etl import __version__, jsonparse
from etl.errors import (
    ApiError,
    AuthError,
    FatalApiError,
    RateLimitedError,
    RetriableApiError,
)
from etl.logs import scrub
from etl.signing import signed_params

USER_AGENT = f"tcxc-etl/{__version__}"
_TEMPORARY_WORDS = ("temporar", "try again", "retry", "timeout", "busy", "overload")
# Words of a message beside `status: success` saying that the records are not all of them.
_INCOMPLETE_WORDS = ("limit", "partial", "truncat", "incomplete", "timeout", "timed out", "error")


@dataclass(frozen=True)
class Page:
    """One successful answer: the raw records and the body they came from."""

    records: list[Any]
    body: bytes


class ApiClient:
    """Sends signed requests for one account over one keep-alive session."""

    def __init__(
        self,
        url: str,
        api_login: str,
        api_key: str,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        clock: Callable[[], float] = time.time,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url
        self.api_login = api_login
        self._api_key = api_key
        self._timeouts = (connect_timeout, read_timeout)
        self._clock = clock
        self._session = session or requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        # What requests would look up in the environment (proxies, CA bundle) on every
        # request, looked up once; then the session stops looking.
        self._send_options = self._session.merge_environment_settings(url, {}, True, None, None)
        self._session.trust_env = False
        self.requests_sent = 0

    def __repr__(self) -> str:
        return f"ApiClient(url={self.url!r}, api_login={self.api_login!r})"

    def clone(self) -> ApiClient:
        """Another client for the same account with its own session (one per worker thread)."""
        return ApiClient(
            self.url,
            self.api_login,
            self._api_key,
            connect_timeout=self._timeouts[0],
            read_timeout=self._timeouts[1],
            clock=self._clock,
        )

    def close(self) -> None:
        self._session.close()

    def fetch_page(self, params: dict[str, str]) -> Page:
        """POST one request with ``params`` plus fresh auth fields; return its records."""
        form = {"show": "all", **params}
        form.update(signed_params(self._api_key, self.api_login, int(self._clock())))
        self.requests_sent += 1
        deadline = time.monotonic() + self._timeouts[1]
        try:
            response = self._session.post(
                self.url,
                data=form,
                timeout=self._timeouts,
                allow_redirects=False,  # the signed form goes to TCXC_API_URL only
                **self._send_options,
            )
            body = _read_body(response.raw, deadline)  # all of it; then back to the pool
        except (requests.Timeout, urllib3.exceptions.TimeoutError):
            raise RetriableApiError("the API did not answer in time") from None
        except requests.ConnectionError as exc:
            raise RetriableApiError(
                f"cannot reach the API at {self.url} (TCXC_API_URL): {_reason(exc)}"
            ) from None
        except urllib3.exceptions.ProtocolError:
            raise RetriableApiError("the connection broke while the answer was read") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise RetriableApiError(f"request failed: {type(exc).__name__}") from None
        try:
            return classify(response.status_code, response.headers, body)
        except ApiError as exc:  # an API may quote the request back: never pass that on
            clean = scrub(exc.message, (self._api_key, form["signature"]))
            if clean != exc.message:
                exc.message = clean
                exc.args = (clean,)
            raise


def _read_body(raw: Any, deadline: float) -> bytes:
    """The whole body, in as few reads as the data allows; RetriableApiError once
    ``deadline`` (TCXC_READ_TIMEOUT after the request left) has passed: the socket's timeout
    bounds each wait for data only, so a body trickling in could take hours."""
    chunks: list[bytes] = []
    while chunk := raw.read1(1 << 20, decode_content=True):
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raw.close()  # (its connection is not reused: the rest of the body is unread)
            raise RetriableApiError(
                "the API's answer took longer than TCXC_READ_TIMEOUT to arrive in full"
            )
    return b"".join(chunks)


def classify(status: int, headers: Any, body: bytes) -> Page:
    """Turn one HTTP answer into a Page or raise the ApiError that describes it."""
    if status == 429:
        raise RateLimitedError(
            "the API's rate limit was hit (HTTP 429)",
            status=status,
            retry_after=_retry_after(headers.get("Retry-After")),
        )
    if status >= 500:
        raise RetriableApiError(f"the API failed with HTTP {status}", status=status)
    if 300 <= status < 400:
        raise FatalApiError(
            f"the API answered HTTP {status}, a redirect, which is not followed (it would send "
            "the signed request elsewhere): set TCXC_API_URL to the address it redirects to",
            status=status,
        )
    if status >= 400:
        raise FatalApiError(f"the API refused the request with HTTP {status}", status=status)
    try:
        payload = jsonparse.loads(body)
    except jsonparse.NotJsonError:
        raise _unparsable(status, headers, body) from None
    return _envelope(payload, status, body)


def _envelope(payload: Any, status: int, body: bytes) -> Page:
    if not isinstance(payload, dict):
        raise FatalApiError(f"unrecognised response: a JSON {type(payload).__name__}")
    state = payload.get("status")
    if state == "success":
        records = payload.get("cdrs")
        _refuse_qualified_success(payload, status)
        if isinstance(records, list):
            return Page(records=records, body=body)
        raise FatalApiError("unrecognised success response: no `cdrs` list", status=status)
    message = str(payload.get("error") or payload.get("message") or "")[:200]
    if state == "fail" and "signature" in message.lower():
        raise AuthError(
            "the API rejected the signature: check the account's key and login (TCXC_API_KEY and "
            "TCXC_API_LOGIN, or its [[accounts]] entry), and "
            "that this machine's clock is right (the timestamp is signed)",
            status=status,
        )
    if state in ("fail", "error"):
        if _temporary(message):
            raise RetriableApiError(f"the API reported a temporary error: {message}")
        raise FatalApiError(f"the API reported an error: {message or '(no message)'}")
    keys = ", ".join(sorted(str(key) for key in payload)[:8])
    raise FatalApiError(f"unrecognised response: status={state!r}, keys: {keys}")


def _temporary(message: str) -> bool:
    """Whether an API message says its error is temporary (worth a retry)."""
    return any(word in message.lower() for word in _TEMPORARY_WORDS)


def _refuse_qualified_success(payload: dict[str, Any], status: int) -> None:
    """Raise when a success envelope also reports a problem: an `error` field with a value,
    or a message saying the records are limited, partial or in error. Taking such a page as
    the whole of its records could load less than the API holds."""
    error = payload.get("error")
    message = payload.get("message")
    if error not in (None, "", False):
        said = str(error)[:200]
    elif isinstance(message, str) and any(w in message.lower() for w in _INCOMPLETE_WORDS):
        said = message[:200]
    else:
        return
    if _temporary(said):
        raise RetriableApiError(f"the API reported success with a temporary error: {said}")
    raise FatalApiError(
        f"the API reported success together with a problem, so the page may not hold every "
        f"record: {said}",
        status=status,
    )


def _unparsable(status: int, headers: Any, body: bytes) -> ApiError:
    kind = str(headers.get("Content-Type", "")).split(";")[0] or "unknown type"
    stripped = body.lstrip()
    if stripped.startswith((b"{", b"[")):
        return RetriableApiError(
            f"truncated or invalid JSON response ({len(body)} bytes)", status=status
        )
    if not stripped:
        return RetriableApiError("empty response body", status=status)
    return RetriableApiError(f"non-JSON response ({kind}, {len(body)} bytes)", status=status)


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds to wait: a number of seconds, or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _reason(exc: requests.RequestException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "reset by peer"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__
