"""Commands that sync: migrate, backfill, sync, daemon, status."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
import orjson
from sqlalchemy import Engine

from etl import db, pipeline, state
from etl.cli.base import (
    AppContext,
    cli,
    database,
    exit_now,
    make_job,
    parse_range,
    prefix_option,
    stop_on_signal,
    summary_line,
)
from etl.config import Settings
from etl.db import database_errors
from etl.errors import ConfigError, EtlError, StopRequestedError
from etl.locks import account_lock
from etl.passes import DEEP, INCREMENTAL, PassResult, run_all
from etl.progress import WindowProgress
from etl.status import account_status, format_status
from etl.windows import Coverage, plan_windows

if TYPE_CHECKING:
    from etl.metrics import Metrics

log = logging.getLogger("etl")


def run_backfill(
    engine: Engine,
    job: pipeline.Job,
    start: datetime,
    end: datetime,
    *,
    resume: bool = True,
    repair: bool = False,
) -> pipeline.RunSummary:
    """Backfill under the account's lock (waiting for it) with progress; raise if it failed."""
    windows = list(plan_windows(start, end, job.settings.window))
    with account_lock(engine, job.api_login, wait=True, stop=job.stop) as locked:
        if not locked:  # a stop request ended the wait
            raise EtlError(f"stopped while waiting for the lock of account {job.api_login}")
        with WindowProgress(len(windows)) as bar:
            summary = pipeline.backfill(
                engine, job, start, end, bar.update, resume=resume, locked=True, repair=repair
            )
    resumed = f" ({summary.skipped} already done by an interrupted run)" if summary.skipped else ""
    click.echo(summary_line(summary.windows, summary.counts) + resumed)
    if summary.stopped:
        raise EtlError("backfill stopped; run the same backfill again to resume it")
    if summary.paused:
        raise EtlError(
            f"the hourly request budget (TCXC_REQUESTS_PER_HOUR) is spent after "
            f"{summary.windows} window(s); run the same backfill again later to resume it"
        )
    if summary.failures:
        _window, error = summary.failures[0]
        raise EtlError(
            f"{len(summary.failures)} window(s) failed; first: {error}. Committed windows are "
            "kept; run the same backfill again to retry the rest"
        )
    return summary


@cli.command()
@click.pass_obj
def migrate(app: AppContext) -> None:
    """Upgrade the database schema to the latest version (alembic upgrade head)."""
    with database(app.settings, schema=False) as engine:
        before = db.migrate(engine)
    if before == [db.SCHEMA_REVISION]:
        click.echo(f"database schema already at revision {db.SCHEMA_REVISION}: nothing to do")
    else:
        click.echo(
            f"migrated the database schema from {db.describe_versions(before)} "
            f"to revision {db.SCHEMA_REVISION}"
        )


@cli.command()
@click.option("--from", "date_from", required=True, help="Start, 'YYYY-MM-DD[ HH:MM:SS]'.")
@click.option("--to", "date_to", required=True, help="End (an instant; a date means midnight).")
@click.option("--account", default=None, help="Account login (when several are configured).")
@prefix_option
@click.option("--dry-run", is_flag=True, help="Print the plan; fetch nothing.")
@click.option(
    "--repair",
    is_flag=True,
    help="Compare every stored row with the API's values (not only its digest) and rewrite"
    " those that differ; resumes nothing.",
)
@click.pass_obj
def backfill(
    app: AppContext,
    date_from: str,
    date_to: str,
    account: str | None,
    prefix: str | None,
    dry_run: bool,
    repair: bool,
) -> None:
    """Sync a date range now, window by window, and print a summary (resumable)."""
    settings = app.settings
    start, end = parse_range(date_from, date_to, settings)
    job = make_job(settings, settings.account(account), prefix, app.stop)
    if dry_run:
        _print_plan(settings, job, start, end, resume=not repair)
        return
    with stop_on_signal(app), database(settings) as engine:
        run_backfill(engine, job, start, end, repair=repair)


def _print_plan(
    settings: Settings, job: pipeline.Job, start: datetime, end: datetime, *, resume: bool
) -> None:
    windows = list(plan_windows(start, end, settings.window))
    done: set[tuple[datetime, datetime]] = set()
    if resume:  # (--repair reads every window again)
        try:
            with database(settings) as engine:
                done = pipeline.windows_done(engine, job, windows)
        except EtlError as exc:
            click.echo(f"(cannot read the ledger, showing every window as to do: {exc})", err=True)
    committed = Coverage(done)
    marks = ["done" if window in committed else "todo" for window in windows]
    joined = (
        f", joined up to {settings.window_rows:,} rows per window once the run has seen how "
        "dense they are (TCXC_WINDOW_ROWS)"
        if settings.window_rows
        else ""
    )
    click.echo(
        f"backfill plan: account {job.api_login}, prefix {job.prefix or '(all)'}, "
        f"{len(windows)} window(s) of {settings.window}{joined}, "
        f"{marks.count('done')} already done"
    )
    for window, mark in zip(windows, marks, strict=True):
        click.echo(f"  {mark}  {window}")


def _jobs(app: AppContext, observe_for: Any = None) -> list[pipeline.Job]:
    accounts = app.settings.accounts
    if not accounts:
        app.settings.require_credentials()
    return [
        make_job(
            app.settings,
            account,
            None,
            app.stop,
            observe_for(account.login) if observe_for else None,
        )
        for account in accounts
    ]


def _report(result: PassResult) -> None:
    if result.summary is None and result.deep_retry is None:
        click.echo(f"{result.api_login}: {result.skipped or result.error}")
    for label, summary in (("", result.summary), ("unfinished deep pass ", result.deep_retry)):
        if summary is not None:
            click.echo(
                f"{result.api_login}: {label}{summary.status}: "
                + summary_line(summary.windows, summary.counts)
            )


