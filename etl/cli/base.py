"""The command line's shared parts: the group, settings and database set-up, error mapping.

Exit codes: 0 success, 1 the run failed, 2 bad usage or configuration. A failure prints one
line on stderr saying what failed, where and what to try; a traceback only with --verbose.
Nothing imports the CLI; it imports the pipeline.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import click
from sqlalchemy import Engine

from etl import db, memory, pipeline
from etl.budget import RequestBudget
from etl.client import ApiClient
from etl.config import YEARS, Account, Settings, check_prefix, load_settings
from etl.dburl import url_passwords
from etl.errors import ConfigError, EtlError, UsageError
from etl.logs import RedactingFilter, configure
from etl.retry import RetryPolicy
from etl.state import Counts

log = logging.getLogger("etl")
DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")


@dataclasses.dataclass
class AppContext:
    """What every command gets: the settings and whether to show tracebacks."""

    settings: Settings
    verbose: bool
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)


def parse_when(text: str, settings: Settings, option: str) -> datetime:
    """A 'YYYY-MM-DD[ HH:MM:SS]' in the API time zone, as an aware datetime."""
    for fmt in DATE_FORMATS:
        try:
            moment = datetime.strptime(text.strip(), fmt).replace(tzinfo=settings.api_timezone)
        except ValueError:
            continue
        if moment.year not in YEARS:  # the years a CDR's times may hold
            raise UsageError(
                f"{option} {text!r} is out of range: give a year from {YEARS[0]} to {YEARS[-1]}"
            )
        return moment
    raise UsageError(f"{option} {text!r} is not a date such as 2026-01-31 or '2026-01-31 12:00:00'")


def _check_prefix(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    try:
        return None if value is None else check_prefix(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc} (as TCXC_PREFIX)") from None


# --prefix of the commands that read the API: checked as TCXC_PREFIX is (a prefix that is not
# digits would match no destination and load nothing, successfully).
prefix_option = click.option(
    "--prefix",
    default=None,
    callback=_check_prefix,
    help="Only CDRs whose destination starts with these digits.",
)


def parse_range(date_from: str, date_to: str, settings: Settings) -> tuple[datetime, datetime]:
    """``--from``/``--to`` as aware datetimes, with ``--to`` after ``--from``."""
    start = parse_when(date_from, settings, "--from")
    end = parse_when(date_to, settings, "--to")
    if end <= start:
        raise UsageError(f"--to {date_to!r} must be after --from {date_from!r}")
    return start, end


@contextmanager
def database(settings: Settings, *, schema: bool = True) -> Iterator[Engine]:
    """The configured (or embedded) database; with ``schema``, checked to hold this version's
    schema (every command but those that migrate). The embedded database is tcxc-etl's own:
    a new one (or one of an older tcxc-etl) is migrated rather than refused."""
    with db.open_database(
        settings.database_url.reveal(), settings.embedded_dir, settings.embedded_port
    ) as engine:
        if schema:
            db.check_schema(engine, upgrade=not settings.has_database_url)
        yield engine


def make_job(
    settings: Settings,
    account: Account,
    prefix: str | None = None,
    stop: threading.Event | None = None,
    observe: Callable[[str, str], None] | None = None,
) -> pipeline.Job:
    """A job for one account (``prefix`` overrides the account's own)."""
    if not account.login or not account.key:
        settings.require_credentials()  # names what is missing (a login without a key, ...)
        raise ConfigError([f"account {account.login}: its API key could not be read"])
    client = ApiClient(
        settings.api_url,
        account.login,
        account.key.reveal(),
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
    )
    job = pipeline.Job(
        client=client,
        settings=settings,
        prefix=account.prefix if prefix is None else prefix,
        retry=RetryPolicy(),
        stop=stop or threading.Event(),
        budget=_budget(settings, account.login),
    )
    return dataclasses.replace(job, observe=observe) if observe else job


_BUDGETS: dict[str, RequestBudget] = {}


def _budget(settings: Settings, login: str) -> RequestBudget:
    """One budget per account per process, shared by all of that account's jobs."""
    if login not in _BUDGETS:
        _BUDGETS[login] = RequestBudget(settings.requests_per_second, settings.requests_per_hour)
    return _BUDGETS[login]


def summary_line(windows: int, counts: Counts) -> str:
    """The run's totals; ``repeated``: records fetched again in the run (an i_cdr the API sent
    twice, or on the boundary second two windows share), each loaded once."""
    accounted = (
        counts.inserted + counts.updated + counts.unchanged + counts.rejected + counts.conflicts
    )
    repeated = counts.rows_fetched - accounted
    return (
        f"windows {windows}, pages {counts.pages}, rows fetched {counts.rows_fetched}: "
        f"inserted {counts.inserted}, updated {counts.updated}, unchanged {counts.unchanged}, "
        f"rejected {counts.rejected}, conflicts {counts.conflicts}"
        + (f", repeated {repeated}" if repeated > 0 else "")
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), help="TOML settings file."
)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging and tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: bool) -> None:
    """Keep a PostgreSQL warehouse of TCXC buyer CDRs complete and current."""
    ctx.obj = {"verbose": verbose}
    settings = load_settings(
        os.environ, config_path, keys=ctx.invoked_subcommand not in COMMANDS_WITHOUT_API
    )
    keys = [settings.api_key, *(account.key for account in settings.configured_accounts)]
    database_url = settings.database_url.reveal()
    redactor = configure(
        verbose, [key.reveal() for key in keys], [database_url], url_passwords(database_url)
    )
    _REDACTOR.secrets, _REDACTOR.exact = redactor.secrets, redactor.exact
    _REDACTOR.words = redactor.words
    ctx.obj = AppContext(settings=settings, verbose=verbose)


