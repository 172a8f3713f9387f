"""One benchmark variant, run in its own process so its CPU time and peak RSS are its own.

``python bench/variants.py VARIANT 'JSON ARGS'`` syncs the simulator's range into the given
database and prints one JSON line: wall and CPU seconds, peak RSS, what it did. Variants:

- ``sol``: the speed of light: fetch pages, parse JSON, COPY the values as received into a
  plain typed table (no indexes, no normalisation, no upsert), one COPY per window;
- ``copy-cdr``: the same into ``cdr`` itself (its indexes, the payload as JSONB);
- ``naive``: normalise each record to typed values, then a per-page SQLAlchemy executemany of
  ``INSERT ... ON CONFLICT (i_cdr) DO UPDATE`` into ``cdr``;
- ``etl``: tcxc-etl itself (``etl.pipeline.backfill``), first sync or re-sync alike;
- ``etl-halves``: an experiment, not something tcxc-etl does by itself: two ``etl`` first
  syncs at once, each in its own process over half of the range with one fetch slot: what
  the load reaches when two interpreters share it (docs/performance.md, "Two interpreters");
- ``etl-accounts``: tcxc-etl's multi-account path: one incremental pass
  (``etl.passes.run_all``) over every account of the simulator (``accounts`` in the args, see
  ``common.simulator_accounts``), all at once, ``workers`` (default 1) fetch slots each.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import psycopg
from common import simulator_accounts

from etl import db, memory, passes, payload, pipeline
from etl.client import ApiClient, Page
from etl.config import Secret, Settings
from etl.fields import API_KEYS, FIELD_KINDS, FIELDS
from etl.normalize import ROW_COLUMNS, Normalizer
from etl.retry import RetryPolicy
from etl.windows import API_TIME_FORMAT, Window, plan_windows

SOL_TYPES = {"text": "text", "bigint": "bigint", "count": "integer", "decimal": "numeric"}


def _range(args: dict[str, Any]) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(args["start"]), datetime.fromisoformat(args["end"])


def _windows(args: dict[str, Any]) -> list[Window]:
    return list(plan_windows(*_range(args), timedelta(seconds=args["window_seconds"])))


def _client(args: dict[str, Any]) -> ApiClient:
    return ApiClient(args["sim_url"], args["login"], args["key"])


def _pages(client: ApiClient, window: Window, page_size: int) -> Any:
    """Every page of a window, advancing ``off`` by the rows received. The baselines ask for
    the window's own bounds (tcxc-etl asks a second past the end, see ``Window.api_params``),
    so that windows share only their boundary second."""
    offset = 0
    bounds = (window.start.astimezone(UTC), window.end.astimezone(UTC))
    base = {
        name: moment.strftime(API_TIME_FORMAT)
        for name, moment in zip(("date_from", "date_to"), bounds, strict=True)
    }
    while True:
        page: Page = client.fetch_page({**base, "pager": str(page_size), "off": str(offset)})
        if not page.records:
            return
        yield page
        offset += len(page.records)


def speed_of_light(args: dict[str, Any]) -> int:
    """Fetch, parse, COPY as received into a plain typed table."""
    client = _client(args)
    columns = ", ".join(
        f"{name} {SOL_TYPES.get(kind, 'timestamptz')}" for name, kind in FIELD_KINDS.items()
    )
    rows = 0
    with psycopg.connect(args["db_url"]) as conn:
        conn.execute(f"CREATE TABLE sol_cdr ({columns})")
        conn.commit()
        copy_sql = f"COPY sol_cdr ({', '.join(FIELDS)}) FROM STDIN"
        for window in _windows(args):
            with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
                for page in _pages(client, window, args["page_size"]):
                    for record in page.records:
                        copy.write_row([record.get(key) for key in API_KEYS])
                    rows += len(page.records)
    return rows


def copy_into_cdr(args: dict[str, Any]) -> int:
    """The speed of light into the real table: COPY as received into ``cdr`` itself (its
    indexes, the raw payload as JSONB), no normalisation, no upsert: what the schema costs."""
    client = _client(args)
    mode = args.get("raw_payload", payload.COMPACT)
    rows = 0
    copy_sql = f"COPY cdr ({', '.join(FIELDS)}, api_login, raw) FROM STDIN"
    with psycopg.connect(args["db_url"]) as conn:
        for number, window in enumerate(_windows(args)):
            # Windows share their boundary second: skip what the previous window loaded.
            shared = window.start.astimezone(UTC).strftime(API_TIME_FORMAT) if number else None
            with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
                for page in _pages(client, window, args["page_size"]):
                    for record in page.records:
                        if record.get("setup_time") == shared:
                            continue
                        raw = orjson.dumps(_stored_payload(record, mode)).decode()
                        copy.write_row([*(record.get(key) for key in API_KEYS), args["login"], raw])
                    rows += len(page.records)
    return rows


def _stored_payload(record: dict[str, Any], mode: str) -> Any:
    """What ``cdr.raw`` keeps of ``record`` in ``mode`` (see etl/payload.py)."""
    if mode == payload.FULL:
        return record
    if mode == payload.COMPACT:  # what compact keeps of the usual record: next to nothing
        return {}
    return {key: value for key, value in record.items() if key not in API_KEYS}


def naive_upsert(args: dict[str, Any]) -> int:
    """Typed rows, per-page SQLAlchemy executemany of INSERT ... ON CONFLICT DO UPDATE."""
    from sqlalchemy.dialects.postgresql import insert

    from etl.schema import cdr

    client = _client(args)
    mode = args.get("raw_payload", payload.COMPACT)
    normalizer = Normalizer(args["login"], ZoneInfo("UTC"), mode)
    statement = insert(cdr)
    statement = statement.on_conflict_do_update(
        index_elements=[cdr.c.i_cdr],
        set_={name: statement.excluded[name] for name in ROW_COLUMNS if name != "i_cdr"},
    )
    engine = db.make_engine(args["db_url"])
    rows = 0
    for window in _windows(args):
        with engine.begin() as conn:
            for page in _pages(client, window, args["page_size"]):
                batch = {}  # one statement cannot touch a row twice: the last wins
                for record in page.records:
                    row = dict(zip(ROW_COLUMNS, normalizer.normalize(record), strict=True))
                    batch[row["i_cdr"]] = row
                conn.execute(statement, list(batch.values()))
                rows += len(page.records)
    engine.dispose()
    return rows


INFO: dict[str, Any] = {}  # what a variant wants reported besides its timings


def _job(args: dict[str, Any], **settings: Any) -> pipeline.Job:
    """tcxc-etl's job for the account of ``args``, with no retries; ``settings`` adds to or
    overrides the settings the args give."""
    fields: dict[str, Any] = {
        "api_url": args["sim_url"],
        "api_login": args["login"],
        "api_key": Secret(args["key"]),
        "database_url": Secret(args["db_url"]),
        "page_size": args["page_size"],
        "window": timedelta(seconds=args["window_seconds"]),
        "raw_payload": args.get("raw_payload", payload.COMPACT),
    }
    if "window_rows" in args:
        fields["window_rows"] = args["window_rows"]
    return pipeline.Job(
        client=_client(args),
        settings=Settings(**{**fields, **settings}),
        retry=RetryPolicy(attempts=1),
    )


def tcxc_etl(args: dict[str, Any]) -> int:
    """tcxc-etl's own backfill of the range (with the CLI's malloc settings)."""
    INFO["malloc_tuned"] = memory.limit_heap_growth()
    INFO["load_path"] = "etl.window_sync.load_window"
    workers = {"workers": args["workers"]} if args.get("workers") else {}  # else its default
    job = _job(args, **workers)
    INFO["workers"] = job.settings.workers
    engine = db.make_engine(args["db_url"])
    # resume=False: a re-sync must really sync again, not skip the windows already done.
    summary = pipeline.backfill(engine, job, *_range(args), resume=False)
    engine.dispose()
    if not summary.ok:
        raise SystemExit(f"backfill failed: {summary.failures}")
    return summary.counts.rows_fetched


def tcxc_etl_halves(args: dict[str, Any]) -> int:
    """Two ``etl`` first syncs at once in two processes, over the two halves of the range
    (split on the window grid), one fetch slot each; their CPU and peak RSS are reported as
    the children's."""
    start, end = _range(args)
    step = timedelta(seconds=args["window_seconds"])
    middle = start + step * (len(_windows(args)) // 2)
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "etl", json.dumps({**args, **part, "workers": 1})],
            stdout=subprocess.PIPE,
            text=True,
        )
        for part in (
            {"start": start.isoformat(), "end": middle.isoformat()},
            {"start": middle.isoformat(), "end": end.isoformat()},
        )
    ]
    results = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
    if any(child.returncode for child in children):
        raise SystemExit("a half failed")
    INFO["load_path"] = "two processes of etl.window_sync.load_window"
    INFO["peak_rss_mb_each"] = [result["peak_rss_mb"] for result in results]
    return sum(int(result["rows_fetched"]) for result in results)


