"""``tcxc-etl status``'s reading of the ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from etl import state
from etl.config import Account, Secret
from etl.status import account_status

DAY = timedelta(days=1)
T0 = datetime(2026, 9, 1, tzinfo=UTC)


def _ledger(engine: Engine, *windows: tuple[str, int, int]) -> None:
    """Ledger rows (status, first day, last day) of account buyer1, in this order."""
    run_id = state.start_run(engine, "backfill", "buyer1", T0, T0 + 30 * DAY)
    with engine.begin() as conn:
        for status, first, last in windows:
            conn.execute(
                text(
                    "INSERT INTO sync_window (run_id, api_login, prefix, window_start, window_end,"
                    " status) VALUES (:run, 'buyer1', '', :start, :end, :status)"
                ),
                {
                    "run": run_id,
                    "start": T0 + first * DAY,
                    "end": T0 + last * DAY,
                    "status": status,
                },
            )


def _pending(engine: Engine) -> int:
    status = account_status(engine, Account("buyer1", Secret("k")), T0 + 40 * DAY, DAY)
    return status.failed_windows_pending


def test_a_failed_window_is_settled_by_later_windows_covering_it_together(
    engine: Engine,
) -> None:
    """Windows are joined by density, so a retry may cut a failed window's range otherwise:
    it is settled once later committed windows cover it between them, not only by one."""
    _ledger(engine, ("failed", 5, 12), ("done", 5, 6), ("done", 6, 9))
    assert _pending(engine) == 1, "days 9-12 are not covered yet"
    _ledger(engine, ("done", 9, 14))
    assert _pending(engine) == 0


def test_a_window_committed_before_the_failure_does_not_settle_it(engine: Engine) -> None:
    _ledger(engine, ("done", 0, 20), ("failed", 5, 12))
    assert _pending(engine) == 1


def test_rejects_and_conflicts_of_the_last_day_are_counted(engine: Engine) -> None:
    """A NOC reading `status` sees records set aside for review (rejects, conflicts) as they
    arrive, per account; older ones and other accounts' are not counted."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for login, digest, age in (("buyer1", "a", 1), ("buyer1", "b", 30), ("other", "c", 1)):
            conn.execute(
                text(
                    "INSERT INTO cdr_reject (api_login, reason, raw, raw_digest, loaded_at)"
                    " VALUES (:login, 'bad', '{}', :digest, :at)"
                ),
                {"login": login, "digest": digest, "at": now - timedelta(hours=age)},
            )
        conn.execute(
            text(
                "INSERT INTO cdr_conflict (i_cdr, api_login, incoming_payload, payload_digest)"
                " VALUES (1, 'buyer1', '{}', 'x'), (2, 'buyer1', '{}', 'y')"
            )
        )
    status = account_status(engine, Account("buyer1", Secret("k")), now, DAY)
    assert (status.rejected_24h, status.conflicts_24h) == (1, 2)


def test_a_window_failing_pass_after_pass_counts_once(engine: Engine) -> None:
    """An account whose every pass fails the same window (a wrong key, say): each pass retries
    it from the same start with a later end, and the failed rows overlap. They are one span
    waiting for a retry, not one per pass; spans apart count apart."""
    _ledger(engine, ("failed", 5, 6), ("failed", 5, 7), ("failed", 5, 8), ("failed", 20, 21))
    assert _pending(engine) == 2


def _deep_run(
    engine: Engine, status: str, prefix: str = "", started: int = 0, finishes: int | None = None
) -> int:
    run_id = state.start_run(
        engine, "deep-sync", "buyer1", T0, T0 + DAY, prefix=prefix, finishes_run=finishes
    )
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE etl_run SET status = :status, started_at = :started WHERE id = :id"),
            {"status": status, "id": run_id, "started": T0 + started * DAY},
        )
    return run_id


def _deep(engine: Engine, prefix: str = "") -> tuple[str | None, bool]:
    account = Account("buyer1", Secret("k"), prefix=prefix)
    status = account_status(engine, account, T0 + 40 * DAY, DAY)
    return status.deep_pass_status, status.deep_pass_incomplete


def test_the_last_deep_pass_of_the_account_and_prefix_decides(engine: Engine) -> None:
    """A deep pass that did not complete (failed, paused by the budget, stopped, or left by a
    dead process) is shown until a later one of the same account and prefix succeeds; one
    running now is not a failure, and another prefix's deep passes do not count."""
    assert _deep(engine) == (None, False), "no deep pass yet"
    for status in ("failed", "paused", "stopped", "abandoned"):
        _deep_run(engine, "succeeded")
        _deep_run(engine, status)
        assert _deep(engine) == (status, True)
    _deep_run(engine, "running")
    assert _deep(engine) == ("running", False)
    _deep_run(engine, "succeeded", prefix="44")
    assert _deep(engine) == ("running", False)
    assert _deep(engine, "44") == ("succeeded", False)
    _deep_run(engine, "succeeded")
    assert _deep(engine) == ("succeeded", False)


