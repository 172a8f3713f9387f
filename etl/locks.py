"""One writer per account, across processes and machines: PostgreSQL advisory locks.

A run holds a session-level advisory lock keyed on the account login on a dedicated
connection for as long as it works on that account. A second daemon, ``sync`` or ``backfill``
on the same account either skips it (try) or waits for it (backfill). If the lock's connection
drops, PostgreSQL releases the lock; the window transactions themselves stay atomic.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from sqlalchemy import Engine, text

from etl.db import database_errors

log = logging.getLogger(__name__)


def lock_key(api_login: str) -> int:
    """A stable signed 64-bit key for the account's advisory lock."""
    digest = hashlib.blake2b(f"tcxc-etl:account:{api_login}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# How often a wait for a lock that a stop request can end tries the lock again.
LOCK_POLL_SECONDS = 1.0


@contextmanager
def account_lock(
    engine: Engine, api_login: str, *, wait: bool, stop: threading.Event | None = None
) -> Iterator[bool]:
    """Hold the account's lock in the block. If another run holds it, yields False at once,
    or with ``wait`` once it is free (True); a wait with ``stop`` tries again every
    LOCK_POLL_SECONDS and yields False if ``stop`` is set meanwhile."""
    key = lock_key(api_login)
    with database_errors(f"locking account {api_login}"), engine.connect() as conn:
        conn.execute(text("COMMIT"))  # no transaction held open while we work

        def take() -> bool:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            conn.commit()
            return got

        got = take()
        if not got and wait:
            log.info("waiting for account=%s: another run holds its lock", api_login)
            if stop is None:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                conn.commit()
                got = True
            else:
                while not got and not stop.wait(LOCK_POLL_SECONDS):
                    got = take()

        def release() -> None:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()

        try:
            yield bool(got)
        except BaseException:
            # The error that ended the work is the one to report: if the lock's connection
            # died with it (a database restart), PostgreSQL has released the lock already.
            if got:
                with suppress(Exception):
                    release()
            raise
        if got:
            release()
