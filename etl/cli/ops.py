"""Commands for operators: verify a range against the API, grant read-only access."""

from __future__ import annotations

from datetime import date
from typing import Any

import click
import orjson
import psycopg

from etl.cli.base import (
    AppContext,
    cli,
    database,
    make_job,
    parse_range,
    prefix_option,
    stop_on_signal,
)
from etl.errors import EtlError
from etl.grants import grant_readonly
from etl.verify import EXAMPLES, KINDS, DayCounts, Example, VerifyReport, verify_range

COUNTED = ("api", "warehouse", *KINDS)
_ROW = "{:<10} {:>9} {:>9} {:>8} {:>8} {:>9}"


@cli.command()
@click.option("--from", "date_from", required=True, help="Start, 'YYYY-MM-DD[ HH:MM:SS]'.")
@click.option("--to", "date_to", required=True, help="End (an instant; a date means midnight).")
@click.option("--account", default=None, help="Account login (when several are configured).")
@prefix_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def verify(
    app: AppContext,
    date_from: str,
    date_to: str,
    account: str | None,
    prefix: str | None,
    as_json: bool,
) -> None:
    """Re-read a range from the API and compare it with the warehouse (writes nothing).

    Exit 1 when any CDR is missing, extra, different or unloadable.
    """
    settings = app.settings
    start, end = parse_range(date_from, date_to, settings)
    job = make_job(settings, settings.account(account), prefix, app.stop)
    with stop_on_signal(app), database(settings) as engine:
        report = verify_range(engine, job, start, end)
    if as_json:
        click.echo(orjson.dumps(report_json(report), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_report(report))
    if not report.clean:
        raise EtlError(
            f"verify found differences for account {report.api_login} from "
            f"{report.start.isoformat()} to {report.end.isoformat()}: {report.summary()}; "
            + what_to_do(report)
        )


def what_to_do(report: VerifyReport) -> str:
    """The repair a report calls for: missing and different rows are loaded again by a
    repair backfill, but for conflicts (another call_id or account under a stored i_cdr,
    never applied by a sync); extra rows (the API no longer returns them) are never deleted
    by one."""
    steps = []
    if report.total("missing") or report.total("different"):
        steps.append("re-run `tcxc-etl backfill --repair` over the days listed, then verify again")
    if any({"call_id", "api_login"} & set(e.columns) for e in report.examples["different"]):
        steps.append(
            "an i_cdr whose call_id or account differs is a conflict: kept aside in"
            " cdr_conflict and never applied by a sync, review it there"
        )
    if report.total("extra"):
        steps.append(
            "extra rows are no longer returned by the API and no sync deletes them: check them"
            " and delete them by hand if they should go"
        )
    if report.unloadable_count:
        steps.append("unloadable records are listed with their reasons (report them to TCXC)")
    if report.unloadable_stored:
        shown = ", ".join(map(str, report.unloadable_stored[:EXAMPLES]))
        steps.append(
            f"{len(report.unloadable_stored)} of them are held in cdr with the values of an"
            f" earlier sync (i_cdr {shown}), which no sync replaces or removes: check them and"
            " delete them by hand if they should go"
        )
    if report.stale_rollup_rows:
        steps.append(
            "the reporting rollups (what BI tools read) differ from the CDRs: run"
            " `tcxc-etl rebuild-rollup`"
        )
    return "; ".join(steps)


@cli.command("grant-readonly")
@click.argument("role")
@click.pass_obj
def grant_readonly_command(app: AppContext, role: str) -> None:
    """Give an existing database ROLE read access to cdr and the reporting views only.

    Views run with their owner's rights, so ROLE needs no grant on the rollup tables they read.
    """
    with database(app.settings) as engine:
        granted = grant_readonly(engine, role)
    for line in granted.lines():
        click.echo(line)


def _iso(day: date | None) -> str | None:
    return None if day is None else day.isoformat()


def _counts(day: DayCounts) -> dict[str, int]:
    return {kind: int(getattr(day, kind)) for kind in COUNTED}


def _example_json(kind: str, example: Example) -> dict[str, Any]:
    data: dict[str, Any] = {"i_cdr": example.i_cdr, "day": _iso(example.day)}
    if kind == "different":
        data["columns"] = list(example.columns)
    elif kind == "extra":
        data["outside_by"] = list(example.columns)
    return data


def report_json(report: VerifyReport) -> dict[str, Any]:
    """The report as JSON-ready data (what ``verify --json`` prints)."""
    return {
        "account": report.api_login,
        "prefix": report.prefix,
        "from": report.start.isoformat(),
        "to": report.end.isoformat(),
        "time_field": report.time_field.name,
        "time_field_also_fits": list(report.time_field.also),
        "time_field_note": report.time_field.note,
        "windows": report.tally.windows,
        "pages": report.tally.pages,
        "rows_fetched": report.tally.rows_fetched,
        "clean": report.clean,
        "days": [{"day": _iso(d.day), **_counts(d)} for d in report.days],
        "totals": {kind: report.total(kind) for kind in COUNTED},
        "examples": {
            kind: [_example_json(kind, e) for e in examples]
            for kind, examples in report.examples.items()
        },
        "extra_outside_by_other_fields": report.boundary_extra,
        "stale_rollup_rows": report.stale_rollup_rows,
        "unloadable": {
            "count": report.unloadable_count,
            "examples": [{"i_cdr": u.i_cdr, "reason": u.reason} for u in report.unloadable],
            "held_in_cdr": list(report.unloadable_stored),
        },
    }


def format_report(report: VerifyReport) -> str:
    """The report as text: a line per day, totals, then examples of each kind."""
    tally = report.tally
    lines = [
        f"verify: account {report.api_login}, prefix {report.prefix or '(all)'}, "
        f"{report.start.isoformat()} .. {report.end.isoformat()}",
        f"time field: {report.time_field.name} ({report.time_field.note})",
        f"windows {tally.windows}, pages {tally.pages}, rows fetched {tally.rows_fetched}",
        "",
        _ROW.format("day", *COUNTED),
    ]
    lines += [_ROW.format(_iso(d.day) or "(no time)", *_counts(d).values()) for d in report.days]
    lines.append(_ROW.format("total", *(report.total(kind) for kind in COUNTED)))
    lines.append("")
    lines += _example_lines(report)
    lines.append(f"result: {'clean' if report.clean else report.summary()}")
    return "\n".join(lines)


def _example_text(example: Example, kind: str) -> str:
    detail = ""
    if example.columns:
        label = "outside the period by " if kind == "extra" else ""
        detail = f"; {label}{' '.join(example.columns)}"
    return f"{example.i_cdr} ({_iso(example.day) or 'no time'}{detail})"


def _example_lines(report: VerifyReport) -> list[str]:
    lines = []
    for kind in KINDS:
        total, examples = report.total(kind), report.examples[kind]
        if total:
            more = f" (first {len(examples)})" if total > len(examples) else ""
            shown = ", ".join(_example_text(e, kind) for e in examples)
            lines.append(f"{kind} {total}{more}: {shown}")
    if report.boundary_extra:
        lines.append(
            f"note: {report.boundary_extra} extra row(s) lie outside the period by "
            f"{' or '.join(report.time_field.also)}: they are extra only if the API filters "
            f"on {report.time_field.name}"
        )
    if report.unloadable_count:
        count = report.unloadable_count
        more = f" (first {len(report.unloadable)})" if count > len(report.unloadable) else ""
        shown = "; ".join(f"{u.i_cdr or '?'}: {u.reason}" for u in report.unloadable)
        lines.append(f"unloadable {count}{more}: {shown}")
    if report.stale_rollup_rows:
        lines.append(
            f"rollup: {report.stale_rollup_rows} row(s) of cdr_hourly, cdr_daily and "
            "cdr_daily_cause differ from a fresh aggregation of the period's CDRs"
        )
    return lines


@cli.command(name="rebuild-rollup")
@click.pass_obj
def rebuild_rollup(app: AppContext) -> None:
    """Recompute the reporting rollups from `cdr` (after a time-zone change or an upgrade)."""
    from etl import reporting
    from etl.db import database_errors

    with (
        database(app.settings) as engine,
        database_errors("rollup rebuild"),
        engine.begin() as sa_conn,
    ):
        conn = sa_conn.connection.driver_connection
        assert isinstance(conn, psycopg.Connection)
        reporting.rebuild_rollup(conn)
    click.echo("reporting rollups rebuilt")
