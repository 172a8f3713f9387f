"""Prometheus metrics and a health check for the daemon, on 127.0.0.1 only.

``/metrics``: rows by outcome, runs by status, API requests and errors by kind, lag and last
success time per account. ``/healthz``: 200 when every account's lag is under TCXC_LAG_ALERT
and its last deep pass completed, 503 otherwise (or when the database cannot be read). Both
are read from the database at scrape time, so they are right even when another daemon did the
work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from etl.errors import ConfigError
from etl.status import AccountStatus

log = logging.getLogger(__name__)


class Metrics:
    """The daemon's metrics; ``observe`` is the pipeline's observer callback."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rows = Counter(
            "tcxc_rows", "CDR rows by outcome", ["account", "outcome"], registry=self.registry
        )
        self.runs = Counter(
            "tcxc_runs", "Runs by kind and status", ["kind", "status"], registry=self.registry
        )
        self.api_requests = Counter(
            "tcxc_api_requests",
            "API requests that got an answer",
            ["account"],
            registry=self.registry,
        )
        self.api_errors = Counter(
            "tcxc_api_errors",
            "Failed API attempts by kind",
            ["account", "kind"],
            registry=self.registry,
        )
        self.lag = Gauge(
            "tcxc_lag_seconds",
            "Now minus the account's watermark",
            ["account"],
            registry=self.registry,
        )
        self.last_success = Gauge(
            "tcxc_last_success_timestamp_seconds",
            "End of the account's last successful run",
            ["account"],
            registry=self.registry,
        )

    def observer(self, account: str) -> Callable[[str, str], None]:
        """The ``Job.observe`` callback for one account."""

        def observe(event: str, kind: str) -> None:
            if event == "api_request":
                self.api_requests.labels(account).inc()
            elif event == "api_error":
                self.api_errors.labels(account, kind).inc()
            elif event.startswith("rows:"):
                self.rows.labels(account, event[5:]).inc(int(kind))

        return observe

    def update_accounts(self, statuses: list[AccountStatus]) -> None:
        """The gauges, per login: a login synced under several prefixes shows its largest lag
        (and its latest success), not whichever prefix came last."""
        lags: dict[str, float] = {}
        successes: dict[str, float] = {}
        for status in statuses:
            login = status.api_login
            if status.lag_seconds is not None:
                lags[login] = max(lags.get(login, status.lag_seconds), status.lag_seconds)
            if status.last_success_at is not None:
                moment = status.last_success_at.timestamp()
                successes[login] = max(successes.get(login, moment), moment)
        for login, lag in lags.items():
            self.lag.labels(login).set(lag)
        for login, moment in successes.items():
            self.last_success.labels(login).set(moment)


def serve(
    metrics: Metrics,
    host: str,
    port: int,
    read_statuses: Callable[[], list[AccountStatus]],
) -> ThreadingHTTPServer:
    """Serve /metrics and /healthz on host:port in a daemon thread (TCXC_METRICS_HOST,
    TCXC_METRICS_PORT); a port that cannot be bound is a ConfigError naming the settings."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if not self.path.startswith(("/metrics", "/healthz")):
                self._send(404, b"not found\n", "text/plain")
                return
            try:
                statuses = read_statuses()
            except Exception as exc:  # the database is down: unhealthy, and say why
                if self.path.startswith("/metrics"):  # the counters, without the lag gauges
                    self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
                    return
                self._send(
                    503,
                    orjson.dumps({"healthy": False, "error": type(exc).__name__}),
                    "application/json",
                )
                return
            metrics.update_accounts(statuses)
            if self.path.startswith("/metrics"):
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            else:
                lagging = [s.name for s in statuses if s.lagging]
                unfinished = [s.name for s in statuses if s.deep_pass_incomplete]
                healthy = not lagging and not unfinished
                body = {
                    "healthy": healthy,
                    "lagging": lagging,
                    "deep_pass_incomplete": unfinished,
                    "checked_at": datetime.now(UTC).isoformat(),
                }
                self._send(200 if healthy else 503, orjson.dumps(body), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("metrics request " + format, *args)

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise ConfigError(
            [f"TCXC_METRICS_PORT={port}: cannot listen on {host}:{port} ({exc.strerror})"]
        ) from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics and /healthz", host, port)
    return server
