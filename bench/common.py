"""What the benchmarks share: a PostgreSQL server (embedded, or DATABASE_URL's), databases on
it, the machine's description and the result file.

The scripts run as ``python bench/NAME.py``, so this folder is on ``sys.path`` and they
``import common`` first; importing it puts the repository root on ``sys.path`` too, so that
``etl`` imports even where the package is not installed.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from etl import db  # noqa: E402  (the repository root must be importable first)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def postgres(prefix: str) -> Iterator[tuple[str, Path | None]]:
    """A server URL, and the data directory when it is our embedded one (for its CPU).

    DATABASE_URL's server when that is set; otherwise an embedded server (fsync off) in a
    temporary folder named ``prefix...``, stopped and removed afterwards."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield db.libpq_url(configured), None
        return
    from etl.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True) as workdir:
        server = EmbeddedPostgres(Path(workdir) / "pgdata", free_port(), fsync=False)
        server.start()
        try:
            yield server.url, server.data_dir
        finally:
            server.stop()


def _admin(server_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(server_url, autocommit=True, dbname="postgres")


def database_url(server_url: str, name: str) -> str:
    """The plain postgresql:// URL of database ``name`` on the server of ``server_url``."""
    return make_url(db.libpq_url(server_url)).set(database=name).render_as_string(False)


def create_database(server_url: str, name: str, template: str | None = None) -> str:
    """A new database ``name`` (a copy of ``template`` if given), replacing any of that name;
    returns its URL."""
    copy_of = f" TEMPLATE {template}" if template else ""
    with _admin(server_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}{copy_of}")
    return database_url(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    with _admin(server_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def simulator_accounts(login: str, key: str, accounts: int) -> dict[str, str]:
    """The simulator's logins and keys: ``login`` alone, or for N > 1 accounts ``login1`` ..
    ``loginN`` with keys ``key1`` .. ``keyN``."""
    if accounts == 1:
        return {login: key}
    return {f"{login}{k}": f"{key}{k}" for k in range(1, accounts + 1)}


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as info:
        memory_kb = int(info.readline().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def result_payload(started: float, settings: dict[str, Any], **results: Any) -> dict[str, Any]:
    """A result file's contents: the command, when, how long since ``started`` (a time.time()),
    the settings, the machine and the database, then ``results``."""
    return {
        "command": shlex.join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "settings": settings,
        "machine": machine(),
        "database": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded, fsync off",
        **results,
    }


def write_results(payload: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nwritten to {output}")