def etl_accounts(args: dict[str, Any]) -> int:
    """tcxc-etl's multi-account path: one incremental pass over every account of the simulator,
    all of them at once (TCXC_PARALLEL_ACCOUNTS = their number), from TCXC_START_DATE = the
    range's start; with no settle lag and "now" at the range's end, its windows are exactly
    the backfill's (``etl``)."""
    INFO["malloc_tuned"] = memory.limit_heap_growth()
    INFO["load_path"] = "etl.passes.run_all"
    start, end = _range(args)
    logins = simulator_accounts(args["login"], args["key"], args["accounts"])
    jobs = [
        _job(
            {**args, "login": login, "key": key},
            workers=args.get("workers") or 1,
            parallel_accounts=len(logins),
            start_date=start,
            settle_lag=timedelta(0),
        )
        for login, key in logins.items()
    ]
    INFO["accounts"], INFO["workers"] = len(jobs), jobs[0].settings.workers
    engine = db.make_engine(args["db_url"])
    results = passes.run_all(engine, jobs, passes.INCREMENTAL, now=end)
    engine.dispose()
    summaries = [result.summary for result in results if result.ok and result.summary]
    if len(summaries) != len(jobs):
        raise SystemExit(f"incremental pass failed: {results}")
    return sum(summary.counts.rows_fetched for summary in summaries)


VARIANTS: dict[str, Callable[[dict[str, Any]], int]] = {
    "sol": speed_of_light,
    "copy-cdr": copy_into_cdr,
    "naive": naive_upsert,
    "etl": tcxc_etl,
    "etl-halves": tcxc_etl_halves,
    "etl-accounts": etl_accounts,
}


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """The peak RSS of this process (or of the largest of its waited-for children)."""
    return resource.getrusage(who).ru_maxrss / 1024


def _cpu_seconds() -> float:
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    variant, args = sys.argv[1], json.loads(sys.argv[2])
    rss_at_start = _peak_rss_mb()
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    fetched = VARIANTS[variant](args)
    wall = time.perf_counter() - started
    result = {
        "wall_seconds": wall,
        "cpu_seconds": _cpu_seconds() - cpu_before,  # its child processes' included
        "rows_fetched": fetched,
        "peak_rss_mb": max(_peak_rss_mb(), _peak_rss_mb(resource.RUSAGE_CHILDREN)),
        "rss_after_imports_mb": rss_at_start,
        **INFO,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
