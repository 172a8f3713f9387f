"""The API client's reading of answers the documentation does not describe."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from etl.client import ApiClient, classify
from etl.errors import ApiError, FatalApiError, RateLimitedError, RetriableApiError

RECORD = {"i_cdr": "1", "setup_time": "2026-09-21 10:00:00"}


@pytest.mark.parametrize(
    "extra",
    [
        {"error": "Query timeout, partial result"},
        {"error": True},
        {"message": "Result limited to 100 rows"},
        {"message": "partial result: query timed out"},
    ],
)
def test_a_success_envelope_that_also_reports_a_problem_is_not_data(extra: dict[str, Any]) -> None:
    """`status: success` beside an `error`, or a message saying the result is limited or
    partial, is refused (retried or failed), never loaded as the whole window."""
    body = orjson.dumps({"status": "success", "cdrs": [RECORD], **extra})
    with pytest.raises(ApiError):
        classify(200, {}, body)


@pytest.mark.parametrize("extra", [{}, {"message": "OK"}, {"error": ""}, {"error": None}])
def test_a_plain_success_envelope_is_data(extra: dict[str, Any]) -> None:
    body = orjson.dumps({"status": "success", "cdrs": [RECORD], **extra})
    assert classify(200, {}, body).records == [RECORD]


def test_retry_after_as_an_http_date_is_honoured() -> None:
    """Retry-After may be a number of seconds or an HTTP date (RFC 9110); both are waited."""
    later = formatdate(time.time() + 30, usegmt=True)
    with pytest.raises(RateLimitedError) as info:
        classify(429, {"Retry-After": later}, b"")
    assert info.value.retry_after is not None and 25 <= info.value.retry_after <= 31


@contextmanager
def _server(answer: Any) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 answering with ``answer(handler)``; yields its URL and the
    paths of the requests it received."""
    received: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            answer(self)

        do_GET = do_POST

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/buyers/callhistory", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_not_followed(status: int) -> None:
    """A redirect is an error naming TCXC_API_URL: following it would send the signed form
    (login, signature) to another address, or turn it into an unsigned GET."""

    def ok(handler: BaseHTTPRequestHandler) -> None:
        body = orjson.dumps({"status": "success", "cdrs": []})
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with _server(ok) as (elsewhere, reached):

        def redirect(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(status)
            handler.send_header("Location", elsewhere)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        with _server(redirect) as (url, _received):
            client = ApiClient(url, "buyer1", "key-one")
            with pytest.raises(FatalApiError, match="TCXC_API_URL"):
                client.fetch_page({"pager": "10", "off": "0"})
    assert reached == []


def test_a_body_that_trickles_in_is_cut_at_the_read_timeout() -> None:
    """An answer whose body arrives a byte at a time, each byte within the read timeout: the
    timeout bounds the whole answer (it bounded each wait for data, so a page could take
    hours), and the request is retried as one that did not answer in time."""

    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        try:
            for _ in range(1000):
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.1)
        except OSError:  # the client gave up
            pass

    with _server(trickle) as (url, _received):
        client = ApiClient(url, "buyer1", "key-one", read_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(RetriableApiError, match="TCXC_READ_TIMEOUT"):
            client.fetch_page({"pager": "10", "off": "0"})
        assert time.monotonic() - started < 5
