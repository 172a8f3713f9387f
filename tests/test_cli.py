"""The command line, run as a real process."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from etl.cli import cli
from etl.client import ApiClient
from etl.errors import ApiError, AuthError
from etl.simulator import Simulator, SimulatorConfig
from tests.conftest import ROOT, backfill_args, free_port, run_cli, sim_env, start_cli

CLI_ENV = {"TCXC_PAGE_SIZE": "500"}  # this file's settings on top of sim_env's


def _count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM cdr").fetchone()
    assert row is not None
    return int(row[0])


def test_backfill_prints_a_summary(sim: Simulator, database_url: str) -> None:
    """`backfill` exits 0 and prints windows, pages and row counts."""
    env = sim_env(sim, database_url, CLI_ENV)
    result = run_cli("backfill", "--from", "2026-09-21", "--to", "2026-10-01", env=env)
    assert result.returncode == 0, result.stderr
    expected = len({r["i_cdr"] for r in sim.records("buyer1")})
    assert f"inserted {expected}, updated 0" in result.stdout
    assert "windows 10" in result.stdout
    assert _count(database_url) == expected


def test_wrong_key_exits_1_with_one_line_and_no_cdr(sim: Simulator, database_url: str) -> None:
    """A wrong key: exit 1, one stderr line naming the auth problem, no CDR, no secret."""
    env = sim_env(sim, database_url, CLI_ENV, key="not-the-key-XYZ")
    result = run_cli("backfill", "--from", "2026-09-21", "--to", "2026-09-23", env=env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("tcxc-etl: error")]
    assert len(errors) == 1 and "signature" in errors[0] and "TCXC_API_KEY" in errors[0]
    assert "account buyer1" in errors[0] and "window" in errors[0]
    assert "Traceback" not in result.stderr
    assert "not-the-key-XYZ" not in result.stderr + result.stdout
    assert not re.search(r"\b[0-9a-f]{64}\b", result.stderr + result.stdout)
    assert _count(database_url) == 0


def test_bad_configuration_exits_2_naming_every_setting() -> None:
    """Two bad settings: exit 2 and one line naming both."""
    result = run_cli(
        "migrate", env={"TCXC_PAGE_SIZE": "lots", "DATABASE_URL": "mysql://x:secretpw@h/d"}
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "TCXC_PAGE_SIZE" in lines[0] and "DATABASE_URL" in lines[0]
    assert "secretpw" not in result.stderr


def test_simulator_options_it_cannot_serve_exit_2() -> None:
    """`simulate` with more CDRs than its days can hold: exit 2, one line naming --cdrs' value
    and its limit, no traceback, before any port is opened."""
    result = run_cli("simulate", "--cdrs", "5000000", "--days", "1", "--port", "0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cdrs must be at most 20 a second: 1728000 here" in lines[0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("simulate", "--fault-rate", "1.5", "--port", "0"), "--fault-rate"),
        (("simulate", "--host", "999.1.1.1", "--port", "0"), "--host 999.1.1.1"),
        (("backfill", "--from", "2026-09-21", "--to", "2026-09-22", "--prefix", "abc"), "digits"),
        (("verify", "--from", "2026-09-21", "--to", "2026-09-22", "--prefix", "4%"), "digits"),
    ],
)
def test_option_values_it_cannot_use_exit_2_naming_the_option(
    args: tuple[str, ...], says: str
) -> None:
    """Values that were an internal error (a fault rate past 1), blamed the wrong option (a
    host it cannot listen on), or silently loaded nothing (a prefix that is not digits)."""
    result = run_cli(*args, env={"TCXC_API_LOGIN": "a", "TCXC_API_KEY": "k"})
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "internal error" not in result.stderr


def test_live_simulator_serves_todays_ended_calls() -> None:
    """`simulate --live` (the compose simulator) serves today's calls that have ended by now,
    none still going."""
    port = free_port()
    proc = start_cli("simulate", "--live", "--port", str(port), "--cdrs", "20000", "--days", "1")
    try:
        client = ApiClient(f"http://127.0.0.1:{port}/buyers/callhistory", "demo", "demo-key")
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        window = {"date_from": f"{today:%Y-%m-%d} 00:00:00", "pager": "100000", "off": "0"}
        window["date_to"] = f"{today + timedelta(days=1):%Y-%m-%d} 00:00:00"
        deadline = time.monotonic() + 60
        while True:
            try:
                records = client.fetch_page(window).records
                break
            except ApiError:  # not listening yet
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
                time.sleep(0.2)
        stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}"
        assert all(r["disconnect_time"] <= stamp for r in records)
        assert len(records) >= 20000 * (datetime.now(UTC) - today) / timedelta(days=1) - 500
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_missing_credentials_exit_2(database_url: str) -> None:
    """A backfill without login and key stops before any work, naming both settings."""
    result = run_cli(
        "backfill", "--from", "2026-01-01", "--to", "2026-01-02", env={"DATABASE_URL": database_url}
    )
    assert result.returncode == 2
    assert "TCXC_API_LOGIN" in result.stderr and "TCXC_API_KEY" in result.stderr


@pytest.mark.parametrize(
    ("args", "given", "missing"),
    [
        (("sync",), "TCXC_API_LOGIN", "TCXC_API_KEY"),
        (
            ("backfill", "--from", "2026-09-21", "--to", "2026-09-22"),
            "TCXC_API_KEY",
            "TCXC_API_LOGIN",
        ),
        (
            ("verify", "--from", "2026-09-21", "--to", "2026-09-22"),
            "TCXC_API_LOGIN",
            "TCXC_API_KEY",
        ),
    ],
)
def test_half_the_credentials_exit_2_before_any_request(
    sim: Simulator, database_url: str, args: tuple[str, ...], given: str, missing: str
) -> None:
    """A login without a key (or a key without a login) is a configuration error naming the
    missing setting: no request reaches the API and no run is recorded."""
    env = sim_env(sim, database_url)
    env[missing] = ""
    result = run_cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert missing in result.stderr and "key-one" not in result.stderr
    assert sim.requests_served == 0
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM etl_run").fetchone() == (0,)


def test_status_needs_no_api_key(database_url: str) -> None:
    """status reads the database only: a login is enough (no key), and with no login at all
    it names TCXC_API_LOGIN alone."""
    only_login = run_cli("status", env={"DATABASE_URL": database_url, "TCXC_API_LOGIN": "a"})
    assert "TCXC_API_KEY" not in only_login.stderr and "a" in only_login.stdout
    nothing = run_cli("status", env={"DATABASE_URL": database_url})
    assert nothing.returncode == 2
    assert "TCXC_API_LOGIN" in nothing.stderr and "TCXC_API_KEY" not in nothing.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("report",),
        ("backfill", "--from", "2026-09-21", "--to", "2026-09-23"),
        ("sync",),
    ],
)
def test_unreachable_database_is_one_line_naming_database_url(args: tuple[str, ...]) -> None:
    """A database that refuses connections: exit 1 and one readable line naming DATABASE_URL
    (never an 'internal error'), without the password."""
    url = f"postgresql://tcxc:pw-S3CRET@127.0.0.1:{free_port()}/warehouse"
    env = {"DATABASE_URL": url, "TCXC_API_LOGIN": "buyer1", "TCXC_API_KEY": "key-one"}
    result = run_cli(*args, env=env)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("tcxc-etl: error")]
    assert len(errors) == 1 and "DATABASE_URL" in errors[0], result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert "pw-S3CRET" not in result.stderr + result.stdout


def test_dry_run_without_a_database_still_prints_the_plan() -> None:
    """The plan (planned windows, and that they will be joined) even when the ledger cannot
    be read."""
    url = f"postgresql://tcxc@127.0.0.1:{free_port()}/warehouse"
    env = {
        "DATABASE_URL": url,
        "TCXC_API_LOGIN": "buyer1",
        "TCXC_API_KEY": "key-one",
        "TCXC_WINDOW_ROWS": "50000",
    }
    result = run_cli("backfill", "--from", "2026-09-21", "--to", "2026-09-23", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert "cannot read the ledger" in result.stderr and "DATABASE_URL" in result.stderr
    assert result.stdout.count("todo") == 2
    assert "joined up to 50,000 rows" in result.stdout


def test_bad_dates_exit_2() -> None:
    """An unparsable --from is a usage error."""
    result = run_cli(
        *backfill_args("last week", "2026-01-02"), env={"TCXC_API_LOGIN": "a", "TCXC_API_KEY": "b"}
    )
    assert result.returncode == 2 and "--from" in result.stderr


def test_migrate_on_an_empty_database(empty_database_url: str) -> None:
    """`migrate` creates the schema and says what it did; run again, it says there was
    nothing to do."""
    from etl.db import SCHEMA_REVISION

    result = run_cli("migrate", env={"DATABASE_URL": empty_database_url})
    assert result.returncode == 0, result.stderr
    assert (
        f"migrated the database schema from an empty database to revision {SCHEMA_REVISION}"
        in result.stdout
    )
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() is not None
    again = run_cli("migrate", env={"DATABASE_URL": empty_database_url})
    assert f"already at revision {SCHEMA_REVISION}" in again.stdout, again.stdout


@pytest.mark.parametrize("args", [("status",), ("sync",), ("report",)])
def test_a_database_without_the_schema_says_to_migrate(
    empty_database_url: str, args: tuple[str, ...]
) -> None:
    """An empty (or older) database: one line saying to run `tcxc-etl migrate`, not a
    missing-relation error from wherever the first query happens to be."""
    env = {"DATABASE_URL": empty_database_url, "TCXC_API_LOGIN": "b", "TCXC_API_KEY": "k"}
    result = run_cli(*args, env=env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("tcxc-etl: error")]
    assert len(errors) == 1 and "tcxc-etl migrate" in errors[0], result.stderr
    assert "does not exist" not in result.stderr
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('0004')")
    older = run_cli(*args, env=env)
    assert older.returncode == 1 and "0004" in older.stderr and "tcxc-etl migrate" in older.stderr


def test_every_command_is_documented_in_the_readme() -> None:
    """Each CLI command appears in the README as `tcxc-etl <command>`."""
    readme = (ROOT / "README.md").read_text()
    names = set(cli.commands)
    missing = [name for name in names if f"tcxc-etl {name}" not in readme]
    assert not missing, f"undocumented commands: {missing}"


def test_every_setting_is_documented_in_the_readme() -> None:
    """Each setting name appears in the README's settings table."""
    from etl.config import SETTINGS

    readme = (ROOT / "README.md").read_text()
    assert [name for name in SETTINGS if f"`{name}`" not in readme] == []


