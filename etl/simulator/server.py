"""HTTP front of the simulator: a keep-alive ThreadingHTTPServer bound to 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from etl.simulator.config import SimulatorConfig
from etl.simulator.engine import Engine
from etl.simulator.faults import Fault
from etl.simulator.protocol import NOT_FOUND, PATHS, Reply, error_reply, parse_form

HOST = "127.0.0.1"
_IDLE_TIMEOUT = 60.0  # seconds an idle keep-alive connection stays open


def answer_delay(latency: float, worked: float) -> float:
    """How long to wait before answering: the simulated latency is the time the API takes to
    answer a request, its own work included (as a real API's is), so the simulator's work on
    a page is never counted as the client's time; only what that work left of it is slept."""
    return max(0.0, latency - worked)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, engine: Engine, host: str = HOST) -> None:
        self.engine = engine
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that went away mid-answer (killed, timed out) is normal, not an error."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]

    def close_connections(self) -> None:
        """Shut every open client connection, so no handler thread waits on one."""
        with self.connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = _IDLE_TIMEOUT
    server_version = "nginx"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.open_connections.discard(self.connection)
        with contextlib.suppress(OSError):  # the client may be gone already
            super().finish()

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the simulator runs inside tests and benchmarks."""

    def _serve(self) -> None:
        started, arrived = time.thread_time(), time.monotonic()
        engine = self.server.engine
        engine.count_request()
        try:
            reply = self._reply(engine)
            delay = answer_delay(engine.config.latency, time.monotonic() - arrived) + reply.delay
            if delay > 0:
                time.sleep(delay)
            if reply.reset:
                self._reset()
            else:
                self._send(reply)
        finally:
            engine.request_done(time.thread_time() - started)

    def _reply(self, engine: Engine) -> Reply:
        parts = urlsplit(self.path)
        body = self._read_body()
        if body is None:
            return error_reply("Length Required", status=411)
        if parts.path not in PATHS:
            return NOT_FOUND
        params = parse_form(parts.query)
        if self.command == "POST":
            params.update(parse_form(body.decode("utf-8", "replace")))
        return engine.answer(params)

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            return None
        length_text = self.headers.get("Content-Length", "0").strip() or "0"
        length = int(length_text) if length_text.isdigit() else 0
        return self.rfile.read(length) if length else b""

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def _reset(self) -> None:
        """Close the connection with a TCP reset, sending no response at all."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


class Simulator:
    """A TCXC-compatible call-history API on 127.0.0.1, with ground truth and fault control."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._engine = Engine(config)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._foreground = False
        self._lifecycle = threading.Lock()

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The endpoint, e.g. ``http://127.0.0.1:PORT/buyers/callhistory`` (binds the port)."""
        port = self._bind().server_address[1]
        return f"http://{HOST}:{port}{PATHS[0]}"

    def start(self) -> None:
        """Serve in a background daemon thread."""
        with self._lifecycle:
            if self._thread is not None:
                raise RuntimeError("simulator already started")
            server = self._bind_locked()
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="tcxc-simulator",
                daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop serving, close every connection and free the port. Safe to call twice."""
        with self._lifecycle:
            server, thread, serving = self._server, self._thread, self._foreground
            self._server = self._thread = None
        if server is None:
            return
        if thread is not None or serving:
            server.shutdown()
        if thread is not None:
            thread.join()
        server.close_connections()
        server.server_close()

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted; then free the port."""
        with self._lifecycle:
            if self._thread is not None or self._foreground:
                raise RuntimeError("simulator already serving")
            server = self._bind_locked()
            self._foreground = True
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            with self._lifecycle:
                self._foreground = False
                if self._server is server:
                    self._server = None
            server.close_connections()
            server.server_close()

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind(self) -> _Server:
        with self._lifecycle:
            return self._bind_locked()

    def _bind_locked(self) -> _Server:
        if self._server is None:
            self._server = _Server(self.config.port, self._engine, self.config.host)
        return self._server

    # --- ground truth and test control ---------------------------------------------------

    def records(self, login: str) -> list[dict[str, Any]]:
        """Current API-format records of ``login`` (latest values), in ``i_cdr`` order."""
        return self._engine.records(login)

    def publish(self, login: str, record: dict[str, Any]) -> None:
        """Add a raw record, served when its filter time is in the window (always if none)."""
        self._engine.publish(login, record)

    def rerate(self, login: str, i_cdr: str, customer_amount: str) -> None:
        """Change a CDR's ``customer_amount``; KeyError if ``login`` has no such CDR."""
        self._engine.rerate(login, i_cdr, customer_amount)

    def withdraw_while_paging(self, requests: int, records: int = 2) -> None:
        """The next ``requests`` requests with ``off`` > 0 each first remove the first
        ``records`` records of their result (see Engine.withdraw_while_paging)."""
        self._engine.withdraw_while_paging(requests, records)

    def inject(self, *faults: Fault) -> None:
        """Queue faults applied to the next requests, in order."""
        self._engine.inject(faults)

    def set_fault_rate(
        self,
        rate: float,
        kinds: Sequence[str],
        seed: int = 0,
        *,
        retry_after: float = 1.0,
        delay: float = 0.2,
    ) -> None:
        """Give a seeded random share ``rate`` of requests a fault of one of ``kinds``."""
        self._engine.set_fault_rate(rate, kinds, seed, retry_after, delay)

    def clear_faults(self) -> None:
        """Drop queued faults and any fault rate."""
        self._engine.clear_faults()

    def set_envelope(self, body: bytes | None) -> None:
        """Answer every successful request with exactly ``body``; None restores normal."""
        self._engine.set_envelope(body)

    @property
    def requests_served(self) -> int:
        """How many HTTP requests the simulator received."""
        return self._engine.requests

    def stats(self) -> dict[str, float]:
        """``requests``, ``faults_injected``, ``rows_served``, handler ``cpu_seconds`` and
        ``max_in_flight`` (the most requests being answered at once)."""
        return self._engine.stats()

    def date_froms(self) -> Counter[str]:
        """How many valid requests asked for each ``date_from`` (as the client sent it)."""
        return self._engine.date_froms()