def test_a_deep_pass_of_no_recorded_prefix_counts_for_each_prefix(engine: Engine) -> None:
    """A deep pass stopped before its first window by a tcxc-etl from before migration 0009
    (stopping the old daemon to upgrade does that) has no prefix: it is shown, and finished,
    for each prefix of the login, as its last run is (it was invisible: `deep pass -`)."""
    _deep_run(engine, "succeeded", prefix="44")
    old = _deep_run(engine, "stopped", prefix="44")
    with engine.begin() as conn:
        conn.execute(text("UPDATE etl_run SET prefix = NULL WHERE id = :id"), {"id": old})
    assert _deep(engine) == ("stopped", True)
    assert _deep(engine, "44") == ("stopped", True)
    last = state.last_deep_pass(engine, "buyer1", "44")
    assert last is not None and last.whole_run_id == old
    _deep_run(engine, "succeeded", prefix="44")
    assert _deep(engine, "44") == ("succeeded", False)
    assert _deep(engine) == ("stopped", True)


def test_finishing_counts_from_the_last_whole_deep_pass(engine: Engine) -> None:
    """Windows committed since the last whole deep pass began need no re-sync when it is
    finished: finishing runs that fail again do not move that point (their own start would
    discard what the pass committed), and a newer whole pass does (what an older unfinished
    pass committed was read before the late CDRs the newer one is there to find)."""
    _deep_run(engine, "succeeded", started=1)
    whole = _deep_run(engine, "failed", started=2)
    _deep_run(engine, "failed", started=3, finishes=whole)
    _deep_run(engine, "stopped", started=4, finishes=whole)
    last = state.last_deep_pass(engine, "buyer1", "")
    assert last is not None and last.status == "stopped" and last.whole_run_id == whole
    assert last.unfinished_since == T0 + 2 * DAY
    newer = _deep_run(engine, "stopped", started=5)
    last = state.last_deep_pass(engine, "buyer1", "")
    assert last is not None and last.whole_run_id == newer
    assert last.unfinished_since == T0 + 5 * DAY
    _deep_run(engine, "failed", prefix="44", started=6)
    other = state.last_deep_pass(engine, "buyer1", "44")
    assert other is not None and other.unfinished_since == T0 + 6 * DAY


def test_two_prefixes_of_one_login_each_show_their_own_runs_and_rows(engine: Engine) -> None:
    """[[accounts]] entries of one login with two prefixes: each line shows its own last run
    and rows (one showed `last run succeeded` beside its own failed deep pass), and is named
    with its prefix wherever accounts are listed (status's error lines, /healthz)."""
    for prefix, status, inserted in (("44", "failed", 7), ("91", "succeeded", 5)):
        run_id = state.start_run(engine, "sync", "buyer1", T0, T0 + DAY, prefix=prefix)
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE etl_run SET status = :s, finished_at = now() WHERE id = :r"),
                {"s": status, "r": run_id},
            )
            conn.execute(
                text(
                    "INSERT INTO sync_window (run_id, api_login, prefix, window_start,"
                    " window_end, status, inserted) VALUES (:r, 'buyer1', :p, :a, :b, 'done', :n)"
                ),
                {"r": run_id, "p": prefix, "a": T0, "b": T0 + DAY, "n": inserted},
            )
    now = datetime.now(UTC)
    lines = {
        prefix: account_status(engine, Account("buyer1", Secret("k"), prefix), now, DAY)
        for prefix in ("44", "91")
    }
    assert (lines["44"].last_run_status, lines["44"].rows_loaded_24h) == ("failed", 7)
    assert (lines["91"].last_run_status, lines["91"].rows_loaded_24h) == ("succeeded", 5)
    assert lines["44"].name == "buyer1 (44)"


def test_the_lag_gauge_of_a_login_with_two_prefixes_is_its_largest(engine: Engine) -> None:
    """tcxc_lag_seconds is labelled by login: with two prefixes it showed whichever came last;
    it shows the larger lag (an alert on it must not miss the lagging prefix)."""
    from prometheus_client import generate_latest

    from etl.metrics import Metrics

    now = datetime.now(UTC)
    with engine.begin() as conn:
        for prefix, hours in (("44", 5), ("91", 1)):
            conn.execute(
                text("INSERT INTO sync_state (api_login, prefix, watermark) VALUES ('b', :p, :w)"),
                {"p": prefix, "w": now - timedelta(hours=hours)},
            )
    metrics = Metrics()
    metrics.update_accounts(
        [account_status(engine, Account("b", Secret("k"), p), now, DAY) for p in ("44", "91")]
    )
    text_ = generate_latest(metrics.registry).decode()
    assert 'tcxc_lag_seconds{account="b"} 18000.0' in text_, text_
