"""The command line: a thin layer over the pipeline; nothing imports this module.

Exit codes: 0 success, 1 the run failed, 2 bad usage or configuration. A failure prints one
line on stderr saying what failed, where and what to try; a traceback only with --verbose.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
from sqlalchemy import Engine

from etl import db, pipeline
from etl.client import ApiClient
from etl.config import Settings, load_settings, mask_url
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


def parse_when(text: str, settings: Settings, option: str) -> datetime:
    """A 'YYYY-MM-DD[ HH:MM:SS]' in the API time zone, as an aware datetime."""
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt).replace(tzinfo=settings.api_timezone)
        except ValueError:
            continue
    raise UsageError(f"{option} {text!r} is not a date such as 2026-01-31 or '2026-01-31 12:00:00'")


@contextmanager
def database(settings: Settings) -> Iterator[Engine]:
    with db.open_database(
        settings.database_url.reveal(), settings.embedded_dir, settings.embedded_port
    ) as engine:
        yield engine


def make_job(settings: Settings, prefix: str) -> pipeline.Job:
    settings.require_credentials()
    client = ApiClient(
        settings.api_url,
        settings.api_login,
        settings.api_key.reveal(),
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
    )
    return pipeline.Job(client=client, settings=settings, prefix=prefix, retry=RetryPolicy())


def summary_line(windows: int, counts: Counts) -> str:
    return (
        f"windows {windows}, pages {counts.pages}, rows fetched {counts.rows_fetched}: "
        f"inserted {counts.inserted}, updated {counts.updated}, unchanged {counts.unchanged}, "
        f"rejected {counts.rejected}, conflicts {counts.conflicts}"
    )


def run_backfill(engine: Engine, job: pipeline.Job, start: datetime, end: datetime) -> None:
    """Backfill and print the summary; raise the first window error if any window failed."""

    summary = pipeline.backfill(engine, job, start, end)
    click.echo(summary_line(summary.windows, summary.counts))
    if summary.failures:
        _window, error = summary.failures[0]
        raise EtlError(
            f"{len(summary.failures)} window(s) failed; first: {error}. Committed windows are "
            "kept; run the same backfill again to retry"
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
    settings = load_settings(os.environ, config_path)
    redactor = configure(verbose, [settings.api_key.reveal(), settings.database_url.reveal()])
    _REDACTOR.secrets = redactor.secrets
    ctx.obj = AppContext(settings=settings, verbose=verbose)


@cli.command()
@click.pass_obj
def migrate(app: AppContext) -> None:
    """Upgrade the database schema to the latest version (alembic upgrade head)."""
    with database(app.settings) as engine:
        db.migrate(engine)
    click.echo("database schema is up to date")


@cli.command()
@click.option("--from", "date_from", required=True, help="Start, 'YYYY-MM-DD[ HH:MM:SS]'.")
@click.option("--to", "date_to", required=True, help="End (an instant; a date means midnight).")
@click.option("--prefix", default=None, help="Only CDRs whose destination starts with this.")
@click.pass_obj
def backfill(app: AppContext, date_from: str, date_to: str, prefix: str | None) -> None:
    """Sync a date range now, window by window, and print a summary."""
    settings = app.settings
    start = parse_when(date_from, settings, "--from")
    end = parse_when(date_to, settings, "--to")
    if end <= start:
        raise UsageError(f"--to {date_to!r} must be after --from {date_from!r}")
    job = make_job(settings, settings.prefix if prefix is None else prefix)
    with database(settings) as engine:
        run_backfill(engine, job, start, end)


@cli.command()
@click.option("--limit", default=5, show_default=True, help="Rows in the top lists.")
@click.pass_obj
def report(app: AppContext, limit: int) -> None:
    """Print rows loaded, top destinations by spend and ASR by vendor."""
    from etl.report import build_report

    with database(app.settings) as engine:
        click.echo(build_report(engine, limit))


def _simulator_config(**options: Any) -> Any:
    from etl.simulator import SimulatorConfig

    return SimulatorConfig(**{key: value for key, value in options.items() if value is not None})


@cli.command()
@click.option("--port", default=8089, show_default=True, help="Port on 127.0.0.1 (0 = any).")
@click.option("--cdrs", default=10_000, show_default=True, help="CDRs per account.")
@click.option("--seed", default=1, show_default=True, help="Seed of the generated data.")
@click.option("--days", default=30, show_default=True, help="Days of history, ending today.")
@click.option("--login", default="demo", show_default=True, help="Buyer login it accepts.")
@click.option("--key", default="demo-key", show_default=True, help="API key it accepts.")
@click.option("--max-page-size", type=int, default=None, help="Cap rows per page silently.")
@click.option("--order", type=click.Choice(["asc", "desc", "shuffled"]), default="asc")
@click.option("--latency", type=float, default=0.0, help="Seconds added to every request.")
@click.option("--fault-rate", type=float, default=0.0, help="Share of requests that fail.")
def simulate(
    port: int,
    cdrs: int,
    seed: int,
    days: int,
    login: str,
    key: str,
    max_page_size: int | None,
    order: str,
    latency: float,
    fault_rate: float,
) -> None:
    """Run the TCXC-compatible API simulator on 127.0.0.1 until interrupted."""
    from etl.simulator import Simulator

    config = _simulator_config(
        accounts={login: key},
        cdrs=cdrs,
        seed=seed,
        days=days,
        port=port,
        max_page_size=max_page_size,
        order=order,
        latency=latency,
    )
    sim = Simulator(config)
    if fault_rate:
        sim.set_fault_rate(fault_rate, ["429", "500", "503", "truncated", "html"], seed=seed)
    click.echo(f"TCXC simulator listening on {sim.url} (login {login!r}); Ctrl-C stops it")
    click.echo(f"  TCXC_API_URL={sim.url} TCXC_API_LOGIN={login} TCXC_API_KEY=<the --key value>")
    try:
        sim.serve_forever()
    except KeyboardInterrupt:
        click.echo("simulator stopped")


@cli.command()
@click.option("--cdrs", default=50_000, show_default=True, help="Simulated CDRs.")
@click.option("--days", default=30, show_default=True, help="Days of history to backfill.")
@click.pass_obj
def demo(app: AppContext, cdrs: int, days: int) -> None:
    """End to end on local parts: simulator, database, migrate, backfill, report.

    Uses the embedded PostgreSQL unless DATABASE_URL is set. The API is always the local
    simulator, whatever TCXC_API_* say: the demo never calls the real API.
    """
    from etl.report import build_report
    from etl.simulator import Simulator

    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    config = _simulator_config(
        accounts={"demo": "demo-key"},
        cdrs=cdrs,
        end=end.replace(tzinfo=None),
        days=days,
        port=0,
    )
    with Simulator(config) as sim:
        settings = dataclasses.replace(
            app.settings,
            api_url=sim.url,
            api_login="demo",
            api_key=type(app.settings.api_key)("demo-key"),
            api_timezone=UTC,  # type: ignore[arg-type]
        )
        click.echo(f"simulator: {sim.url}, {cdrs:,} CDRs over {days} days")
        with database(settings) as engine:
            db.migrate(engine)
            click.echo(f"database: {mask_url(db.libpq_url(engine.url.render_as_string(False)))}")
            run_backfill(engine, make_job(settings, ""), start, end)
            click.echo("")
            click.echo(build_report(engine))
            if not settings.has_database_url:
                click.echo("")
                click.echo("The embedded database stops when this command ends; keep it up for")
                click.echo("a BI tool with `tcxc-etl db start` (then `tcxc-etl db url`).")


@cli.group(name="db")
def db_group() -> None:
    """Manage the embedded PostgreSQL (used when DATABASE_URL is not set)."""


def _embedded(app: AppContext) -> Any:
    from etl.embedded import EmbeddedPostgres, default_data_dir

    if app.settings.has_database_url:
        raise UsageError("DATABASE_URL is set: the embedded PostgreSQL is not in use")
    data_dir = app.settings.embedded_dir or default_data_dir()
    return EmbeddedPostgres(data_dir, app.settings.embedded_port)


@db_group.command(name="start")
@click.pass_obj
def db_start(app: AppContext) -> None:
    """Start the embedded PostgreSQL and keep it running (for BI tools)."""
    server = _embedded(app)
    server.start()
    server.mark_persistent(True)
    db.migrate(db.make_engine(server.url))
    click.echo(server.url)


@db_group.command(name="stop")
@click.pass_obj
def db_stop(app: AppContext) -> None:
    """Stop the embedded PostgreSQL."""
    server = _embedded(app)
    server.mark_persistent(False)
    server.stop()
    click.echo("embedded PostgreSQL stopped")


@db_group.command(name="url")
@click.pass_obj
def db_url(app: AppContext) -> None:
    """Print the connection URL (for psql and BI tools)."""
    if app.settings.has_database_url:
        click.echo(mask_url(db.libpq_url(app.settings.database_url.reveal())))
        return
    server = _embedded(app)
    state = "running" if server.is_running() else "stopped: run `tcxc-etl db start`"
    click.echo(f"{server.url}  ({state})")


_REDACTOR = RedactingFilter()


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"tcxc-etl: error: {_REDACTOR.redact(message)}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, mapping errors to one line and an exit code."""
    verbose = "--verbose" in (argv or sys.argv) or "-v" in (argv or sys.argv)
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