def _first_error(result: PassResult) -> object:
    for summary in (result.summary, result.deep_retry):
        if summary is not None and summary.failures:
            return summary.failures[0][1]
    return result.error or "stopped"


@cli.command()
@click.option("--deep", is_flag=True, help="Run the deep re-sync pass instead.")
@click.pass_obj
def sync(app: AppContext, deep: bool) -> None:
    """One incremental pass for every configured account, then exit (for cron)."""
    jobs = _jobs(app)
    with stop_on_signal(app), database(app.settings) as engine:
        results = run_all(engine, jobs, DEEP if deep else INCREMENTAL, on_result=_report)
    failed = [r for r in results if not r.ok]
    if failed:
        first = failed[0]
        raise EtlError(
            f"{len(failed)} account(s) did not complete; first: {first.api_login}: "
            f"{_first_error(first)}"
        )


def daemon_passes(
    engine: Engine,
    jobs: list[pipeline.Job],
    metrics: Metrics,
    halt: Callable[[str], None] | None = None,
) -> tuple[Callable[[], None], Callable[[], None]]:
    """The daemon's two scheduled jobs (incremental, deep): a pass over every account, each
    account's outcome counted in ``tcxc_runs_total`` by kind and status.

    Each pass first reads the schema revision: a database migrated since the daemon started
    (by a newer tcxc-etl) or taken back is not written to; ``halt`` gets the reason (the
    daemon stops on it). A database that cannot be read is left to the pass to report."""

    def schema_moved() -> bool:
        try:
            versions = db.schema_versions(engine)
        except EtlError:
            return False
        problem = db.schema_problem(versions)
        if problem and halt is not None:
            halt(f"{problem} (it changed since the daemon started); the daemon stops")
        return problem is not None

    def recorder(kind: str) -> Callable[[PassResult], None]:
        def record(result: PassResult) -> None:
            if result.deep_retry is not None:  # an incremental pass finished a deep pass
                metrics.runs.labels(DEEP, result.deep_retry.status).inc()
            if result.summary is not None:
                metrics.runs.labels(kind, result.summary.status).inc()
            elif isinstance(result.error, StopRequestedError):  # stopped waiting for the lock
                metrics.runs.labels(kind, "stopped").inc()
            elif result.error is not None:  # no run row (say, the database is down)
                metrics.runs.labels(kind, "failed").inc()
            # (skipped: another process is syncing the account; that process counts it)

        return record

    def incremental() -> None:
        if not schema_moved():
            run_all(engine, jobs, INCREMENTAL, on_result=recorder(INCREMENTAL))

    def deep() -> None:
        if schema_moved():
            return
        try:  # its cron tick (5-field cron: a minute), for every account of the pass
            with database_errors("the deep pass"):
                tick = state.database_now(engine, minute=True)
        except EtlError:
            tick = None  # (the pass reports the database's state)
        run_all(engine, jobs, DEEP, on_result=recorder(DEEP), due=tick)

    return incremental, deep


@cli.command()
@click.pass_obj
def daemon(app: AppContext) -> None:
    """Run the schedule in the foreground until SIGTERM or SIGINT."""
    from etl.metrics import Metrics, serve
    from etl.scheduler import build_scheduler, run_until_signalled

    settings = app.settings
    metrics = Metrics()
    jobs = _jobs(app, metrics.observer)
    with database(settings) as engine:
        if settings.metrics_port:
            serve(
                metrics,
                settings.metrics_host,
                settings.metrics_port,
                lambda: _statuses(engine, settings),
            )
        halted: list[str] = []

        def halt(reason: str) -> None:
            log.error("%s", reason)
            halted.append(reason)
            app.stop.set()

        passes = daemon_passes(engine, jobs, metrics, halt)
        scheduler = build_scheduler(settings, *passes)
        clean = run_until_signalled(scheduler, app.stop, settings.stop_timeout.total_seconds())
    if halted:
        exit_now(halted[0], 1)
    if not clean:  # a thread may still wait on a request: do not wait for it at exit
        exit_now(
            f"the running pass did not stop within TCXC_STOP_TIMEOUT ({settings.stop_timeout}); "
            "its open window is rolled back as the process exits",
            1,
        )


def _statuses(engine: Engine, settings: Settings) -> list[Any]:
    now = datetime.now(UTC)
    return [account_status(engine, a, now, settings.lag_alert) for a in settings.accounts]


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(app: AppContext, as_json: bool) -> None:
    """Per account: watermark, lag, last run, rows in 24 h, failed windows, last deep pass
    (exit 1 if lagging or if the last deep pass did not complete)."""
    settings = app.settings
    if not settings.accounts:  # it reads the database only: a login is enough, no key
        raise ConfigError(
            ["TCXC_API_LOGIN is not set: give the buyer login (or [[accounts]] in --config)"]
        )
    with database(settings) as engine:
        statuses = _statuses(engine, settings)
    if as_json:
        click.echo(
            orjson.dumps([s.as_json() for s in statuses], option=orjson.OPT_INDENT_2).decode()
        )
    else:
        click.echo(format_status(statuses))
    lagging = [s.name for s in statuses if s.lagging]
    if lagging:
        click.echo(
            f"tcxc-etl: lag past TCXC_LAG_ALERT ({settings.lag_alert}) for: {', '.join(lagging)}",
            err=True,
        )
    unfinished = [s.name for s in statuses if s.deep_pass_incomplete]
    if unfinished:
        click.echo(
            f"tcxc-etl: the last deep pass did not complete for: {', '.join(unfinished)} (the "
            "next incremental pass finishes it; or run `tcxc-etl sync --deep`)",
            err=True,
        )
    if lagging or unfinished:
        sys.exit(1)