_REDACTOR = RedactingFilter()
# Commands that never call the TCXC API with the configured accounts: they run without the
# accounts' keys (an operator's shell may not hold the secrets).
COMMANDS_WITHOUT_API = frozenset(
    {"status", "report", "migrate", "db", "grant-readonly", "rebuild-rollup", "demo", "simulate"}
)


def _say_error(message: str) -> None:
    click.echo(f"tcxc-etl: error: {_REDACTOR.redact(message)}", err=True)


def _fail(message: str, code: int) -> NoReturn:
    _say_error(message)
    sys.exit(code)


def exit_now(message: str, code: int) -> NoReturn:
    """Say ``message`` as ``_fail`` does and end the process at once, without waiting for its
    other threads (a fetch slot can hang in a request for up to TCXC_READ_TIMEOUT): the
    database connections they hold close with the process, which rolls back their
    transactions."""
    _say_error(message)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@contextmanager
def stop_on_signal(app: AppContext) -> Iterator[None]:
    """SIGTERM or SIGINT (Ctrl-C) asks the block's work to stop, as the daemon does: open
    windows roll back at their next page boundary and no new one starts, so the command ends
    with what committed (a backfill says to run it again to resume). If it has not ended
    within TCXC_STOP_TIMEOUT (a request can hang for TCXC_READ_TIMEOUT), or on a second
    signal, the process exits 1 at once; PostgreSQL rolls back what was open."""
    timeout = app.settings.stop_timeout
    timers: list[threading.Timer] = []

    def request_stop(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if app.stop.is_set():
            exit_now(f"{name} again: stopped at once; open windows are rolled back", 1)
        log.warning("received %s: stopping (open windows roll back); again to exit at once", name)
        app.stop.set()
        message = (
            f"did not stop within TCXC_STOP_TIMEOUT ({timeout}) of {name}; "
            "open windows are rolled back as the process exits"
        )
        timer = threading.Timer(timeout.total_seconds(), exit_now, (message, 1))
        timer.daemon = True
        timers.append(timer)
        timer.start()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for timer in timers:
            timer.cancel()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, mapping errors to one line and an exit code."""
    verbose = "--verbose" in (argv or sys.argv) or "-v" in (argv or sys.argv)
    memory.limit_heap_growth()  # before any thread starts
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        _fail("interrupted", 1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code == 2 else exc.exit_code)
    except ConfigError as exc:
        _fail(f"configuration: {'; '.join(exc.problems)}", 2)
    except EtlError as exc:
        if verbose:
            log.exception("failed")
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 1)
    except Exception as exc:  # a bug: say so in one line, traceback on request
        if verbose:
            log.exception("internal error")
        _fail(f"internal error: {type(exc).__name__}: {exc} (run with --verbose for details)", 1)
