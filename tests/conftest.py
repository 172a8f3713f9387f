"""Shared fixtures: a real PostgreSQL (embedded unless TEST_DATABASE_URL is set), a fresh
migrated database per test, and the API simulator over real HTTP on 127.0.0.1."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import settings
from sqlalchemy import Engine, text

from etl import db
from etl.client import ApiClient
from etl.config import Secret, Settings
from etl.pipeline import Job
from etl.retry import RetryPolicy
from etl.simulator import Simulator, SimulatorConfig

# The suite (make test, CI) runs the same examples every time: a red run is the code's doing,
# reproducible, never a new random draw. HYPOTHESIS_PROFILE=explore draws new examples, many
# more of them: run it when changing the code the properties cover (README, Development).
settings.register_profile("tcxc", deadline=None, max_examples=100, derandomize=True)
settings.register_profile("explore", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "tcxc"))

# One template per pytest-xdist worker (`make test` runs two): on a shared TEST_DATABASE_URL
# server the workers must not drop each other's.
TEMPLATE = f"tcxc_test_template_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
SIM_END = datetime(2026, 10, 1)  # naive, API zone (UTC)


class FakeClock:
    """A clock a test moves by hand (Unix seconds; a naive ``moment`` is read as UTC)."""

    def __init__(self, moment: datetime) -> None:
        self.now = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()

    def __call__(self) -> float:
        return self.now


_counter = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server URL: TEST_DATABASE_URL, or an embedded server for this session."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        yield db.libpq_url(configured)
        return
    from etl.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", free_port(), fsync=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _admin(server_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(server_url, autocommit=True, dbname="postgres")


@pytest.fixture(scope="session")
def template_url(server_url: str) -> str:
    """A migrated template database that each test's database is cloned from."""
    with _admin(server_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    url = _with_db(server_url, TEMPLATE)
    engine = db.make_engine(url)
    db.migrate(engine)
    engine.dispose()
    return url


def _with_db(server_url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(server_url).set(database=name).render_as_string(False)


@pytest.fixture
def database_url(server_url: str, template_url: str) -> Iterator[str]:
    """A fresh, migrated database for one test; dropped afterwards."""
    name = f"tcxc_test_{os.getpid()}_{next(_counter)}"
    with _admin(server_url) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    yield _with_db(server_url, name)
    with _admin(server_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    name = f"tcxc_empty_{os.getpid()}_{next(_counter)}"
    with _admin(server_url) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield _with_db(server_url, name)
    with _admin(server_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the test's database; no connection may be left checked out."""
    eng = db.make_engine(database_url)
    yield eng
    checked_out = eng.pool.checkedout()  # type: ignore[attr-defined]
    eng.dispose()
    assert checked_out == 0, f"{checked_out} connection(s) left checked out"


@pytest.fixture
def sim_config() -> SimulatorConfig:
    """A small, fast data set: 2,000 CDRs over 10 days ending 2026-10-01."""
    return SimulatorConfig(accounts={"buyer1": "key-one"}, cdrs=2000, days=10, end=SIM_END)


@pytest.fixture
def sim(sim_config: SimulatorConfig) -> Iterator[Simulator]:
    """The simulator, serving over HTTP on 127.0.0.1."""
    with Simulator(sim_config) as server:
        yield server


# FIXED_GRID: tests sync on the planned grid of TCXC_WINDOW (they count windows and ledger rows)
# unless they ask for joined windows (TCXC_WINDOW_ROWS, etl.windows.coalesce_count): test_windows,
# test_pipeline's joined-window tests and test_resilience run with joining on.


def make_settings(sim: Simulator, database_url: str = "", **overrides: Any) -> Settings:
    """Settings pointing at the simulator (login buyer1) and the test database."""
    base = Settings(
        api_url=sim.url,
        api_login="buyer1",
        api_key=Secret("key-one"),
        database_url=Secret(database_url),
        page_size=250,
        window_rows=0,  # FIXED_GRID
    )
    return replace(base, **overrides)


NO_WAIT = RetryPolicy(attempts=6, base_delay=0.0, max_delay=0.0, sleep=lambda _s: None)


def make_job(settings: Settings, prefix: str = "", retry: RetryPolicy = NO_WAIT) -> Job:
    client = ApiClient(settings.api_url, settings.api_login, settings.api_key.reveal())
    return Job(client=client, settings=settings, prefix=prefix, retry=retry)


def sim_range() -> tuple[datetime, datetime]:
    """The simulator's whole data range as aware datetimes."""
    return datetime(2026, 9, 21, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC)


def table_rows(engine: Engine, query: str = "SELECT * FROM cdr ORDER BY i_cdr") -> list[Any]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(query))]


def write_counters(engine: Engine, table: str = "cdr") -> tuple[int, int, int]:
    """(inserts, updates, deletes) of a table, as the statistics collector counts them.

    A backend flushes its counts when it exits, after the client closed the connection
    (``engine.dispose()``) and after it left ``pg_stat_activity``: read once no other backend
    is connected to the database and two reads 0.2 s apart agree (PostgreSQL 15 was seen
    reading 1,400 of 2,000 inserts)."""
    counts = text(
        "SELECT n_tup_ins, n_tup_upd, n_tup_del, (SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid())"
        " FROM pg_stat_user_tables WHERE relname = :t"
    )
    seen: tuple[int, ...] = ()
    deadline = time.monotonic() + 10
    with engine.connect() as conn:
        while True:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            row = tuple(int(value) for value in conn.execute(counts, {"t": table}).one())
            if (row == seen and not row[3]) or time.monotonic() > deadline:
                return row[0], row[1], row[2]
            seen = row
            time.sleep(0.2)


ROOT = Path(__file__).resolve().parent.parent


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without TCXC settings, plus ``extra``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TCXC_", "DATABASE_URL"))}
    no_pacing = {"TCXC_REQUESTS_PER_SECOND": "0"}  # the simulator has no limits to respect
    return {**base, **no_pacing, "TCXC_WINDOW_ROWS": "0", **(extra or {})}  # FIXED_GRID


def sim_env(
    sim: Simulator,
    database_url: str,
    defaults: Mapping[str, str] | None = None,
    *,
    key: str = "key-one",
    **extra: str,
) -> dict[str, str]:
    """The TCXC settings a CLI process needs to sync from the simulator (login buyer1, ``key``)
    into ``database_url``, then a test file's ``defaults``, then ``extra`` (the later wins):
    the ``env`` of ``run_cli`` and ``start_cli``."""
    return {
        "TCXC_API_URL": sim.url,
        "TCXC_API_LOGIN": "buyer1",
        "TCXC_API_KEY": key,
        "DATABASE_URL": database_url,
        **(defaults or {}),
        **extra,
    }


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `python -m etl ARGS` as a real process with a clean TCXC environment plus ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "etl", *args],
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def backfill_args(start: str, end: str, *options: str) -> tuple[str, ...]:
    """`backfill --from START --to END OPTIONS...` as command-line arguments."""
    return ("backfill", "--from", start, "--to", end, *options)


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `python -m etl ARGS` in the background (stdout and stderr captured)."""
    return subprocess.Popen(
        [sys.executable, "-m", "etl", *args],
        env=cli_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def wait_until_blocked(watcher: psycopg.Connection[Any], pid: int, merging: Future[Any]) -> None:
    """Wait until backend ``pid`` waits for a lock (a window blocked on another's row), failing
    if ``merging`` (its work, in a thread) ends first."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert not merging.done(), "B's merge did not wait for A's row"
        row = watcher.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        if row is not None and row[0] == "Lock":
            return
        time.sleep(0.01)
    raise AssertionError("B's merge never waited for A's row lock")
