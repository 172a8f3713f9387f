"""Commands for local use: the simulator, the demo, the embedded database, the report."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import click

from etl import db
from etl.cli.base import AppContext, cli, database, make_job
from etl.cli.sync import run_backfill
from etl.config import Account, Secret
from etl.dburl import mask_url
from etl.errors import UsageError


@cli.command()
@click.option(
    "--limit",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rows in the top lists.",
)
@click.pass_obj
def report(app: AppContext, limit: int) -> None:
    """Print rows loaded, top destinations by spend and ASR by vendor."""
    from etl.report import build_report

    with database(app.settings) as engine:
        click.echo(build_report(engine, limit))


def _simulator_config(**options: Any) -> Any:
    from etl.simulator import SimulatorConfig

    try:
        return SimulatorConfig(**{k: v for k, v in options.items() if v is not None})
    except ValueError as exc:  # the options' values, said as the simulator checks them
        raise UsageError(str(exc)) from None


def _accounts(specs: tuple[str, ...], first: str) -> dict[str, str]:
    """``--account LOGIN:KEY`` values as {login: key}; UsageError naming the bad one."""
    accounts: dict[str, str] = {}
    for spec in specs:
        name, colon, secret = spec.partition(":")
        name = name.strip()
        if not colon:  # not echoed: the value may be a key given alone
            raise UsageError("--account expects LOGIN:KEY; a value has no ':'")
        if not name or not secret:
            raise UsageError(f"--account {name or '?'}: expected LOGIN:KEY, both non-empty")
        if name in accounts or name == first:
            raise UsageError(f"--account {name}: the login is given twice")
        accounts[name] = secret
    return accounts


@cli.command()
@click.option("--port", default=8089, show_default=True, help="Port on 127.0.0.1 (0 = any).")
@click.option("--cdrs", default=10_000, show_default=True, help="CDRs per account.")
@click.option("--seed", default=1, show_default=True, help="Seed of the generated data.")
@click.option("--days", default=30, show_default=True, help="Days of history, ending today.")
@click.option("--login", default="demo", show_default=True, help="Buyer login it accepts.")
@click.option("--key", default="demo-key", show_default=True, help="API key it accepts.")
@click.option(
    "--account",
    "more_accounts",
    multiple=True,
    metavar="LOGIN:KEY",
    help="Another buyer login and its key, with calls of its own (repeatable).",
)
@click.option("--max-page-size", type=int, default=None, help="Cap rows per page silently.")
@click.option(
    "--order", type=click.Choice(["asc", "desc", "shuffled", "ties", "unstable"]), default="asc"
)
@click.option(
    "--latency",
    type=float,
    default=0.0,
    help="Seconds each request takes to answer, the simulator's own work included.",
)
@click.option(
    "--fault-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    help="Share of requests that fail (0 to 1).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--live",
    is_flag=True,
    help="Calls keep coming after the history, at the same rate; each is served once it ends.",
)
def simulate(
    port: int,
    cdrs: int,
    seed: int,
    days: int,
    login: str,
    key: str,
    more_accounts: tuple[str, ...],
    max_page_size: int | None,
    order: str,
    latency: float,
    fault_rate: float,
    host: str,
    live: bool,
) -> None:
    """Run the TCXC-compatible API simulator on 127.0.0.1 until interrupted."""
    from etl.simulator import Simulator

    accounts = {login: key, **_accounts(more_accounts, login)}
    config = _simulator_config(
        accounts=accounts,
        cdrs=cdrs,
        seed=seed,
        days=days,
        port=port,
        max_page_size=max_page_size,
        order=order,
        latency=latency,
        host=host,
        live=live,
    )
    sim = Simulator(config)
    try:
        url = sim.url  # binds the port
    except OSError as exc:
        raise UsageError(
            f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})"
        ) from None
    if fault_rate:
        sim.set_fault_rate(fault_rate, ["429", "500", "503", "truncated", "html"], seed=seed)
    logins = ", ".join(repr(name) for name in accounts)
    click.echo(f"TCXC simulator listening on {url} (logins {logins}); Ctrl-C stops it")
    if live:
        click.echo(f"  live: {cdrs:,} calls every {days} days, each served once it has ended")
    click.echo(f"  TCXC_API_URL={url} TCXC_API_LOGIN={login} TCXC_API_KEY=<the --key value>")
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
            api_key=Secret("demo-key"),
            api_timezone=ZoneInfo("UTC"),
        )
        click.echo(f"simulator: {sim.url}, {cdrs:,} CDRs over {days} days")
        with database(settings, schema=False) as engine:
            db.migrate(engine)
            click.echo(f"database: {mask_url(db.libpq_url(engine.url.render_as_string(False)))}")
            run_backfill(
                engine, make_job(settings, Account("demo", Secret("demo-key"))), start, end
            )
            click.echo("")
            click.echo(build_report(engine))
            if not settings.has_database_url:
                click.echo("")
                click.echo("Unless `tcxc-etl db start` keeps it up, the embedded database stops")
                click.echo("when this command ends (then `tcxc-etl db url` for a BI tool).")


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
@click.option("--force", is_flag=True, help="Stop it even while tcxc-etl processes use it.")
@click.pass_obj
def db_stop(app: AppContext, force: bool) -> None:
    """Stop the embedded PostgreSQL (once no tcxc-etl process uses it)."""
    server = _embedded(app)
    server.mark_persistent(False)
    if force:
        server.stop()
        users = []
    else:
        users = server.stop_unless_used()
    if not users:
        click.echo("embedded PostgreSQL stopped")
        return
    pids = ", ".join(map(str, users))
    click.echo(
        f"embedded PostgreSQL in use by {len(users)} tcxc-etl "
        f"{'process' if len(users) == 1 else 'processes'} (pid {pids}): it stops when the last "
        "of them exits (`tcxc-etl db stop --force` stops it now, failing their work)"
    )


@db_group.command(name="url")
@click.pass_obj
def db_url(app: AppContext) -> None:
    """Print the connection URL (for psql and BI tools)."""
    if app.settings.has_database_url:
        click.echo(mask_url(db.libpq_url(app.settings.database_url.reveal())))
        return
    server = _embedded(app)
    click.echo(server.url)  # alone on stdout, so "$(tcxc-etl db url)" works in scripts
    if not server.is_running():
        click.echo("(the embedded PostgreSQL is stopped: run `tcxc-etl db start`)", err=True)