@pytest.mark.parametrize("doc", ["README.md", "docs/performance.md", "docs/queries.md"])
def test_documents_name_files_that_exist(doc: str) -> None:
    """Every relative link and every `bench/...`, `etl/...` or `docs/...` path a document
    names exists in the repository (results files are written by the bench, so they are
    only checked to sit under bench/results/)."""
    text = (ROOT / doc).read_text()
    links = re.findall(r"\]\(([^)#:]+)\)", text)
    named = re.findall(r"`((?:bench|etl|docs|migrations|tests)/[\w./-]+)`", text)
    missing = [
        path
        for path in {*links, *named}
        if not path.startswith("bench/results/") and not (ROOT / path).exists()
    ]
    assert missing == [], f"{doc} names missing files: {missing}"


@pytest.mark.parametrize("path", ["docker-compose.yml"])
def test_compose_file_is_valid(path: str) -> None:
    """docker-compose.yml parses and its services run tcxc-etl commands (and options) that
    exist."""
    import yaml

    services = yaml.safe_load((ROOT / path).read_text())["services"]
    assert {"postgres", "migrate", "daemon", "simulator"} <= set(services)
    assert services["simulator"]["profiles"] == ["simulator"]
    from etl.config import SETTINGS

    for name, service in services.items():
        command = service.get("command")
        if isinstance(command, list) and command[0] == "tcxc-etl":
            assert command[1] in cli.commands, f"{name} runs unknown command {command[1]}"
            options = {flag for p in cli.commands[command[1]].params for flag in p.opts}
            unknown = [word for word in command[2:] if word.startswith("--")]
            assert set(unknown) <= options, f"{name} passes unknown options {unknown}"
        environment = service.get("environment", {})
        if command and command[0] == "tcxc-etl":
            assert set(environment) <= set(SETTINGS), f"{name} sets unknown settings"
        if "TCXC_METRICS_PORT" in environment:
            # Inside a container 127.0.0.1 is the container's own: bind every address there
            # and publish the port on the host's loopback only.
            port = environment["TCXC_METRICS_PORT"]
            assert environment.get("TCXC_METRICS_HOST") == "0.0.0.0", name
            assert any(p.endswith(f":{port}") for p in service.get("ports", [])), name


