"""``tcxc-etl status``: per account, how current the warehouse is."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

from etl import state
from etl.config import Account
from etl.windows import Coverage, Window

# Runs and windows are the account's and prefix's (runs of no single prefix, from before
# migration 0009, count for each); rejects and conflicts are the login's.
_ACCOUNT = text(
    """
    WITH runs AS (
      SELECT * FROM etl_run WHERE api_login = :login AND (prefix = :prefix OR prefix IS NULL)
    )
    SELECT
      (SELECT watermark FROM sync_state WHERE api_login = :login AND prefix = :prefix),
      (SELECT status FROM runs ORDER BY id DESC LIMIT 1),
      (SELECT coalesce(finished_at, started_at) FROM runs ORDER BY id DESC LIMIT 1),
      (SELECT max(finished_at) FROM runs WHERE status = 'succeeded'),
      (SELECT coalesce(sum(inserted), 0) FROM sync_window
        WHERE api_login = :login AND prefix = :prefix AND status = 'done'
          AND finished_at > :since),
      (SELECT count(*) FROM cdr_reject WHERE api_login = :login AND loaded_at > :since),
      (SELECT count(*) FROM cdr_conflict WHERE api_login = :login AND loaded_at > :since)
    """
)
# Failed windows past the watermark, and the windows committed after the first of them that
# overlap them: a failed window is settled once later committed windows cover it between
# them (a retry may join planned windows otherwise than the failed run did).
_FAILED = text(
    """
    SELECT f.id, f.window_start, f.window_end FROM sync_window f
    WHERE f.api_login = :login AND f.prefix = :prefix AND f.status = 'failed'
      AND f.window_end > coalesce((SELECT watermark FROM sync_state s
        WHERE s.api_login = f.api_login AND s.prefix = f.prefix), '-infinity')
    """
)
_DONE_AFTER = text(
    """
    SELECT d.id, d.window_start, d.window_end FROM sync_window d
    WHERE d.api_login = :login AND d.prefix = :prefix AND d.status = 'done' AND d.id > :after
      AND d.window_end >= :lo AND d.window_start <= :hi
    """
)


@dataclass(frozen=True)
class AccountStatus:
    """One account's line in ``tcxc-etl status``."""

    api_login: str
    prefix: str
    watermark: datetime | None
    lag_seconds: float | None
    last_run_status: str | None
    last_run_at: datetime | None
    last_success_at: datetime | None
    rows_loaded_24h: int
    failed_windows_pending: int
    lagging: bool
    # Records set aside for review in the last 24 h (cdr_reject, cdr_conflict).
    rejected_24h: int = 0
    conflicts_24h: int = 0
    # The last deep pass of the account and prefix: its status and when it ended (started,
    # while running); incomplete until a later one succeeds (etl.state.DEEP_INCOMPLETE).
    deep_pass_status: str | None = None
    deep_pass_at: datetime | None = None
    deep_pass_incomplete: bool = False

    @property
    def name(self) -> str:
        """The login, with its prefix when it has one: ``login (prefix)``."""
        return f"{self.api_login} ({self.prefix})" if self.prefix else self.api_login

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        return data


def account_status(
    engine: Engine, account: Account, now: datetime, alert_after: timedelta
) -> AccountStatus:
    """Read the account's watermark, last run and recent activity."""
    names = {"login": account.login, "prefix": account.prefix}
    with engine.connect() as conn:
        row = conn.execute(_ACCOUNT, {**names, "since": now - timedelta(days=1)}).one()
        failed = conn.execute(_FAILED, names).all()
        done = (
            conn.execute(
                _DONE_AFTER,
                {
                    **names,
                    "after": min(f.id for f in failed),
                    "lo": min(f.window_start for f in failed),
                    "hi": max(f.window_end for f in failed),
                },
            ).all()
            if failed
            else []
        )
    deep = state.last_deep_pass(engine, account.login, account.prefix)
    watermark, last_status, last_at, last_ok, rows_24h, rejected_24h, conflicts_24h = row
    waiting = [
        (f.window_start, f.window_end)
        for f in failed
        if Window(f.window_start, f.window_end)
        not in Coverage((d.window_start, d.window_end) for d in done if d.id > f.id)
    ]
    pending = Coverage(waiting).spans  # a window failing pass after pass counts once
    lag = (now - watermark).total_seconds() if watermark else None
    return AccountStatus(
        api_login=account.login,
        prefix=account.prefix,
        watermark=watermark,
        lag_seconds=lag,
        last_run_status=last_status,
        last_run_at=last_at,
        last_success_at=last_ok,
        rows_loaded_24h=int(rows_24h),
        failed_windows_pending=int(pending),
        lagging=lag is None or lag > alert_after.total_seconds(),
        rejected_24h=int(rejected_24h),
        conflicts_24h=int(conflicts_24h),
        deep_pass_status=deep.status if deep else None,
        deep_pass_at=deep.at if deep else None,
        deep_pass_incomplete=bool(deep and deep.incomplete),
    )


def format_status(statuses: list[AccountStatus]) -> str:
    """A human-readable table."""
    lines = [
        f"{'account':<20} {'watermark':<26} {'lag':>10} {'last run':<10} {'rows 24h':>9} "
        f"{'failed':>6} {'rejects 24h':>11} {'conflicts 24h':>13} {'deep pass':<10}"
    ]
    for s in statuses:
        lag = "never" if s.lag_seconds is None else str(timedelta(seconds=int(s.lag_seconds)))
        mark = ("  LAGGING" if s.lagging else "") + (
            "  DEEP PASS INCOMPLETE" if s.deep_pass_incomplete else ""
        )
        lines.append(
            f"{s.name:<20} {s.watermark or '-'!s:<26} {lag:>10} "
            f"{s.last_run_status or '-':<10} {s.rows_loaded_24h:>9} {s.failed_windows_pending:>6}"
            f" {s.rejected_24h:>11} {s.conflicts_24h:>13} {s.deep_pass_status or '-':<10}{mark}"
        )
    return "\n".join(lines)