def test_module_runs_with_help(tmp_path: Path) -> None:
    """`python -m etl --help` lists the commands."""
    result = run_cli("--help")
    assert result.returncode == 0 and "backfill" in result.stdout


def test_rebuild_rollup_command(sim: Simulator, database_url: str) -> None:
    """`rebuild-rollup` recomputes the rollup from cdr (a wiped rollup comes back)."""
    env = sim_env(sim, database_url, CLI_ENV)
    assert (
        run_cli("backfill", "--from", "2026-09-21", "--to", "2026-09-23", env=env).returncode == 0
    )
    with psycopg.connect(database_url) as conn:
        before = conn.execute("SELECT sum(attempts) FROM cdr_daily").fetchone()
        conn.execute("DELETE FROM cdr_daily")
    result = run_cli("rebuild-rollup", env={"DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT sum(attempts) FROM cdr_daily").fetchone() == before


def test_demo_runs_end_to_end(database_url: str) -> None:
    """`tcxc-etl demo` (the quick start's command) syncs its simulator into the database."""
    result = run_cli("demo", "--cdrs", "300", "--days", "2", env={"DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE raw = '{}') FROM cdr"
        ).fetchone()
    assert row is not None and row[0] > 0 and row[1] > 0


@pytest.mark.parametrize(
    "form",
    [
        "postgresql://{host}/{db}?user={user}&password=Sup3rPassw0rd",
        "postgresql://:Sup3rPassw0rd@{host}/{db}?user={user}",
        "postgresql://{user}:Sup3rPassw0rd@{host}/{db}",
        "postgresql://{host}/{db}?user={user}&pass%77ord=Sup3rPassw0rd",
    ],
)
def test_db_url_and_demo_never_print_the_password(database_url: str, form: str) -> None:
    """`db url` and `demo` print the configured database's URL with its password masked in
    every form libpq accepts (in the query string, after an empty user name, ...)."""
    from sqlalchemy.engine import make_url

    parts = make_url(database_url)
    host = f"{parts.host}:{parts.port}"
    url = form.format(host=host, db=parts.database, user=parts.username)
    shown = run_cli("db", "url", env={"DATABASE_URL": url})
    assert shown.returncode == 0, shown.stderr
    assert "Sup3rPassw0rd" not in shown.stdout + shown.stderr and "***" in shown.stdout
    demo = run_cli("demo", "--cdrs", "50", "--days", "1", env={"DATABASE_URL": url})
    assert demo.returncode == 0, demo.stderr
    assert "Sup3rPassw0rd" not in demo.stdout + demo.stderr
    assert any(line.startswith("database: ") for line in demo.stdout.splitlines())


def test_simulator_serves_several_accounts() -> None:
    """`simulate --account LOGIN:KEY` adds a login with calls of its own; each login's key signs
    only its own requests. A malformed --account stops with one line that echoes no key."""
    port = free_port()
    proc = start_cli(
        "simulate", "--port", str(port), "--cdrs", "500", "--days", "2", "--account", "b2:key-b2"
    )
    url = f"http://127.0.0.1:{port}/buyers/callhistory"
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    window = {"date_from": f"{today - timedelta(days=2):%Y-%m-%d} 00:00:00", "off": "0"}
    window.update(date_to=f"{today:%Y-%m-%d} 00:00:00", pager="1000")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                first = ApiClient(url, "demo", "demo-key").fetch_page(window).records
                break
            except ApiError:  # not listening yet
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
                time.sleep(0.2)
        second = ApiClient(url, "b2", "key-b2").fetch_page(window).records
        assert len(first) == len(second) == 500
        assert not {r["i_cdr"] for r in first} & {r["i_cdr"] for r in second}
        with pytest.raises(AuthError):
            ApiClient(url, "b2", "demo-key").fetch_page(window)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    bad = run_cli("simulate", "--port", "0", "--account", "just-a-secret-key")
    assert bad.returncode == 2 and "--account" in bad.stderr, bad.stderr
    assert "just-a-secret-key" not in bad.stderr + bad.stdout


def test_report_on_an_empty_warehouse_and_a_bad_limit(database_url: str) -> None:
    """report on a warehouse with no CDRs says so (no 'from None to None'); a --limit below 1
    is a usage error (exit 2) naming the option, not a database error."""
    env = {"DATABASE_URL": database_url}
    empty = run_cli("report", env=env)
    assert empty.returncode == 0, empty.stderr
    assert "None" not in empty.stdout and "no CDRs loaded yet" in empty.stdout
    negative = run_cli("report", "--limit", "-3", env=env)
    assert negative.returncode == 2 and "--limit" in negative.stderr
    assert "database" not in negative.stderr


@pytest.mark.parametrize("command", ["daemon", "simulate"])
def test_a_port_in_use_is_one_line_naming_the_setting(
    sim: Simulator, database_url: str, command: str
) -> None:
    """The daemon's metrics port (or the simulator's --port) taken by another program:
    exit 2 and one line naming the setting, not an internal error."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        if command == "daemon":
            env, args, named = (
                sim_env(sim, database_url, CLI_ENV, TCXC_METRICS_PORT=port),
                (),
                "TCXC_METRICS_PORT",
            )
        else:
            env, args, named = {}, ("--port", port, "--cdrs", "10"), "--port"
        result = run_cli(command, *args, env=env)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and named in errors[0], result.stderr
    assert "internal error" not in result.stderr


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("--from", "2026-09-21", "--to", "9999-12-31 23:59:59"), "--to"),
        (("--from", "0001-01-01", "--to", "2026-09-22"), "--from"),
    ],
)
def test_dates_out_of_range_are_usage_errors(
    sim: Simulator, database_url: str, args: tuple[str, ...], option: str
) -> None:
    """--from/--to outside the years a CDR may hold (1900-2200) are usage errors naming the
    option, before any request (a year 1 went out unpadded; 9999 overflowed)."""
    result = run_cli("backfill", *args, "--dry-run", env=sim_env(sim, database_url, CLI_ENV))
    assert result.returncode == 2, result.stderr
    assert option in result.stderr and "internal error" not in result.stderr


def test_the_summary_adds_up_when_the_api_repeats_records(
    sim_config: SimulatorConfig, database_url: str
) -> None:
    """An API that sends some records twice: the backfill's summary names the repeats, so
    inserted + updated + unchanged + rejected + conflicts + repeated = rows fetched."""
    with Simulator(replace(sim_config, duplicate_every=7)) as sim:
        result = run_cli(
            *backfill_args("2026-09-21", "2026-09-24"), env=sim_env(sim, database_url, CLI_ENV)
        )
    assert result.returncode == 0, result.stderr
    numbers = dict(
        re.findall(
            r"(rows fetched|inserted|updated|unchanged|rejected|conflicts|repeated) (\d+)",
            result.stdout,
        )
    )
    assert int(numbers.get("repeated", 0)) > 0, result.stdout
    parts = ("inserted", "updated", "unchanged", "rejected", "conflicts", "repeated")
    assert sum(int(numbers[p]) for p in parts) == int(numbers["rows fetched"]), result.stdout
